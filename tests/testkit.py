"""Helpers shared by the integration tests (importable because pytest puts tests/ on the path):
bounded polling, kubectl reads, Prometheus' HTTP API, and the operator as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def wait_for(probe: Callable[[], Any], what: str, timeout: float = 60.0,
             interval: float = 0.5) -> Any:
    """Poll `probe` until it returns something truthy and return that. A probe may also fail an
    assertion while the state is not there yet; after `timeout` the last value or assertion is
    reported, so a failure says how far things got."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = probe()
        except AssertionError as err:
            value, last = None, err
        else:
            last = value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def install_api(stack: Any) -> None:
    """This checkout's CRDs (a stack kept from an older one would prune newer fields), ready to
    use, and the example GPUPools."""
    stack.kubectl("apply", "-f", str(ROOT / "crds"))
    stack.wait_established("modeldeployments.dedicap.dev", "gpupools.dedicap.dev",
                           "capacityreservations.dedicap.dev")
    stack.kubectl("apply", "-f", str(ROOT / "deploy" / "examples" / "gpupools.yaml"))


def tenant_namespace(stack: Any, name: str) -> str:
    """A tenant namespace as a platform team makes one: Pod Security `restricted` enforced."""
    stack.kubectl("create", "namespace", name)
    stack.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
    return name


def small_md(namespace: str, name: str, *, replicas: int, pools: Sequence[str] = ("h100",),
             **spec: Any) -> str:
    """A ModelDeployment of one-GPU replicas with small requests (JSON for kubectl apply)."""
    return json.dumps({
        "apiVersion": "dedicap.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"model": {"name": name, "repository": "s3://models/triton"},
                 "resources": {"gpusPerReplica": 1, "gpuMemoryGiB": 20, "cpu": "100m",
                               "memory": "256Mi"},
                 "placement": {"pools": list(pools)}, "replicas": replicas, **spec}})


def kget(stack: Any, *args: str) -> Any:
    """`kubectl get ... -o json`, parsed."""
    return json.loads(stack.kubectl("get", *args, "-o", "json").stdout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prom_query(prom_url: str, promql: str) -> list[dict[str, Any]]:
    """An instant query through Prometheus' HTTP API; the result vector."""
    qs = urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(f"{prom_url}/api/v1/query?{qs}", timeout=5) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


class OperatorProcess:
    """`dedicap run <args>` against the stack as a subprocess that can be killed and restarted;
    each start logs to its own file, and /metrics is served on a free loopback port."""

    def __init__(self, stack: Any, log_dir: Path, args: Sequence[str],
                 peering: str | None = None, metrics_address: str = "127.0.0.1",
                 metrics_port: int | None = None) -> None:
        self.stack = stack
        self.log_dir = log_dir
        self.peering = peering
        self.args = [*args, *(["--peering", peering] if peering else [])]
        self.metrics_address = metrics_address
        self.metrics_port = metrics_port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        env = {**os.environ, "KUBECONFIG": str(self.stack.kubeconfig), "PYTHONUNBUFFERED": "1"}
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dedicap.cli", "run", *self.args,
                 "--metrics-port", str(self.metrics_port),
                 "--metrics-address", self.metrics_address],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)

    def kill(self) -> None:
        """SIGKILL: no goodbye, no cleanup, as a crash would leave things."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://{self.metrics_address}:{self.metrics_port}/metrics",
                                    timeout=5) as resp:
            return str(resp.read().decode())

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def release_operator_state(stack: Any, peering: str | None = None) -> None:
    """After the last operator of a test module stops: drop its peering object, which nothing
    else removes (the operator puts no finalizer on any object, so nothing else is left)."""
    if peering:
        stack.kubectl("delete", "clusterkopfpeering", peering, "--ignore-not-found", check=False)


@dataclass
class SimPool:
    """A pool of simulated GPU nodes that only this test's pods tolerate."""

    stack: Any
    name: str
    nodes: int
    gpus_per_node: int
    memory_gib: float = 80.0
    price: float = 2.5
    created_nodes: list[str] = field(default_factory=list)

    @property
    def taint_key(self) -> str:
        return "dedicap.dev/test-pool"

    def tolerations(self) -> list[dict[str, str]]:
        return [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                {"key": self.taint_key, "operator": "Equal", "value": self.name,
                 "effect": "NoSchedule"}]

    def node_name(self, i: int) -> str:
        return f"{self.name}-{i}"

    def create(self) -> None:
        nodes: list[dict[str, Any]] = []
        for i in range(self.nodes):
            name = self.node_name(i)
            capacity_ = {"cpu": "64", "memory": "512Gi", "pods": "110",
                         "nvidia.com/gpu": str(self.gpus_per_node)}
            nodes.append({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake",
                                                           "node.alpha.kubernetes.io/ttl": "0"},
                             "labels": {"kubernetes.io/hostname": name, "type": "kwok",
                                        "kubernetes.io/os": "linux",
                                        "kubernetes.io/arch": "amd64",
                                        "dedicap.dev/pool": self.name,
                                        "topology.kubernetes.io/zone": f"zone-{'ab'[i % 2]}"}},
                "spec": {"taints": [
                    {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
                    {"key": self.taint_key, "value": self.name, "effect": "NoSchedule"}]},
                "status": {"capacity": capacity_, "allocatable": dict(capacity_)}})
        self.stack.kubectl("create", "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": nodes}))
        self.created_nodes = [n["metadata"]["name"] for n in nodes]
        self.stack.kubectl("apply", "-f", "-", input=json.dumps(self.gpupool()))
        wait_for(self._all_ready, f"nodes of {self.name} Ready")

    def gpupool(self) -> dict[str, Any]:
        return {"apiVersion": "dedicap.dev/v1alpha1", "kind": "GPUPool",
                "metadata": {"name": self.name},
                "spec": {"nodeSelector": {"dedicap.dev/pool": self.name},
                         "tolerations": self.tolerations(),
                         "gpu": {"product": f"TEST-{self.name}", "memoryGiB": self.memory_gib,
                                 "perNode": self.gpus_per_node},
                         "pricePerGPUHour": self.price}}

    def _all_ready(self) -> bool:
        out = json.loads(self.stack.kubectl(
            "get", "nodes", "-l", f"dedicap.dev/pool={self.name}", "-o", "json").stdout)
        ready = [n for n in out["items"] if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in n.get("status", {}).get("conditions", []))]
        return len(ready) == self.nodes

    def delete(self) -> None:
        self.stack.kubectl("delete", "gpupool", self.name, "--ignore-not-found", "--wait=false",
                           check=False)
        for n in self.created_nodes:
            self.stack.kubectl("delete", "node", n, "--ignore-not-found", "--wait=false",
                               check=False)


def live_autoscaler(stack: Any, log_dir: Path, namespaces: str, peering: str,
                    eval_s: int) -> OperatorProcess:
    """An operator (not started) as the live autoscaling tests run it, after installing the
    CRDs and the example pools: it serves `namespaces` (a glob) with a peering object of its
    own, reads the stack's Prometheus (scraped every 2 s) over a 20-s window, evaluates every
    `eval_s` seconds and assumes replicas start in 10 s."""
    install_api(stack)
    return OperatorProcess(
        stack, log_dir,
        ["--namespace", namespaces, "--peering-lifetime", "10",
         "--pool-refresh-seconds", "2", "--resync-seconds", "5",
         "--prometheus-url", stack.prometheus_url,
         "--evaluation-interval", str(eval_s), "--scrape-interval", "2",
         "--metrics-window", "20", "--replica-startup", "10", "--burst-memory", "30",
         "--verbose"],
        peering=peering)
