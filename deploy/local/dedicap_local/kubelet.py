"""Process nodes: a small kubelet that runs pods as real processes, from their image's root
filesystem, on nodes kwok does not manage.

kwok only pretends to run pods. The operator's own pods must really run, from the image
`make image` builds, so that what the chart renders is what runs. This module registers nodes
`process-0`, `process-1` (zones a and b; tainted `dedicap.dev/local-process=true:NoSchedule`, so
only pods that tolerate it land there), keeps their Leases fresh, and does for each pod bound to
them what a kubelet does:

- **start**: the container's image must have been loaded (`dedicap-local load-image`, see
  images.py); command and args as Kubernetes combines them with the image's entrypoint and
  command, `$(VAR)` references expanded; the environment of the image, the API server's
  `KUBERNETES_SERVICE_HOST`/`PORT` (the stack's), and the container's `env` with downward-API
  values (`metadata.name`, `status.podIP`, ...) resolved; the volumes it mounts (emptyDir,
  projected service-account tokens from the TokenRequest API bound to the pod, ConfigMaps,
  downward API), the token directory refreshed before the token expires. The process runs
  under bubblewrap with the image's root filesystem read-only as `/`, its own PID, IPC and UTS
  (hostname: the pod's name) namespaces, and the pod's user in a user namespace with no
  capabilities; it shares the host's network, and the pod's address, taken from the stack's
  pod range which is routed to the loopback device, is its own to listen on. Its output goes
  to `run_dir/pods/<namespace>_<pod>_<uid>/<container>/<restart>.log`.
- **status**: Running with the pod's IP once the process runs; Ready only after its readiness
  probe (HTTP GET or TCP) has passed, as a kubelet reports it; not Ready again after
  `failureThreshold` failures. A liveness probe that fails `failureThreshold` times restarts
  the container; so does a container that exits (restartPolicy Always, after 0 s, 10 s, 20 s...
  up to 5 min), with `restartCount` and `lastState` in the status.
- **stop**: a pod being deleted gets SIGTERM, then SIGKILL after its grace period; once the
  process is gone the pod object is removed (a delete with grace 0, as the kubelet's last step).

Only one container per pod and no init containers, exec probes, subPath mounts or other volume
types: a pod that needs them is reported with a clear reason in its container status.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dedicap_local import images

LOG = logging.getLogger("dedicap.kubelet")

NODE_PREFIX = "process-"
NODE_LABEL = "dedicap.dev/local-process"
TAINT = {"key": NODE_LABEL, "value": "true", "effect": "NoSchedule"}
ZONES = ("zone-a", "zone-b")
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
LEASE_SECONDS = 40
BACKOFF_MAX_S = 300.0
TOKEN_SECONDS = 3607  # what the kubelet asks for; refreshed at 80 % of its life


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- what to run (pure) -----------------------------------------------------------------------


class PodError(Exception):
    """A pod this node cannot run, with the reason a kubelet would report."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: known names are replaced, unknown ones kept as written,
    `$$` is a literal `$`."""
    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))
    return _VAR.sub(sub, text)


def field_value(pod: Mapping[str, Any], path: str) -> str:
    """A downward-API `fieldRef.fieldPath` of `pod`."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"), "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP"), "status.podIP": status.get("podIP"),
        "status.podIPs": ",".join(p.get("ip", "") for p in status.get("podIPs") or []),
        "status.hostIPs": ",".join(p.get("ip", "") for p in status.get("hostIPs") or []),
    }
    if path in simple:
        return str(simple[path] or "")
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        values = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
    raise PodError("CreateContainerConfigError", f"unsupported fieldRef {path!r}")


_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_UNITS = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10,
          "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(text: str) -> float:
    m = _QUANTITY.match(str(text))
    if not m or m.group(2) not in _UNITS:
        raise PodError("CreateContainerConfigError", f"cannot read quantity {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def resource_value(container: Mapping[str, Any], ref: Mapping[str, Any]) -> str:
    kind, _, name = str(ref.get("resource", "")).partition(".")
    value = ((container.get("resources") or {}).get(kind) or {}).get(name)
    if value is None:
        return "0"
    divisor = quantity(str(ref.get("divisor", "1")))
    result = quantity(str(value)) / divisor
    return str(int(-(-result // 1)))  # rounded up, as the kubelet does


@dataclass(frozen=True)
class ContainerPlan:
    """How to run a pod's container: argv, environment, user, mounts."""

    argv: tuple[str, ...]
    env: dict[str, str]
    uid: int
    gid: int
    working_dir: str
    mounts: tuple[tuple[str, str, bool], ...]  # (volume name, mount path, read-only)


def _user_ids(rootfs: Path | None, user: str) -> tuple[int | None, int | None]:
    """The image's `User` ("uid", "uid:gid", or a name in its /etc/passwd)."""
    if not user:
        return None, None
    name, _, group = user.partition(":")
    uid: int | None = int(name) if name.isdigit() else None
    gid: int | None = int(group) if group.isdigit() else None
    if uid is None and rootfs is not None:
        with contextlib.suppress(OSError):
            for line in (rootfs / "etc/passwd").read_text().splitlines():
                fields_ = line.split(":")
                if len(fields_) > 3 and fields_[0] == name:
                    uid = int(fields_[2])
                    gid = gid if gid is not None else int(fields_[3])
    if uid is None:
        raise PodError("CreateContainerConfigError", f"image user {user!r} not found")
    return uid, gid


def plan_container(pod: Mapping[str, Any], image: images.Image, base_env: Mapping[str, str],
                   lookup: Callable[[str, str, str, str], str]) -> ContainerPlan:
    """Combine the pod's container with its image as Kubernetes does. `lookup(kind, namespace,
    name, key)` reads a ConfigMap's or Secret's key (for valueFrom and envFrom)."""
    spec = pod.get("spec") or {}
    containers = spec.get("containers") or []
    if len(containers) != 1 or spec.get("initContainers"):
        raise PodError("CreateContainerConfigError",
                       "the local process node runs one container per pod and no init "
                       "containers")
    c = containers[0]
    namespace = str((pod.get("metadata") or {}).get("namespace", ""))
    env: dict[str, str] = {}
    for item in image.env:
        key, _, value = item.partition("=")
        env[key] = value
    env.update(base_env)
    for source in c.get("envFrom") or []:
        prefix = str(source.get("prefix", ""))
        for kind in ("configMapRef", "secretRef"):
            ref = source.get(kind)
            if ref:
                data = json.loads(lookup(kind, namespace, str(ref["name"]), ""))
                env.update({prefix + k: v for k, v in data.items()})
    for item in c.get("env") or []:
        name = str(item["name"])
        if "value" in item:
            env[name] = expand(str(item["value"]), env)
            continue
        source = item.get("valueFrom") or {}
        if "fieldRef" in source:
            env[name] = field_value(pod, str(source["fieldRef"]["fieldPath"]))
        elif "resourceFieldRef" in source:
            env[name] = resource_value(c, source["resourceFieldRef"])
        elif "configMapKeyRef" in source or "secretKeyRef" in source:
            kind = "configMapKeyRef" if "configMapKeyRef" in source else "secretKeyRef"
            ref = source[kind]
            env[name] = lookup(kind, namespace, str(ref["name"]), str(ref["key"]))
        else:
            env[name] = ""
    command = list(c.get("command") or [])
    args = list(c.get("args") or [])
    if command:
        argv = command + args
    else:
        argv = list(image.entrypoint) + (args if "args" in c else list(image.cmd))
    if not argv:
        raise PodError("CreateContainerConfigError", "neither the pod nor the image says what "
                       "to run")
    argv = [expand(a, env) for a in argv]
    pod_sc = spec.get("securityContext") or {}
    c_sc = c.get("securityContext") or {}
    image_uid, image_gid = _user_ids(image.rootfs, image.user)
    uid = c_sc.get("runAsUser", pod_sc.get("runAsUser", image_uid))
    gid = c_sc.get("runAsGroup", pod_sc.get("runAsGroup", image_gid))
    uid = int(uid) if uid is not None else 0
    gid = int(gid) if gid is not None else uid
    if c_sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) and uid == 0:
        raise PodError("CreateContainerConfigError",
                       "container has runAsNonRoot and image will run as root")
    mounts = []
    for m in c.get("volumeMounts") or []:
        if m.get("subPath") or m.get("subPathExpr"):
            raise PodError("CreateContainerConfigError", "subPath mounts are not supported by "
                           "the local process node")
        mounts.append((str(m["name"]), str(m["mountPath"]), bool(m.get("readOnly"))))
    return ContainerPlan(argv=tuple(argv), env=env, uid=uid, gid=gid,
                         working_dir=str(c.get("workingDir") or image.working_dir or "/"),
                         mounts=tuple(mounts))


def bwrap_argv(rootfs: Path, plan: ContainerPlan, volumes: Mapping[str, tuple[Path, bool]],
               hostname: str) -> list[str]:
    """The bubblewrap command line of a container (pure). `volumes`: name -> (host directory,
    read-only)."""
    argv = ["bwrap", "--ro-bind", str(rootfs), "/", "--proc", "/proc", "--dev", "/dev",
            "--unshare-user", "--uid", str(plan.uid), "--gid", str(plan.gid),
            "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--hostname", hostname[:63],
            "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    for name, path, read_only in plan.mounts:
        if name not in volumes:
            raise PodError("CreateContainerConfigError", f"volume {name!r} is not defined")
        source, volume_ro = volumes[name]
        argv += ["--ro-bind" if read_only or volume_ro else "--bind", str(source), path]
    argv += ["--clearenv"]
    for key, value in sorted(plan.env.items()):
        argv += ["--setenv", key, value]
    argv += ["--chdir", plan.working_dir, "--", *plan.argv]
    return argv


def inside(rootfs: Path, path: str) -> Path:
    """`path` of the container as a host path under `rootfs`, following the image's symlinks
    within the image (an absolute link points into the image, never at the host)."""
    current = rootfs
    parts = [p for p in path.split("/") if p and p != "."]
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            current = current.parent if current != rootfs else rootfs
            continue
        candidate = current / part
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise PodError("CreateContainerConfigError", f"too many links in {path}")
            link = os.readlink(candidate)
            parts = [p for p in link.split("/") if p and p != "."] + parts
            if link.startswith("/"):
                current = rootfs
            continue
        current = candidate
    return current


def make_mount_points(rootfs: Path, plan: ContainerPlan) -> None:
    """A runtime creates missing mount points in the container's own layer; the image here is
    read-only to the container, so the (empty) directories are made in the unpacked copy."""
    for _, path, _ in plan.mounts:
        inside(rootfs, path).mkdir(parents=True, exist_ok=True)


def _descendants(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    out = []
    for child in children:
        out += [int(child), *_descendants(int(child))]
    return out


def container_processes(sandbox_pid: int) -> list[int]:
    """The processes a sandbox runs, without bubblewrap's own (outside and as the namespace's
    init)."""
    out = []
    for pid in _descendants(sandbox_pid):
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if not argv0.endswith(b"bwrap"):
            out.append(pid)
    return out


def probe_target(pod: Mapping[str, Any], probe: Mapping[str, Any]) -> tuple[str, str, int, str]:
    """(kind, host, port, path) of a probe: kind "http" or "tcp"; named ports resolved."""
    c = (pod.get("spec") or {}).get("containers", [{}])[0]
    host = str((pod.get("status") or {}).get("podIP") or "")
    kind = "http" if "httpGet" in probe else "tcp" if "tcpSocket" in probe else ""
    if not kind:
        raise PodError("CreateContainerConfigError",
                       "only httpGet and tcpSocket probes are supported by the local process "
                       "node")
    action = probe["httpGet" if kind == "http" else "tcpSocket"]
    port = action.get("port")
    if isinstance(port, str) and not port.isdigit():
        named = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
        if port not in named:
            raise PodError("CreateContainerConfigError", f"probe port {port!r} not declared")
        port = named[port]
    return kind, str(action.get("host") or host), int(port), str(action.get("path") or "/")


def check_probe(kind: str, host: str, port: int, path: str, timeout: float) -> bool:
    try:
        if kind == "tcp":
            with socket.create_connection((host, port), timeout=timeout):
                return True
        url_host = f"[{host}]" if ":" in host else host
        with urllib.request.urlopen(f"http://{url_host}:{port}{path}", timeout=timeout) as r:
            return 200 <= r.status < 400
    except (OSError, ValueError):
        return False


# --- addresses --------------------------------------------------------------------------------


def node_range(pod_cidr: str, index: int) -> ipaddress.IPv4Network:
    """Process node `index`'s pod addresses: a /24 at the top of the stack's pod range, far
    from the addresses kwok hands out from its bottom."""
    net = ipaddress.IPv4Network(pod_cidr)
    top = list(net.subnets(new_prefix=24))
    return top[-(index + 2)]  # leave the very last /24 alone


def free_address(network: ipaddress.IPv4Network, used: Iterable[str]) -> str:
    taken = set(used)
    for host in list(network.hosts())[1:]:  # .1 is the node's own address
        if str(host) not in taken:
            return str(host)
    raise PodError("FailedCreatePodSandBox", f"no free address in {network}")


def routed_locally(pod_cidr: str) -> bool:
    """Whether the pod range is routed to the loopback device (the stack does this at `up`):
    only then is a pod address this machine's own."""
    out = subprocess.run(["ip", "route", "show", "table", "local", pod_cidr],
                         capture_output=True, text=True, check=False)
    return out.returncode == 0 and pod_cidr.split("/")[0] in out.stdout


# --- the running part -------------------------------------------------------------------------


@dataclass
class Cluster:
    """What the kubelet needs from the API server (the official client's CoreV1Api and
    CoordinationV1Api), and how a pod reaches the API server."""

    core: Any
    coordination: Any
    api_host: str
    api_port: int

    def lookup(self, kind: str, namespace: str, name: str, key: str) -> str:
        if kind.startswith("configMap"):
            data = self.core.read_namespaced_config_map(name, namespace).data or {}
        else:
            raw = self.core.read_namespaced_secret(name, namespace).data or {}
            data = {k: base64.b64decode(v).decode() for k, v in raw.items()}
        if not key:
            return json.dumps(data)
        if key not in data:
            raise PodError("CreateContainerConfigError", f"{kind} {name} has no key {key!r}")
        return str(data[key])


@dataclass
class Container:
    process: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    restarts: int = 0
    ready: bool = False
    last_state: dict[str, Any] = field(default_factory=dict)
    next_start: float = 0.0
    backoff_s: float = 0.0
    token_refresh: float = 0.0


class PodWorker(threading.Thread):
    """Runs one pod until it is deleted; then removes the pod object."""

    def __init__(self, node: ProcessNode, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.node = node
        self.pod = pod
        self.uid = str(meta["uid"])
        self.c = Container()
        self.deleting = threading.Event()
        self.gone = threading.Event()
        self.dir = node.run_dir / "pods" / f"{meta['namespace']}_{meta['name']}_{self.uid}"
        self._probe_state: dict[str, tuple[int, int, float]] = {}  # kind -> ok, fail, next
        self.update(pod)

    @property
    def pod_name(self) -> str:
        return str(self.pod["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.pod["metadata"]["namespace"])

    def update(self, pod: dict[str, Any]) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp"):
            self.deleting.set()

    # -- status --
    def _patch_status(self, status: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):
            self.node.cluster.core.patch_namespaced_pod_status(
                self.pod_name, self.namespace, {"status": status},
                _content_type="application/strategic-merge-patch+json")

    def _container_status(self, waiting: tuple[str, str] | None = None) -> dict[str, Any]:
        c = self.pod["spec"]["containers"][0]
        status: dict[str, Any] = {"name": c["name"], "image": c.get("image", ""),
                                  "imageID": self.node.image_id(c.get("image", "")),
                                  "ready": self.c.ready, "restartCount": self.c.restarts,
                                  "started": self.c.process is not None,
                                  "lastState": self.c.last_state}
        if waiting:
            status["state"] = {"waiting": {"reason": waiting[0], "message": waiting[1][:500]}}
        elif self.c.process is not None:
            status["containerID"] = f"process://{self.c.process.pid}"
            status["state"] = {"running": {"startedAt": self.c.started_at}}
        else:
            status["state"] = {"waiting": {"reason": "ContainerCreating"}}
        return status

    def report(self, waiting: tuple[str, str] | None = None) -> None:
        ready = "True" if self.c.ready else "False"
        stamp = now_iso()
        conditions = [{"type": "PodReadyToStartContainers", "status": "True"},
                      {"type": "Initialized", "status": "True"},
                      {"type": "ContainersReady", "status": ready},
                      {"type": "Ready", "status": ready}]
        previous = {x["type"]: x for x in (self.pod.get("status") or {}).get("conditions") or []}
        for cond in conditions:
            old = previous.get(cond["type"])
            cond["lastTransitionTime"] = (old.get("lastTransitionTime") if old and
                                          old.get("status") == cond["status"] else stamp)
        status = self.pod.get("status") or {}
        self._patch_status({"phase": "Running", "conditions": conditions,
                            "hostIP": self.node.address, "hostIPs": [{"ip": self.node.address}],
                            "podIP": status.get("podIP"), "podIPs": status.get("podIPs"),
                            "startTime": status.get("startTime") or stamp,
                            "containerStatuses": [self._container_status(waiting)]})

    # -- lifecycle --
    def run(self) -> None:
        try:
            self._run()
        except Exception:
            LOG.exception("pod %s/%s: worker failed", self.namespace, self.pod_name)
        finally:
            self._stop_process()
            self._delete_pod_object()
            self.gone.set()

    def _run(self) -> None:
        try:
            address = self.node.assign_address(self)
        except PodError as err:
            self.report((err.reason, str(err)))
            self.deleting.wait()
            return
        self._patch_status({"podIP": address, "podIPs": [{"ip": address}],
                            "hostIP": self.node.address, "phase": "Running",
                            "startTime": now_iso()})
        self.pod.setdefault("status", {}).update({"podIP": address,
                                                  "podIPs": [{"ip": address}],
                                                  "hostIP": self.node.address})
        while not self.deleting.is_set():
            if self.c.process is None and time.monotonic() >= self.c.next_start:
                try:
                    self._start()
                except PodError as err:
                    LOG.warning("pod %s/%s: %s: %s", self.namespace, self.pod_name, err.reason, err)
                    self.report((err.reason, str(err)))
                    self._back_off()
            elif self.c.process is not None:
                code = self.c.process.poll()
                if code is not None:
                    self._exited(code)
                else:
                    self._probe()
                    self._refresh_token()
            self.deleting.wait(0.2)

    def _back_off(self) -> None:
        self.c.backoff_s = min(max(self.c.backoff_s * 2, 10.0), BACKOFF_MAX_S)
        self.c.next_start = time.monotonic() + self.c.backoff_s

    def _exited(self, code: int) -> None:
        LOG.info("pod %s/%s: container exited with %s", self.namespace, self.pod_name, code)
        self.c.last_state = {"terminated": {"exitCode": code, "startedAt": self.c.started_at,
                                            "finishedAt": now_iso(),
                                            "reason": "Completed" if code == 0 else "Error"}}
        self.c.process = None
        self.c.ready = False
        self.c.restarts += 1
        self._probe_state.clear()
        # As the kubelet: the first restart at once, then 10 s doubling up to 5 min.
        self.c.next_start = time.monotonic() + self.c.backoff_s
        self.c.backoff_s = min(max(self.c.backoff_s * 2, 10.0), BACKOFF_MAX_S)
        self.report(("CrashLoopBackOff", f"back-off {self.c.backoff_s:.0f}s restarting"))

    def _volumes(self) -> dict[str, tuple[Path, bool]]:
        out: dict[str, tuple[Path, bool]] = {}
        for volume in self.pod["spec"].get("volumes") or []:
            name = str(volume["name"])
            target = self.dir / "volumes" / name
            target.mkdir(parents=True, exist_ok=True)
            if "emptyDir" in volume:
                target.chmod(0o777)
                out[name] = (target, False)
            elif "projected" in volume or "configMap" in volume or "downwardAPI" in volume:
                self.node.write_projected(self, volume, target)
                out[name] = (target, True)
            else:
                kinds = sorted(k for k in volume if k != "name")
                raise PodError("CreateContainerConfigError",
                               f"volume {name!r}: {kinds} not supported by the local process "
                               "node")
        return out

    def _start(self) -> None:
        c = self.pod["spec"]["containers"][0]
        image = images.resolve(self.node.run_dir, str(c.get("image", "")))
        if image is None:
            raise PodError("ErrImageNeverPull", f"image {c.get('image')!r} is not loaded on "
                           "this stack (dedicap-local load-image ARCHIVE)")
        plan = plan_container(self.pod, image, self.node.service_env(), self.node.cluster.lookup)
        volumes = self._volumes()
        make_mount_points(image.rootfs, plan)
        argv = bwrap_argv(image.rootfs, plan, volumes, self.pod_name)
        log_dir = self.dir / c["name"]
        log_dir.mkdir(parents=True, exist_ok=True)
        with (log_dir / f"{self.c.restarts}.log").open("ab") as log:
            self.c.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL)
        self.c.started_at = now_iso()
        self.c.ready = False
        self.c.token_refresh = time.monotonic() + TOKEN_SECONDS * 0.8
        started = time.monotonic()
        self._probe_state = {kind: (0, 0, started + float(
            (c.get(f"{kind}Probe") or {}).get("initialDelaySeconds", 0)))
            for kind in ("readiness", "liveness") if c.get(f"{kind}Probe")}
        if "readiness" not in self._probe_state:
            self.c.ready = True  # no readiness probe: ready once running, as a kubelet says
        LOG.info("pod %s/%s: started pid %s from %s: %s", self.namespace, self.pod_name,
                 self.c.process.pid, image.reference, " ".join(plan.argv))
        self.report()

    def _probe(self) -> None:
        c = self.pod["spec"]["containers"][0]
        now = time.monotonic()
        for kind, (ok, fail, due) in list(self._probe_state.items()):
            if now < due:
                continue
            probe = c[f"{kind}Probe"]
            target = probe_target(self.pod, probe)
            passed = check_probe(*target, timeout=float(probe.get("timeoutSeconds", 1)))
            ok, fail = (ok + 1, 0) if passed else (0, fail + 1)
            self._probe_state[kind] = (ok, fail, now + float(probe.get("periodSeconds", 10)))
            if kind == "readiness":
                ready = (ok >= int(probe.get("successThreshold", 1)) or
                         (self.c.ready and fail < int(probe.get("failureThreshold", 3))))
                if ready != self.c.ready:
                    self.c.ready = ready
                    LOG.info("pod %s/%s: %s", self.namespace, self.pod_name,
                             "ready" if ready else "not ready")
                    self.report()
            elif fail >= int(probe.get("failureThreshold", 3)):
                LOG.warning("pod %s/%s: liveness probe failed %d times: restarting",
                            self.namespace, self.pod_name, fail)
                self._terminate(float(self.pod["spec"].get("terminationGracePeriodSeconds",
                                                           30)))
                return

    def _refresh_token(self) -> None:
        if time.monotonic() < self.c.token_refresh:
            return
        self.c.token_refresh = time.monotonic() + TOKEN_SECONDS * 0.8
        with contextlib.suppress(PodError):
            self._volumes()

    def _terminate(self, grace: float) -> None:
        process = self.c.process
        if process is None or process.poll() is not None:
            return
        # bubblewrap forwards no signal: the container's own processes get the SIGTERM. When
        # bubblewrap is killed, its sandbox dies with it (SIGKILL).
        for pid in container_processes(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        try:
            process.wait(timeout=max(grace, 0.0))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(timeout=10)

    def _stop_process(self) -> None:
        grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
        if grace is None:
            grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        self._terminate(float(grace))
        self.c.process = None

    def _delete_pod_object(self) -> None:
        if not self.node.stopping.is_set():
            with contextlib.suppress(Exception):
                self.node.cluster.core.delete_namespaced_pod(
                    self.pod_name, self.namespace, grace_period_seconds=0,
                    body={"preconditions": {"uid": self.uid}, "gracePeriodSeconds": 0})
        self.node.release_address(self)


class ProcessNode:
    """One node whose pods run as processes; `sync(pods)` is the whole scheduling logic."""

    def __init__(self, cluster: Cluster, run_dir: Path, index: int, pod_cidr: str) -> None:
        self.cluster = cluster
        self.run_dir = run_dir
        self.index = index
        self.name = f"{NODE_PREFIX}{index}"
        self.range = node_range(pod_cidr, index)
        self.address = str(next(iter(self.range.hosts())))
        self.stopping = threading.Event()
        self.workers: dict[str, PodWorker] = {}
        self._addresses: dict[str, str] = {}
        self._lock = threading.Lock()

    # -- the node object --
    def node_object(self) -> dict[str, Any]:
        zone = ZONES[self.index % len(ZONES)]
        capacity = {"cpu": "8", "memory": "16Gi", "pods": "20"}
        return {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.name, "labels": {
                    "kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64", NODE_LABEL: "true",
                    "topology.kubernetes.io/zone": zone}},
                "spec": {"taints": [dict(TAINT)]},
                "status": {"capacity": capacity, "allocatable": dict(capacity),
                           "addresses": [{"type": "InternalIP", "address": self.address},
                                         {"type": "Hostname", "address": self.name}],
                           "conditions": self._conditions(),
                           "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux",
                                        "kubeletVersion": "dedicap-local",
                                        "containerRuntimeVersion": "process://bwrap",
                                        "kernelVersion": "", "osImage": "", "bootID": "",
                                        "machineID": "", "systemUUID": "",
                                        "kubeProxyVersion": ""}}}

    def _conditions(self) -> list[dict[str, str]]:
        stamp = now_iso()
        out = [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "dedicap-local process node", "lastHeartbeatTime": stamp,
                "lastTransitionTime": stamp}]
        for kind in ("MemoryPressure", "DiskPressure", "PIDPressure"):
            out.append({"type": kind, "status": "False", "reason": f"KubeletHasNo{kind}",
                        "message": "", "lastHeartbeatTime": stamp, "lastTransitionTime": stamp})
        return out

    def register(self) -> None:
        core = self.cluster.core
        try:
            core.read_node(self.name)
        except Exception:
            core.create_node(self.node_object())
            LOG.info("registered process node %s (%s)", self.name, self.range)
        self.heartbeat(status=True)

    def heartbeat(self, *, status: bool = False) -> None:
        """Renew the node's Lease (the node lifecycle controller's sign of life); with `status`,
        also post the Ready condition."""
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": self.name, "namespace": "kube-node-lease"},
                 "spec": {"holderIdentity": self.name, "leaseDurationSeconds": LEASE_SECONDS,
                          "renewTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}}
        try:
            self.cluster.coordination.patch_namespaced_lease(
                self.name, "kube-node-lease", lease,
                _content_type="application/merge-patch+json")
        except Exception:
            with contextlib.suppress(Exception):
                self.cluster.coordination.create_namespaced_lease("kube-node-lease", lease)
        if status:
            with contextlib.suppress(Exception):
                self.cluster.core.patch_node_status(
                    self.name, {"status": {"conditions": self._conditions()}},
                    _content_type="application/strategic-merge-patch+json")

    # -- pods --
    def sync(self, pods: Iterable[dict[str, Any]]) -> None:
        seen = set()
        for pod in pods:
            uid = str(pod["metadata"]["uid"])
            seen.add(uid)
            worker = self.workers.get(uid)
            if worker is None:
                if pod["metadata"].get("deletionTimestamp"):
                    # Being deleted and no process of this data plane's: nothing to stop.
                    self._delete_unstarted(pod)
                    continue
                worker = PodWorker(self, pod)
                self.workers[uid] = worker
                worker.start()
            else:
                worker.update(pod)
        for uid, worker in list(self.workers.items()):
            if uid not in seen:
                worker.deleting.set()  # gone from the API (force-deleted): stop it
            if worker.gone.is_set():
                self.workers.pop(uid, None)

    def _delete_unstarted(self, pod: Mapping[str, Any]) -> None:
        with contextlib.suppress(Exception):
            self.cluster.core.delete_namespaced_pod(
                pod["metadata"]["name"], pod["metadata"]["namespace"], grace_period_seconds=0,
                body={"preconditions": {"uid": pod["metadata"]["uid"]},
                      "gracePeriodSeconds": 0})

    def assign_address(self, worker: PodWorker) -> str:
        with self._lock:
            current = (worker.pod.get("status") or {}).get("podIP")
            if current and ipaddress.ip_address(current) in self.range and (
                    current not in self._addresses.values()):
                address = str(current)
            else:
                address = free_address(self.range, self._addresses.values())
            self._addresses[worker.uid] = address
            return address

    def release_address(self, worker: PodWorker) -> None:
        with self._lock:
            self._addresses.pop(worker.uid, None)

    def service_env(self) -> dict[str, str]:
        host, port = self.cluster.api_host, str(self.cluster.api_port)
        return {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port,
                "KUBERNETES_SERVICE_PORT_HTTPS": port,
                "KUBERNETES_PORT": f"tcp://{host}:{port}",
                "KUBERNETES_PORT_443_TCP": f"tcp://{host}:{port}",
                "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
                "KUBERNETES_PORT_443_TCP_PORT": port, "KUBERNETES_PORT_443_TCP_ADDR": host}

    def image_id(self, reference: str) -> str:
        image = images.resolve(self.run_dir, reference)
        return image.digest if image else ""

    def write_projected(self, worker: PodWorker, volume: Mapping[str, Any], target: Path
                        ) -> None:
        """Files of a projected, configMap or downwardAPI volume, replaced atomically (a new
        token appears in place while the process runs)."""
        files: dict[str, str] = {}
        pod = worker.pod
        meta = pod["metadata"]
        sources: Sequence[Mapping[str, Any]] = (
            volume["projected"].get("sources") or [] if "projected" in volume else [volume])
        for source in sources:
            if "serviceAccountToken" in source:
                spec = source["serviceAccountToken"]
                request: dict[str, Any] = {"spec": {
                    "expirationSeconds": int(spec.get("expirationSeconds", TOKEN_SECONDS)),
                    "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                                       "name": meta["name"], "uid": meta["uid"]}}}
                if spec.get("audience"):
                    request["spec"]["audiences"] = [spec["audience"]]
                answer = self.cluster.core.create_namespaced_service_account_token(
                    pod["spec"].get("serviceAccountName", "default"), meta["namespace"],
                    request)
                files[str(spec.get("path", "token"))] = answer.status.token
            elif "configMap" in source:
                ref = source["configMap"]
                data = json.loads(self.cluster.lookup("configMap", meta["namespace"],
                                                      str(ref["name"]), ""))
                items = ref.get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    if item["key"] in data:
                        files[str(item["path"])] = data[item["key"]]
            elif "downwardAPI" in source:
                for item in source["downwardAPI"].get("items") or []:
                    files[str(item["path"])] = field_value(pod, str(item["fieldRef"][
                        "fieldPath"]))
            else:
                raise PodError("CreateContainerConfigError",
                               f"projected source {sorted(source)} not supported")
        for rel, text in files.items():
            path = target / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f".{path.name}.tmp"
            tmp.write_text(text)
            tmp.chmod(0o644)
            os.replace(tmp, path)

    def stop(self) -> None:
        self.stopping.set()
        for worker in self.workers.values():
            worker.deleting.set()
        for worker in self.workers.values():
            worker.join(timeout=40)


def run(api_client: Any, run_dir: Path, stop_event: threading.Event, *, api_host: str,
        api_port: int, pod_cidr: str, nodes: int = 2, resync_s: float = 10.0) -> None:
    """Register the process nodes and run their pods until `stop_event` is set."""
    from kubernetes import client, watch  # the official client; imported when run

    if not routed_locally(pod_cidr):
        LOG.error("pod range %s is not routed to this machine: process nodes not started",
                  pod_cidr)
        return
    cluster = Cluster(client.CoreV1Api(api_client), client.CoordinationV1Api(api_client),
                      api_host, api_port)
    members = [ProcessNode(cluster, run_dir, i, pod_cidr) for i in range(nodes)]
    for node in members:
        node.register()
    pods: dict[str, dict[str, dict[str, Any]]] = {n.name: {} for n in members}
    lock = threading.Lock()
    wake = threading.Event()

    def watcher(node: ProcessNode) -> None:
        selector = f"spec.nodeName={node.name}"
        version = ""
        while not stop_event.is_set():
            try:
                if not version:
                    listed = api_client.sanitize_for_serialization(
                        cluster.core.list_pod_for_all_namespaces(field_selector=selector,
                                                                 _request_timeout=30))
                    with lock:
                        pods[node.name] = {p["metadata"]["uid"]: p for p in listed["items"]}
                    version = str(listed["metadata"].get("resourceVersion", ""))
                    wake.set()
                for event in watch.Watch().stream(
                        cluster.core.list_pod_for_all_namespaces, field_selector=selector,
                        resource_version=version, timeout_seconds=int(resync_s),
                        _request_timeout=resync_s + 10):
                    obj = api_client.sanitize_for_serialization(event["object"])
                    if event["type"] == "ERROR":
                        version = ""
                        break
                    with lock:
                        if event["type"] == "DELETED":
                            pods[node.name].pop(obj["metadata"]["uid"], None)
                        else:
                            pods[node.name][obj["metadata"]["uid"]] = obj
                    version = str(obj["metadata"].get("resourceVersion", version))
                    wake.set()
                else:
                    version = ""
            except Exception as err:
                LOG.warning("pod watch of %s failed (%s); listing again", node.name, err)
                version = ""
                stop_event.wait(2.0)

    for node in members:
        threading.Thread(target=watcher, args=(node,), name=f"watch-{node.name}",
                         daemon=True).start()
    last_beat = 0.0
    try:
        while not stop_event.is_set():
            wake.wait(1.0)
            wake.clear()
            if time.monotonic() - last_beat > 10:
                for node in members:
                    node.heartbeat(status=True)
                last_beat = time.monotonic()
            for node in members:
                with lock:
                    current = list(pods[node.name].values())
                node.sync(current)
    finally:
        for node in members:
            node.stop()
