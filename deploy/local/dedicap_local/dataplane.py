"""The local data plane: what the kubelet's containers would be, for a ModelDeployment's pods.

kwok makes pods Running without running anything. This process watches the pods labelled
`dedicap.dev/modeldeployment` (all namespaces) and, for each one that is Running on a node and not
terminating, runs a real `tritonserver` on free loopback ports serving the pod's model (the
simulated GPU replica of models/simulated_replica.py). Once the model is ready it

- publishes the metrics port to Prometheus (file-based discovery) with the labels `namespace`,
  `pod`, `modeldeployment`, `pool`, `node`, as a ServiceMonitor would on a cluster;
- lists the replica in `run_dir/dataplane/endpoints/<namespace>.<modeldeployment>.json`, the
  local stand-in for the Service's endpoints that the load generator reads.

A pod that is deleted, terminating or no longer Running loses its endpoint at once and its
process and target after its Triton container's preStop pause (`lifecycle.preStop.sleep`), as a
kubelet runs it while the endpoints controller takes the pod out of its Service: requests that
clients still send in the meantime are served.
The loop also reconciles periodically, and a restarted data plane adopts the processes it left
running (their state is kept under `run_dir/dataplane/instances`), so it converges after a crash.

The simulated replica's behaviour (see triton.ModelSpec) comes, in increasing precedence, from
the built-in defaults, `run_dir/dataplane/sim.json` ({"default": {...}, "pools": {pool: {...}},
"modeldeployments": {"<ns>/<name>": {...}}}; re-read on every pass, so tests can change it) and
the pod's annotations `dedicap.dev/sim-<field>` (e.g. `dedicap.dev/sim-base-ms: "40"`).
Service time and failure ratio change in place; batch size and queue policy restart the process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import queue
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from dedicap_local import podstatus, prometheus, triton

LOG = logging.getLogger("dedicap.dataplane")

MD_LABEL = "dedicap.dev/modeldeployment"
POOL_LABEL = "dedicap.dev/pool"
SIM_ANNOTATION_PREFIX = "dedicap.dev/sim-"
TARGET_PREFIX = "pod."

# ModelSpec fields that a running model picks up through its control file; the others are in
# config.pbtxt and need a new process.
LIVE_FIELDS = ("base_ms", "per_item_ms", "fail_ratio", "jitter", *triton.LLM_FIELDS)
# The container ports the operator renders (http, grpc, metrics), used on the pod's address.
POD_PORTS = (8000, 8001, 8002)
# A pod of a ModelDeployment whose metrics profile is an LLM backend's (the operator annotates
# its pods) runs the streaming LLM replica instead of the request-level one.
PROFILE_ANNOTATION = "dedicap.dev/metrics-profile"
LLM_PROFILES = ("vllm", "tensorrtllm")
_NAME_OK = re.compile(r"[^A-Za-z0-9_.-]")


# --- what should run (pure) -----------------------------------------------------------------


@dataclass(frozen=True)
class Desired:
    """One tritonserver the data plane should run, for one pod."""

    key: str  # instance name: pod.<namespace>.<pod>
    uid: str
    namespace: str
    pod: str
    modeldeployment: str
    pool: str
    node: str
    spec: triton.ModelSpec
    ip: str = ""  # the pod's address (status.podIP); empty: none assigned
    drain_s: float = 0.0  # the preStop pause: how long it serves once out of the endpoints

    def labels(self) -> dict[str, str]:
        labels = {"namespace": self.namespace, "pod": self.pod,
                  "modeldeployment": self.modeldeployment, "node": self.node}
        if self.pool:
            labels["pool"] = self.pool
        return labels


def instance_key(namespace: str, pod: str) -> str:
    return f"{TARGET_PREFIX}{namespace}.{pod}"


def pod_is_serving(pod: Mapping[str, Any]) -> bool:
    """Running, bound to a node and not being deleted: the kubelet would have started it."""
    meta = pod.get("metadata") or {}
    return (bool((pod.get("spec") or {}).get("nodeName"))
            and (pod.get("status") or {}).get("phase") == "Running"
            and not meta.get("deletionTimestamp"))


def model_name(pod: Mapping[str, Any]) -> str:
    """The model Triton loads: the Triton container's `--load-model`, else the ModelDeployment."""
    containers = (pod.get("spec") or {}).get("containers") or []
    for container in containers:
        words = [*(container.get("command") or []), *(container.get("args") or [])]
        for i, word in enumerate(words):
            if word.startswith("--load-model="):
                return str(word.split("=", 1)[1])
            if word == "--load-model" and i + 1 < len(words):
                return str(words[i + 1])
    meta = pod.get("metadata") or {}
    return str((meta.get("labels") or {}).get(MD_LABEL, "model"))


def _coerce(spec: triton.ModelSpec, values: Mapping[str, Any]) -> triton.ModelSpec:
    """Apply known fields of `values` (names with '-' or '_') to `spec`; ignore bad values."""
    types = {f.name: f.type for f in fields(spec)}
    changes: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = str(raw_key).replace("-", "_")
        if key not in types or key == "name":
            continue
        try:
            if types[key] in (str, "str"):
                changes[key] = str(value)
                continue
            changes[key] = int(float(value)) if types[key] in (int, "int") else float(value)
        except (TypeError, ValueError):
            LOG.warning("ignoring simulation setting %s=%r", raw_key, value)
    return replace(spec, **changes)


def sim_spec(pod: Mapping[str, Any], pool: str, sim: Mapping[str, Any]) -> triton.ModelSpec:
    """The simulated replica for `pod`: defaults < sim.json (default, pool, md) < annotations."""
    meta = pod.get("metadata") or {}
    namespace = str(meta.get("namespace", ""))
    md = str((meta.get("labels") or {}).get(MD_LABEL, ""))
    spec = triton.ModelSpec(name=model_name(pod))
    if (meta.get("annotations") or {}).get(PROFILE_ANNOTATION) in LLM_PROFILES:
        spec = replace(spec, kind=triton.KIND_LLM)
    layers: list[Mapping[str, Any]] = [
        sim.get("default") or {},
        (sim.get("pools") or {}).get(pool) or {},
        (sim.get("modeldeployments") or {}).get(f"{namespace}/{md}") or {},
        {key[len(SIM_ANNOTATION_PREFIX):]: value
         for key, value in (meta.get("annotations") or {}).items()
         if key.startswith(SIM_ANNOTATION_PREFIX)},
    ]
    for layer in layers:
        if isinstance(layer, Mapping):
            spec = _coerce(spec, layer)
    return spec


def desired_instances(pods: Iterable[Mapping[str, Any]], sim: Mapping[str, Any],
                      node_pools: Mapping[str, str] | None = None) -> dict[str, Desired]:
    """Which tritonservers should run, by instance key, for these pods (as API dicts)."""
    out: dict[str, Desired] = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        if MD_LABEL not in labels or not pod_is_serving(pod):
            continue
        node = str(pod["spec"]["nodeName"])
        pool = str(labels.get(POOL_LABEL) or (node_pools or {}).get(node, ""))
        key = instance_key(str(meta["namespace"]), str(meta["name"]))
        out[key] = Desired(key=key, uid=str(meta.get("uid", "")), namespace=str(meta["namespace"]),
                           pod=str(meta["name"]), modeldeployment=str(labels[MD_LABEL]),
                           pool=pool, node=node, spec=sim_spec(pod, pool, sim),
                           ip=str((pod.get("status") or {}).get("podIP") or ""),
                           drain_s=prestop_sleep(pod))
    return out


def prestop_sleep(pod: Mapping[str, Any]) -> float:
    """Seconds of the Triton container's preStop sleep (0: none). Kept from when the pod served,
    since kwok removes a deleted pod's object at once, where a kubelet would run its preStop."""
    containers = (pod.get("spec") or {}).get("containers") or []
    for container in containers:
        if container.get("name") != "triton" and len(containers) > 1:
            continue
        sleep = (((container.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {})
        try:
            return max(float(sleep.get("seconds", 0)), 0.0)
        except (TypeError, ValueError):
            return 0.0
    return 0.0


def pod_ready(pod: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def readiness_changes(pods: Iterable[Mapping[str, Any]], serving: set[str]
                      ) -> list[tuple[str, str, bool]]:
    """(namespace, pod, ready) for every running replica whose Ready condition disagrees with
    whether its tritonserver serves (`serving`: instance keys): what a kubelet's readiness
    probe on the model would report. The patch itself is built from the pod as it is then
    (`podstatus.readiness`), not from this possibly older copy: its container statuses carry
    the restart count a crash report may just have raised."""
    out = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        if MD_LABEL not in (meta.get("labels") or {}) or not pod_is_serving(pod):
            continue
        ns, name = str(meta["namespace"]), str(meta["name"])
        ready = instance_key(ns, name) in serving
        if ready != pod_ready(pod):
            out.append((ns, name, ready))
    return out


def structural(spec: triton.ModelSpec) -> dict[str, Any]:
    """The parts of a spec that only a new process can change."""
    return {k: v for k, v in asdict(spec).items() if k not in LIVE_FIELDS}


def live(spec: triton.ModelSpec) -> dict[str, float]:
    return {k: float(getattr(spec, k)) for k in LIVE_FIELDS}


# --- files the rest of the stack reads ------------------------------------------------------


def dataplane_dir(run_dir: Path) -> Path:
    return run_dir / "dataplane"


def endpoints_dir(run_dir: Path) -> Path:
    return dataplane_dir(run_dir) / "endpoints"


def endpoints_file(run_dir: Path, namespace: str, modeldeployment: str) -> Path:
    return endpoints_dir(run_dir) / f"{namespace}.{modeldeployment}.json"


def sim_file(run_dir: Path) -> Path:
    return dataplane_dir(run_dir) / "sim.json"


def read_sim(run_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads(sim_file(run_dir).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_sim(run_dir: Path, sim: Mapping[str, Any]) -> None:
    """Set the simulation settings the running data plane applies on its next pass."""
    _atomic_write(sim_file(run_dir), json.dumps(sim, indent=1) + "\n")


def read_endpoints(run_dir: Path, namespace: str, modeldeployment: str) -> list[dict[str, str]]:
    """Ready replicas of a ModelDeployment: [{pod, http, grpc, metrics, pool, node}]."""
    try:
        data = json.loads(endpoints_file(run_dir, namespace, modeldeployment).read_text())
    except (OSError, ValueError):
        return []
    return list(data.get("endpoints", [])) if isinstance(data, dict) else []


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    tmp.write_text(text)
    os.replace(tmp, path)


# --- the running part ----------------------------------------------------------------------


@dataclass
class Instance:
    """A tritonserver the data plane owns (running or being started)."""

    desired: Desired
    handle: triton.TritonHandle | None = None
    ready: bool = False
    drain_until: float | None = None  # out of the endpoints, serving until then (monotonic)


class DataPlane:
    """Reconciles tritonserver processes with pods. `reconcile(pods)` is the whole logic; `run`
    feeds it from the API server."""

    def __init__(self, run_dir: Path, *, workers: int = 3, start_timeout: float = 120.0,
                 notify: Callable[[], None] | None = None,
                 pods: podstatus.Reporter | None = None) -> None:
        self.run_dir = run_dir
        self._notify = notify
        # where readiness, a crash and a restart are reported, as a kubelet would
        self._pods = pods
        self.start_timeout = start_timeout
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._instances: dict[str, Instance] = {}
        self._busy: set[str] = set()
        self._backoff: dict[str, float] = {}
        self._address_clash: set[str] = set()  # warned of once
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="triton")
        self._state_dir = dataplane_dir(run_dir) / "instances"
        self._state_dir.mkdir(parents=True, exist_ok=True)
        endpoints_dir(run_dir).mkdir(parents=True, exist_ok=True)
        self._adopt()

    # -- adoption after a restart --
    def _adopt(self) -> None:
        for path in sorted(self._state_dir.glob("*.json")):
            try:
                data = json.loads(path.read_text())
                desired = Desired(**{**data, "spec": triton.ModelSpec(**data["spec"])})
            except (OSError, ValueError, TypeError, KeyError):
                path.unlink(missing_ok=True)
                continue
            handle = triton.find_triton(self.run_dir, desired.key)
            if handle is None:
                path.unlink(missing_ok=True)
                continue
            LOG.info("adopting running tritonserver %s (pid %s)", desired.key, handle.pid)
            self._instances[desired.key] = Instance(desired, handle, handle.model_ready())
        # Processes with no state, and targets with no process, are leftovers of a crash.
        for handle in triton.list_instances(self.run_dir):
            if handle.name.startswith(TARGET_PREFIX) and handle.name not in self._instances:
                triton.stop_triton(self.run_dir, handle.name)
        for name in prometheus.list_targets(self.run_dir):
            if name.startswith(TARGET_PREFIX) and name not in self._instances:
                prometheus.remove_target(self.run_dir, name)

    def snapshot(self) -> dict[str, Instance]:
        with self._lock:
            return dict(self._instances)

    def reconcile(self, pods: Iterable[Mapping[str, Any]],
                  node_pools: Mapping[str, str] | None = None) -> None:
        """Start, stop, restart or retune processes so that they match `pods`, and say which
        replicas are Ready; non-blocking."""
        pods = list(pods)
        want = desired_instances(pods, read_sim(self.run_dir), node_pools)
        now = time.monotonic()
        with self._lock:
            current = dict(self._instances)
            busy = set(self._busy)
        for key, inst in current.items():
            if key in busy:
                continue
            target = want.get(key)
            if target is None:
                if self._draining(inst, now):
                    continue
                self._submit(key, self._stop, key)
                continue
            crashed = inst.handle is not None and inst.handle.pid is None
            if crashed and self._pods is not None and target.uid == inst.desired.uid:
                self._pods.crashed(target.namespace, target.pod)
            if (crashed or target.uid != inst.desired.uid or target.ip != inst.desired.ip
                    or structural(target.spec) != structural(inst.desired.spec)):
                LOG.info("restarting %s (%s)", key, "exited" if crashed else "pod or spec changed")
                self._submit(key, self._restart, target)
            elif live(target.spec) != live(inst.desired.spec) or target != inst.desired:
                self._retune(inst, target)
        # kwok hands a deleted pod's address to the next pod at once, where a CNI would wait for
        # the old sandbox to go: a new server waits until ours on that address has stopped.
        held = {inst.desired.ip: key for key, inst in current.items() if inst.desired.ip}
        for key, target in want.items():
            if key in current or key in busy or self._backoff.get(key, 0.0) > now:
                continue
            holder = held.get(target.ip, key)
            if holder != key:
                if holder not in want:
                    continue  # that pod is going: its server stops, then ours starts
                if key not in self._address_clash:
                    self._address_clash.add(key)
                    LOG.warning("%s/%s has %s, the address of running %s: not started until "
                                "it is free (kwok, restarted over running pods, reuses "
                                "addresses)", target.namespace, target.pod, target.ip, holder)
                continue
            self._submit(key, self._start, target)
        self._write_endpoints()
        if self._pods is not None:
            serving = {k for k, inst in self.snapshot().items() if inst.ready}
            for namespace, pod, ready in readiness_changes(pods, serving):
                self._pods.set_ready(namespace, pod, ready)  # logged, retried next pass

    def _draining(self, inst: Instance, now: float) -> bool:
        """Whether a replica whose pod went away still serves its preStop pause: out of the
        endpoints from the first pass that sees it go (the pass writes them), stopped by the
        first pass after the pause (passes run at least every tick)."""
        if inst.handle is None or inst.desired.drain_s <= 0.0:
            return False
        with self._lock:
            if inst.drain_until is None:
                inst.drain_until = now + inst.desired.drain_s
                inst.ready = False
                LOG.info("%s/%s: out of the endpoints, serving %.0fs more before it stops",
                         inst.desired.namespace, inst.desired.pod, inst.desired.drain_s)
            return now < inst.drain_until

    def _submit(self, key: str, fn: Any, arg: Any) -> None:
        with self._lock:
            if key in self._busy:
                return
            self._busy.add(key)

        def job() -> None:
            try:
                fn(arg)
            except Exception:
                LOG.exception("data plane operation on %s failed", key)
            finally:
                with self._lock:
                    self._busy.discard(key)
                if self._notify is not None:
                    self._notify()  # a start or stop finished: the endpoints changed

        self._pool.submit(job)

    def _start(self, desired: Desired) -> None:
        with self._lock:
            self._instances[desired.key] = Instance(desired)
        t0 = time.monotonic()
        # On the pod's own address with the container ports, as in a cluster, where that
        # address is routed here; else on free loopback ports.
        on_pod_ip = bool(desired.ip) and triton.can_listen_on(desired.ip)
        if on_pod_ip and not triton.ports_free(desired.ip, POD_PORTS):
            # Still held by a process that is going away (a restart onto another pod's old
            # address): try again shortly rather than start a server that cannot listen.
            with self._lock:
                self._instances.pop(desired.key, None)
                self._backoff[desired.key] = time.monotonic() + 1.0
            LOG.info("%s/%s: %s's ports are still in use; starting it shortly",
                     desired.namespace, desired.pod, desired.ip)
            return
        ports: dict[str, Any] = (
            {"http_port": POD_PORTS[0], "grpc_port": POD_PORTS[1], "metrics_port": POD_PORTS[2],
             "address": desired.ip} if on_pod_ip else {})
        try:
            handle = triton.start_triton(self.run_dir, desired.key, desired.spec,
                                         timeout=self.start_timeout, **ports)
        except Exception as err:
            with self._lock:
                self._instances.pop(desired.key, None)
                self._backoff[desired.key] = time.monotonic() + 5.0
            LOG.error("tritonserver for %s/%s did not start: %s", desired.namespace, desired.pod,
                      err)
            return
        triton.set_behaviour(handle, **live(desired.spec))
        self._save_state(desired)
        prometheus.write_target(self.run_dir, desired.key, handle.metrics_address,
                                desired.labels())
        with self._lock:
            self._instances[desired.key] = Instance(desired, handle, True)
            self._backoff.pop(desired.key, None)
        if self._pods is not None:
            self._pods.started(desired.namespace, desired.pod)
        LOG.info("tritonserver for %s/%s ready in %.1fs (http %s, metrics %s)",
                 desired.namespace, desired.pod, time.monotonic() - t0, handle.http_address,
                 handle.metrics_address)

    def _stop(self, key: str) -> None:
        with self._lock:
            inst = self._instances.get(key)
            if inst is not None:
                inst.ready = False
        # Out of the endpoints and discovery first, as a terminating pod leaves its Service.
        self._write_endpoints()
        prometheus.remove_target(self.run_dir, key)
        triton.stop_triton(self.run_dir, key)
        (self._state_dir / f"{key}.json").unlink(missing_ok=True)
        with self._lock:
            self._instances.pop(key, None)
        LOG.info("tritonserver %s stopped", key)

    def _restart(self, desired: Desired) -> None:
        self._stop(desired.key)
        self._start(desired)

    def _retune(self, inst: Instance, target: Desired) -> None:
        if inst.handle is not None:
            triton.set_behaviour(inst.handle, **live(target.spec))
            if target.labels() != inst.desired.labels():
                prometheus.write_target(self.run_dir, target.key, inst.handle.metrics_address,
                                        target.labels())
        with self._lock:
            inst.desired = target
        self._save_state(target)

    def _save_state(self, desired: Desired) -> None:
        data = asdict(desired)
        _atomic_write(self._state_dir / f"{desired.key}.json", json.dumps(data, indent=1) + "\n")

    def _write_endpoints(self) -> None:
        # One writer at a time, each reading the state when it holds the lock: a pass that read
        # a replica as ready must not write after the stop that withdrew it (and stopped it).
        with self._write_lock:
            self._write_endpoints_now()

    def _write_endpoints_now(self) -> None:
        by_md: dict[tuple[str, str], list[dict[str, str]]] = {}
        with self._lock:
            instances = list(self._instances.values())
        for inst in instances:
            d = inst.desired
            entries = by_md.setdefault((d.namespace, d.modeldeployment), [])
            if inst.ready and inst.handle is not None:
                entries.append({"pod": d.pod, "http": inst.handle.http_address,
                                "grpc": inst.handle.grpc_address,
                                "metrics": inst.handle.metrics_address, "model": d.spec.name,
                                "pool": d.pool, "node": d.node})
        wanted_files = set()
        for (namespace, md), entries in by_md.items():
            path = endpoints_file(self.run_dir, namespace, md)
            wanted_files.add(path.name)
            doc = {"namespace": namespace, "modeldeployment": md,
                   "endpoints": sorted(entries, key=lambda e: e["pod"])}
            text = json.dumps(doc, indent=1) + "\n"
            with contextlib.suppress(OSError):
                if path.read_text() == text:
                    continue
            _atomic_write(path, text)
        for path in endpoints_dir(self.run_dir).glob("*.json"):
            if path.name not in wanted_files:
                path.unlink(missing_ok=True)

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Block until no start or stop is in flight (tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._busy:
                    return
            time.sleep(0.1)
        raise TimeoutError("data plane still busy")

    def close(self, *, stop_instances: bool = False) -> None:
        """Stop the worker threads; with `stop_instances`, also every process, target, endpoint."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        if stop_instances:
            for key in list(self.snapshot()):
                self._stop(key)
            self._write_endpoints()


def shutdown(run_dir: Path) -> None:
    """Stop every tritonserver the data plane of `run_dir` runs and withdraw its targets."""
    for handle in triton.list_instances(run_dir):
        if handle.name.startswith(TARGET_PREFIX):
            triton.stop_triton(run_dir, handle.name)
    for name in prometheus.list_targets(run_dir):
        if name.startswith(TARGET_PREFIX):
            prometheus.remove_target(run_dir, name)
    state = dataplane_dir(run_dir) / "instances"
    for path in [*state.glob("*.json"), *endpoints_dir(run_dir).glob("*.json")]:
        path.unlink(missing_ok=True)


# --- feeding it from the API server ---------------------------------------------------------


def run(kubeconfig: Path, run_dir: Path, stop_event: threading.Event | None = None, *,
        resync_s: float = 10.0, tick_s: float = 1.0, process_nodes: int = 2) -> None:
    """Watch model pods and reconcile until `stop_event` is set. Processes are left running on
    exit (a restart adopts them); `shutdown(run_dir)` stops them. With `process_nodes`, also
    run that many process nodes (kubelet.py), whose pods stop with the data plane."""
    from urllib.parse import urlsplit

    from kubernetes import client, config, watch  # the official client; imported when run

    from dedicap_local import kubelet
    from dedicap_local.stack import POD_CIDR

    stop_event = stop_event or threading.Event()
    api_client = config.new_client_from_config(config_file=str(kubeconfig))
    if process_nodes:
        server = urlsplit(api_client.configuration.host)
        threading.Thread(target=kubelet.run, name="process-nodes", daemon=True, kwargs={
            "api_client": config.new_client_from_config(config_file=str(kubeconfig)),
            "run_dir": run_dir, "stop_event": stop_event, "api_host": server.hostname,
            "api_port": server.port or 443, "pod_cidr": POD_CIDR,
            "nodes": process_nodes}).start()
    core = client.CoreV1Api(api_client)
    events: queue.Queue[None] = queue.Queue()
    plane = DataPlane(run_dir, notify=lambda: events.put(None), pods=podstatus.Reporter(core))
    lock = threading.Lock()  # guards pods and node_pools between the watch and the loop
    pods: dict[str, dict[str, Any]] = {}
    node_pools: dict[str, str] = {}

    def relist() -> str:
        listed = api_client.sanitize_for_serialization(core.list_pod_for_all_namespaces(
            label_selector=MD_LABEL, _request_timeout=30))
        nodes = api_client.sanitize_for_serialization(core.list_node(_request_timeout=30))
        with lock:
            pods.clear()
            pods.update({p["metadata"]["uid"]: p for p in listed.get("items", [])})
            node_pools.clear()
            node_pools.update({n["metadata"]["name"]: n["metadata"].get("labels", {}).get(
                POOL_LABEL, "") for n in nodes.get("items", [])})
        return str(listed["metadata"].get("resourceVersion", ""))

    def watcher() -> None:
        version = ""
        while not stop_event.is_set():
            try:
                if not version:
                    version = relist()
                    events.put(None)
                stream = watch.Watch().stream(
                    core.list_pod_for_all_namespaces, label_selector=MD_LABEL,
                    resource_version=version, timeout_seconds=int(resync_s),
                    _request_timeout=resync_s + 10)
                for event in stream:
                    obj = api_client.sanitize_for_serialization(event["object"])
                    if event["type"] == "ERROR":
                        version = ""  # e.g. 410 Gone: list again
                        break
                    uid = obj["metadata"]["uid"]
                    with lock:
                        if event["type"] == "DELETED":
                            pods.pop(uid, None)
                        else:
                            pods[uid] = obj
                    version = obj["metadata"].get("resourceVersion", version)
                    events.put(None)
                    if stop_event.is_set():
                        return
                else:
                    version = ""  # the watch timed out: relist, which is the periodic resync
            except Exception as err:
                LOG.warning("pod watch failed (%s); listing again", err)
                version = ""
                stop_event.wait(2.0)

    thread = threading.Thread(target=watcher, name="pod-watch", daemon=True)
    thread.start()
    LOG.info("data plane watching pods labelled %s (run dir %s)", MD_LABEL, run_dir)
    try:
        while not stop_event.is_set():
            # Wake on a pod event, a finished start/stop, or the tick (sim.json, crashed
            # processes); drain bursts so a scale-up of ten pods is one pass.
            with contextlib.suppress(queue.Empty):
                events.get(timeout=tick_s)
            while not events.empty():
                events.get_nowait()
            with lock:
                current, pools = list(pods.values()), dict(node_pools)
            plane.reconcile(current, pools)
    finally:
        plane.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dedicap_local.dataplane",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--prometheus-port", type=int, default=None,
                        help="unused: targets go to the run dir's discovery files")
    parser.add_argument("--resync", type=float, default=10.0, help="full relist period (s)")
    parser.add_argument("--process-nodes", type=int, default=2,
                        help="nodes whose pods run as processes from their images (0: none)")
    parser.add_argument("--stop-on-exit", action="store_true",
                        help="stop every tritonserver when exiting (default: leave for adoption)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop_event = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop_event.set())
    run(args.kubeconfig, args.run_dir, stop_event, resync_s=args.resync,
        process_nodes=args.process_nodes)
    if args.stop_on_exit:
        shutdown(args.run_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
