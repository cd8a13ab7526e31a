"""GPUPools need no running operator to be deleted: the operator's periodic work (pool status,
the pools' users, capacity) runs on a thread of its own, not on kopf timers, so no finalizer is
put on any pool; and the finalizer older versions left is removed when the operator starts.

Each test has a pool of its own (one simulated node with 2 GPUs of a product nothing else
asks for) and runs the operator (`dedicap run`, a real process) itself.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testkit import OperatorProcess, kget, release_operator_state, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LEGACY_FINALIZER = "dedicap.dev/timers"
OTHER_FINALIZER = "example.com/keep-me"


@dataclass
class Pool:
    name: str
    product: str

    @property
    def node(self) -> str:
        return f"{self.name}-0"

    def manifest(self) -> dict[str, Any]:
        return {"apiVersion": "dedicap.dev/v1alpha1", "kind": "GPUPool",
                "metadata": {"name": self.name},
                "spec": {"nodeSelector": {"nvidia.com/gpu.product": self.product},
                         "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                          "effect": "NoSchedule"}],
                         "gpu": {"product": self.product, "memoryGiB": 24, "perNode": 2}}}


@pytest.fixture
def pool(stack: Any) -> Iterator[Pool]:
    from dedicap_local import stack as stk

    stack.kubectl("apply", "-f", str(ROOT / "crds"))
    stack.wait_established("gpupools.dedicap.dev")
    name = f"rs-{uuid.uuid4().hex[:6]}"
    p = Pool(name, f"TEST-{name.upper()}")
    stk.ensure_nodes(stack, [{"name": name, "nodes": 1, "cpu": "16", "memory": "64Gi",
                              "gpu": {"product": p.product, "memoryGiB": 24, "perNode": 2}}])
    stack.kubectl("apply", "-f", "-", input=json.dumps(p.manifest()))
    yield p
    stack.kubectl("delete", "gpupool", name, "--ignore-not-found", "--wait=false", check=False)
    stack.kubectl("delete", "node", p.node, "--ignore-not-found", "--wait=false", check=False)


@pytest.fixture
def namespace(stack: Any) -> Iterator[str]:
    name = f"dcp-rs-{uuid.uuid4().hex[:6]}"
    stack.kubectl("create", "namespace", name)
    yield name
    stack.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def operator(stack: Any, tmp_path: Path) -> Iterator[OperatorProcess]:
    # Not standalone: the periodic work must also pass the peering check to run at all.
    op = OperatorProcess(stack, tmp_path, [
        "--namespace", "dcp-rs-*", "--peering-lifetime", "6", "--pool-refresh-seconds", "2",
        "--resync-seconds", "5", "--capacity-seconds", "5", "--verbose",
    ], peering=f"dedicap-test-{uuid.uuid4().hex[:6]}")
    yield op
    op.stop()
    release_operator_state(stack, op.peering)


def pool_status(stack: Any, name: str) -> dict[str, Any]:
    return dict(kget(stack, "gpupool", name).get("status") or {})


def finalizers(stack: Any, name: str) -> list[str]:
    return list(kget(stack, "gpupool", name)["metadata"].get("finalizers") or [])


def gpu_pod(stack: Any, namespace: str, pool: Pool, gpus: int) -> str:
    """A plain pod holding GPUs of the pool (no ModelDeployment: nothing but the periodic
    refresh can tell the pool about it)."""
    name = f"holder-{uuid.uuid4().hex[:4]}"
    stack.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
        "spec": {"nodeSelector": {"nvidia.com/gpu.product": pool.product},
                 "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                  "effect": "NoSchedule"}],
                 "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10",
                                 "resources": {"requests": {"nvidia.com/gpu": str(gpus)},
                                               "limits": {"nvidia.com/gpu": str(gpus)}}}]}}))
    return name


def test_pool_status_follows_bound_pods_and_the_pool_deletes_with_the_operator_gone(
        stack: Any, pool: Pool, namespace: str, operator: OperatorProcess) -> None:
    operator.start()

    def figures() -> tuple[int, int] | None:
        status = pool_status(stack, pool.name)
        if "allocatedGPUs" not in status:
            return None
        return int(status["allocatedGPUs"]), int(status["freeGPUs"])

    assert wait_for(figures, "the pool's first status", timeout=60) == (0, 2)
    assert finalizers(stack, pool.name) == []

    # A pod bound to the pool's node changes no GPUPool: only the periodic refresh sees it.
    pod = gpu_pod(stack, namespace, pool, gpus=1)
    wait_for(lambda: kget(stack, "pod", pod, "-n", namespace)["spec"].get("nodeName"),
             "the GPU pod to be bound", timeout=60)
    wait_for(lambda: figures() == (1, 1), "ALLOCATED 1 / FREE 1 after the pod is bound",
             timeout=30)
    row = stack.kubectl("get", "gpupool", pool.name, "--no-headers").stdout.split()
    assert row[4:6] == ["1", "1"], row  # NAME GPU NODES GPUS ALLOCATED FREE AGE
    log = operator.log.read_text(errors="replace")
    assert "resync active" in log, operator.log_tail()
    # The operator has been running a while, with every periodic job run: still no finalizer.
    assert finalizers(stack, pool.name) == [], operator.log_tail()

    # SIGTERM stops kopf and the resync thread cleanly.
    proc = operator.proc
    assert proc is not None
    started = time.monotonic()
    operator.stop()
    assert proc.returncode == 0, operator.log_tail()
    assert time.monotonic() - started < 15
    assert "Traceback" not in operator.log.read_text(errors="replace"), operator.log_tail()

    # With no operator left, deleting the pool completes (kubectl waits for it to be gone).
    started = time.monotonic()
    done = stack.kubectl("delete", "gpupool", pool.name, "--timeout=20s", check=False)
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert took < 5, f"kubectl delete gpupool took {took:.1f}s"
    assert stack.kubectl("get", "gpupool", pool.name, check=False).returncode != 0


def test_the_finalizer_older_versions_left_is_removed_at_startup(
        stack: Any, pool: Pool, operator: OperatorProcess) -> None:
    # What an older operator left: its finalizer on every pool, beside someone else's, and a
    # pool deleted since, stuck Terminating on that finalizer.
    stuck = Pool(f"{pool.name}-stuck", pool.product)
    stack.kubectl("apply", "-f", "-", input=json.dumps(stuck.manifest()))
    for name, values in ((pool.name, [LEGACY_FINALIZER, OTHER_FINALIZER]),
                         (stuck.name, [LEGACY_FINALIZER])):
        stack.kubectl("patch", "gpupool", name, "--type=merge", "-p",
                      json.dumps({"metadata": {"finalizers": values}}))
    try:
        stack.kubectl("delete", "gpupool", stuck.name, "--wait=false")
        assert kget(stack, "gpupool", stuck.name)["metadata"].get("deletionTimestamp")

        operator.start()
        wait_for(lambda: finalizers(stack, pool.name) == [OTHER_FINALIZER],
                 "the old finalizer removed, the other one kept", timeout=60)
        wait_for(lambda: stack.kubectl("get", "gpupool", stuck.name,
                                       check=False).returncode != 0,
                 "the pool deleted earlier to be gone", timeout=30)
        # The startup cleanup did it (before kopf ran), not some later event.
        assert f"removed the finalizer {LEGACY_FINALIZER}" in operator.log.read_text(
            errors="replace"), operator.log_tail()
        time.sleep(3)  # a few refresh rounds: nothing puts a finalizer back
        assert finalizers(stack, pool.name) == [OTHER_FINALIZER]
    finally:
        for name in (pool.name, stuck.name):
            stack.kubectl("patch", "gpupool", name, "--type=merge", "-p",
                          '{"metadata": {"finalizers": null}}', check=False)
