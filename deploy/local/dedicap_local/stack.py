"""Start and stop the local stack on 127.0.0.1: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kwok with simulated GPU node pools, and Prometheus.

Every component is a real binary (built from the Go module proxy by build-binaries.sh, or Debian's
prometheus), run as a detached process tracked by a pid file, so `up` on a running stack starts
nothing twice and `down` leaves no process and no port behind.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dedicap_local import certs, procs

LOCAL_DIR = Path(__file__).resolve().parent.parent  # deploy/local
CACHE = Path(os.environ.get("DEDICAP_CACHE", Path.home() / ".cache" / "dedicap"))
BIN_DIR = Path(os.environ.get("DEDICAP_BIN_DIR", CACHE / "bin" / "current"))
RUN_DIR = Path(os.environ.get("DEDICAP_RUN_DIR", CACHE / "run"))

# Ports away from the usual ones, so a stack never collides with a real cluster's components,
# and below Linux's ephemeral range (32768-60999): a port in that range can be taken for a
# moment by any outgoing connection, and a component restarted then fails to listen.
# `DEDICAP_PORT_OFFSET` (0-2000) shifts them all, so several stacks (each with its own
# DEDICAP_RUN_DIR) can run side by side on one machine.
PORT_OFFSET = int(os.environ.get("DEDICAP_PORT_OFFSET", "0") or 0)
ETCD_CLIENT_PORT = 22379 + PORT_OFFSET
ETCD_PEER_PORT = 22380 + PORT_OFFSET
APISERVER_PORT = 26443 + PORT_OFFSET
CONTROLLER_MANAGER_PORT = 30257 + PORT_OFFSET
SCHEDULER_PORT = 30259 + PORT_OFFSET
KWOK_PORT = 30247 + PORT_OFFSET
PROMETHEUS_PORT = 29090 + PORT_OFFSET
# kwok gives pods addresses from this range, and the stack routes the whole range to the loopback
# device (`ip route add local`), so a process of the local data plane can listen on its pod's
# own address, as a container does in its network namespace: Services, EndpointSlices and
# Prometheus' Kubernetes discovery then point at something that answers. Not 127.0.0.0/8: the
# API server refuses loopback addresses in EndpointSlices.
POD_CIDR = f"10.{244 - (PORT_OFFSET // 100) % 40}.0.0/16"

# Start order; `down` stops in reverse.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


class KubectlError(subprocess.CalledProcessError):
    """A failed kubectl call whose message carries kubectl's own explanation."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{(self.stderr or '').strip()}"


@dataclass(frozen=True)
class Stack:
    """Where a stack lives and how to talk to it."""

    run_dir: Path = RUN_DIR
    bin_dir: Path = BIN_DIR
    prometheus_port: int = PROMETHEUS_PORT
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def kubeconfig(self) -> Path:
        return self.run_dir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{APISERVER_PORT}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    def binary(self, name: str) -> str:
        path = self.bin_dir / name
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing: build the binaries first (deploy/local/build-binaries.sh)")
        return str(path)

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run the stack's own kubectl against the stack; raise with its stderr on failure."""
        proc = subprocess.run(
            [self.binary("kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True, text=True, input=input, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, ["kubectl", *args], proc.stdout, proc.stderr)
        return proc

    def wait_established(self, *crds: str, timeout: float = 60) -> None:
        """Wait until each CRD (`name.group`, or all with none given) is Established.

        Not `kubectl wait --for=condition=Established`: on a CRD created a moment ago its
        `status.conditions` is still null and kubectl fails at once instead of waiting."""
        jsonpath = ('{range .items[*]}{.metadata.name}='
                    '{.status.conditions[?(@.type=="Established")].status}{"\\n"}{end}')

        def established() -> bool:
            out = self.kubectl("get", "crd", "-o", f"jsonpath={jsonpath}").stdout
            status = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
            wanted = crds or tuple(status)
            return all(status.get(name) == "True" for name in wanted)

        procs.wait_for(established, "CRDs " + (", ".join(crds) or "all") + " Established",
                       timeout)


def _pki(stack: Stack) -> certs.Pki:
    return certs.ensure(stack.run_dir / "pki")


def write_kubeconfig(stack: Stack, pki: certs.Pki) -> bool:
    """Write the stack's kubeconfig; True when it changed (its clients must read it again)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "dedicap-local", "cluster": {
            "server": stack.server, "certificate-authority": str(pki.ca_cert)}}],
        "users": [{"name": "dedicap-admin", "user": {
            "client-certificate": str(pki.admin_cert), "client-key": str(pki.admin_key)}}],
        "contexts": [{"name": "dedicap-local", "context": {
            "cluster": "dedicap-local", "user": "dedicap-admin"}}],
        "current-context": "dedicap-local",
    }
    text = yaml.safe_dump(config, sort_keys=False)
    if stack.kubeconfig.exists() and stack.kubeconfig.read_text() == text:
        return False
    stack.kubeconfig.write_text(text)
    return True


def _client_flags(kubeconfig: str) -> list[str]:
    """What the controller-manager and the scheduler share: the API server they talk to, who
    checks callers of their own endpoints, and loopback only."""
    return [f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}", "--bind-address=127.0.0.1"]


def kwok_stages(stack: Stack, with_dataplane: bool) -> Path:
    """kwok's Stages. With the data plane, a ModelDeployment's replica becomes Ready when its
    tritonserver serves (the data plane sets it, as a readiness probe would); without one
    (a control-plane-only stack, e.g. the fleet benchmark) nothing would ever serve, so kwok
    makes it Ready at once, as it does every other pod."""
    stages = LOCAL_DIR / "kwok" / "stages.yaml"
    if with_dataplane:
        return stages
    text = stages.read_text()
    gate = '{{ $ready = "False" }}'
    if gate not in text:
        raise RuntimeError(f"{stages}: the model pods' readiness gate is not where it was")
    out = stack.run_dir / "kwok-stages-ready.yaml"
    out.write_text(text.replace(gate, ""))
    return out


def _argv(stack: Stack, name: str, pki: certs.Pki, with_dataplane: bool = True) -> list[str]:
    kubeconfig = str(stack.kubeconfig)
    if name == "etcd":
        data = stack.run_dir / "etcd"
        return [
            stack.binary("etcd"), "--name=dedicap-local", f"--data-dir={data}",
            f"--listen-client-urls=http://127.0.0.1:{ETCD_CLIENT_PORT}",
            f"--advertise-client-urls=http://127.0.0.1:{ETCD_CLIENT_PORT}",
            f"--listen-peer-urls=http://127.0.0.1:{ETCD_PEER_PORT}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{ETCD_PEER_PORT}",
            f"--initial-cluster=dedicap-local=http://127.0.0.1:{ETCD_PEER_PORT}",
            # A throwaway test cluster: durability costs fsyncs the 2-core machines cannot spare.
            "--unsafe-no-fsync", "--quota-backend-bytes=4294967296", "--log-level=warn",
        ]
    if name == "kube-apiserver":
        return [
            stack.binary("kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{ETCD_CLIENT_PORT}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={APISERVER_PORT}",
            f"--cert-dir={stack.run_dir / 'pki'}",
            f"--tls-cert-file={pki.server_cert}", f"--tls-private-key-file={pki.server_key}",
            f"--client-ca-file={pki.ca_cert}",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--authorization-mode=Node,RBAC",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--allow-privileged=true",
            # A priority class's preemption and quotas are part of what dedicap relies on.
            "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,Priority,"
            "ResourceQuota,DefaultTolerationSeconds,MutatingAdmissionWebhook,"
            "ValidatingAdmissionWebhook,ValidatingAdmissionPolicy",
            "--endpoint-reconciler-type=none",
            "--v=1",
        ]
    if name == "kube-controller-manager":
        return [
            stack.binary("kube-controller-manager"), *_client_flags(kubeconfig),
            f"--secure-port={CONTROLLER_MANAGER_PORT}",
            f"--service-account-private-key-file={pki.sa_key}", f"--root-ca-file={pki.ca_cert}",
            "--use-service-account-credentials=false", "--leader-elect=false",
            # No cloud, no pod network: those controllers would only log errors.
            "--controllers=*,-nodeipam,-route,-service,-cloud-node-lifecycle",
            # Keep few finished pods around: test runs create many.
            "--terminated-pod-gc-threshold=100",
            "--v=1",
        ]
    if name == "kube-scheduler":
        return [
            stack.binary("kube-scheduler"), *_client_flags(kubeconfig),
            f"--secure-port={SCHEDULER_PORT}",
            "--leader-elect=false", "--v=1",
        ]
    if name == "kwok":
        return [
            stack.binary("kwok"), f"--kubeconfig={kubeconfig}",
            f"--config={kwok_stages(stack, with_dataplane)}",
            f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
            "--node-lease-duration-seconds=40",
            f"--server-address=127.0.0.1:{KWOK_PORT}",
            f"--cidr={POD_CIDR.replace('.0/16', '.1/16')}", "--node-ip=10.240.0.1",
        ]
    raise ValueError(name)


def route_pod_cidr(cidr: str = POD_CIDR) -> bool:
    """Make every address of `cidr` local (AnyIP), so data-plane processes can bind pod IPs.
    Idempotent; needs CAP_NET_ADMIN (root). False, with a warning, where it is not allowed:
    then pod addresses do not answer and only the data plane's own endpoints reach the pods."""
    shown = subprocess.run(["ip", "route", "show", "table", "local", cidr],
                           capture_output=True, text=True, check=False)
    if shown.returncode == 0 and cidr.split("/")[0] in shown.stdout:
        return True
    added = subprocess.run(["ip", "route", "add", "local", cidr, "dev", "lo"],
                           capture_output=True, text=True, check=False)
    if added.returncode != 0 and "File exists" not in added.stderr:
        log(f"warning: cannot route pod addresses {cidr} locally: {added.stderr.strip()}")
        return False
    return True


def unroute_pod_cidr(cidr: str = POD_CIDR) -> None:
    subprocess.run(["ip", "route", "del", "local", cidr, "dev", "lo"], capture_output=True,
                   check=False)


def _apiserver_ready(stack: Stack, pki: certs.Pki) -> bool:
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    ctx.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
    return procs.http_ok(f"{stack.server}/readyz", context=ctx)


def _ready_check(stack: Stack, name: str, pki: certs.Pki) -> bool:
    if name == "etcd":
        return procs.http_ok(f"http://127.0.0.1:{ETCD_CLIENT_PORT}/health")
    if name == "kube-apiserver":
        return _apiserver_ready(stack, pki)
    port = {"kube-controller-manager": CONTROLLER_MANAGER_PORT,
            "kube-scheduler": SCHEDULER_PORT, "kwok": KWOK_PORT}[name]
    return procs.port_open(port)


def log(msg: str) -> None:
    print(f"[dedicap-local] {msg}", flush=True)


def up(stack: Stack | None = None, *, with_dataplane: bool = True) -> Stack:
    """Bring the stack up (or leave a running one as it is) and return it."""
    stack = stack or Stack()
    stack.run_dir.mkdir(parents=True, exist_ok=True)
    route_pod_cidr()
    pki = _pki(stack)
    if write_kubeconfig(stack, pki):
        # Clients started with the old kubeconfig (another API server address) start again.
        for name in ("dataplane", *COMPONENTS[2:]):
            procs.stop(stack.run_dir, name)
    for name in COMPONENTS:
        already = procs.running_pid(stack.run_dir, name) is not None
        procs.start(stack.run_dir, name, _argv(stack, name, pki, with_dataplane))
        procs.wait_for(lambda n=name: _ready_check(stack, n, pki),  # type: ignore[misc]
                       f"{name}", timeout=120, log=stack.run_dir / "logs" / f"{name}.log")
        log(f"{name}: {'already running' if already else 'started'}")
    ensure_nodes(stack)
    from dedicap_local import prometheus  # the data plane's half of the stack

    url = prometheus.start(stack.run_dir, port=stack.prometheus_port)
    log(f"prometheus: {url}")
    if with_dataplane:
        start_dataplane(stack)
    return stack


def start_dataplane(stack: Stack) -> None:
    """Run the local data plane: a real tritonserver for each Running model pod."""
    import sys

    already = procs.running_pid(stack.run_dir, "dataplane") is not None
    procs.start(stack.run_dir, "dataplane", [
        sys.executable, "-m", "dedicap_local.dataplane",
        "--kubeconfig", str(stack.kubeconfig), "--run-dir", str(stack.run_dir),
        "--prometheus-port", str(stack.prometheus_port),
    ])
    log(f"dataplane: {'already running' if already else 'started'}")


def down(stack: Stack | None = None, *, purge: bool = False) -> None:
    """Stop every component (data plane and Triton processes first); optionally delete state."""
    stack = stack or Stack()
    procs.stop(stack.run_dir, "operator")  # the demo's operator, if it runs
    from dedicap_local import monitoring

    monitoring.down(stack.run_dir)
    procs.stop(stack.run_dir, "dataplane")
    # Triton processes of the data plane are tracked in the same pid folder.
    pid_dir = stack.run_dir / "pids"
    if pid_dir.exists():
        for pid in sorted(pid_dir.glob("triton-*.pid")):
            procs.stop(stack.run_dir, pid.stem)
    from dedicap_local import prometheus

    prometheus.stop(stack.run_dir)
    for name in reversed(COMPONENTS):
        if procs.stop(stack.run_dir, name):
            log(f"{name}: stopped")
    unroute_pod_cidr()
    if purge and stack.run_dir.exists():
        shutil.rmtree(stack.run_dir)
        log(f"removed {stack.run_dir}")


def status(stack: Stack | None = None) -> dict[str, bool]:
    stack = stack or Stack()
    names = [*COMPONENTS, "prometheus", "dataplane"]
    return {n: procs.running_pid(stack.run_dir, n) is not None for n in names}


# --- simulated GPU nodes ------------------------------------------------------------------

def load_pools(path: Path | None = None) -> list[dict[str, Any]]:
    data = yaml.safe_load((path or LOCAL_DIR / "pools.yaml").read_text())
    pools: list[dict[str, Any]] = data["pools"]
    return pools


def node_objects(pools: Sequence[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The Node objects of the pools: capacity, GPU-discovery labels, zone, taint (pure)."""
    for pool in pools:
        gpu = pool.get("gpu")
        zones = pool.get("zones") or ["zone-a"]
        for i in range(int(pool["nodes"])):
            name = f"{pool['name']}-{i}"
            labels = {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "dedicap.dev/pool": pool["name"],
                "topology.kubernetes.io/zone": zones[i % len(zones)],
            }
            capacity = {"cpu": str(pool.get("cpu", "16")),
                        "memory": str(pool.get("memory", "64Gi")), "pods": "110"}
            taints: list[dict[str, str]] = []
            if gpu:
                labels |= {
                    "nvidia.com/gpu.product": gpu["product"],
                    "nvidia.com/gpu.memory": str(int(gpu["memoryGiB"]) * 1024),  # MiB, as GFD
                    "nvidia.com/gpu.count": str(gpu["perNode"]),
                    "nvidia.com/gpu.present": "true",
                }
                capacity["nvidia.com/gpu"] = str(gpu["perNode"])
                taints.append(dict(GPU_TAINT))
            yield {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": labels,
                             "annotations": {KWOK_NODE_ANNOTATION: "fake",
                                             "node.alpha.kubernetes.io/ttl": "0"}},
                "spec": {"taints": taints},
                # kwok's node-initialize Stage fills in conditions, addresses and nodeInfo.
                "status": {"capacity": capacity, "allocatable": dict(capacity)},
            }


def ensure_nodes(stack: Stack, pools: Sequence[dict[str, Any]] | None = None,
                 timeout: float = 90) -> None:
    """Create the pools' nodes that are missing and wait until every one is Ready."""
    nodes = list(node_objects(pools or load_pools()))
    existing = set(stack.kubectl("get", "nodes", "-o", "name").stdout.split())
    missing = [n for n in nodes if f"node/{n['metadata']['name']}" not in existing]
    if missing:
        # A Node's status is accepted on create, which is how kwok's nodes get their capacity.
        stack.kubectl("create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                             "items": missing}))
        log(f"created {len(missing)} simulated node(s)")
    names = [n["metadata"]["name"] for n in nodes]
    deadline = time.monotonic() + timeout
    while True:
        ready = _ready_nodes(stack)
        if all(n in ready for n in names):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nodes not Ready: {sorted(set(names) - ready)}")
        time.sleep(0.5)


def _ready_nodes(stack: Stack) -> set[str]:
    out = json.loads(stack.kubectl("get", "nodes", "-o", "json").stdout)
    ready = set()
    for node in out["items"]:
        for cond in node.get("status", {}).get("conditions", []):
            if cond["type"] == "Ready" and cond["status"] == "True":
                ready.add(node["metadata"]["name"])
    return ready
