"""The local stack behaves like a GPU cluster: real API server, scheduler and controllers on
simulated kwok GPU nodes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from dedicap_local import stack as stk
from testkit import wait_for

pytestmark = pytest.mark.integration

GPU_PRODUCT_H100 = "NVIDIA-H100-80GB-HBM3"
TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


@pytest.fixture
def namespace(stack: stk.Stack) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    stack.kubectl("create", "namespace", name)
    yield name
    stack.kubectl("delete", "namespace", name, "--wait=false", check=False)


def deployment(name: str, *, gpus: int, replicas: int = 2, pool: str | None = "h100",
               tolerate: bool = True, selector: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{
            "name": "main", "image": "registry.invalid/sleep:1",
            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {},
        }],
    }
    if selector:
        spec["nodeSelector"] = selector
    elif pool:
        spec["nodeSelector"] = {"nvidia.com/gpu.product": GPU_PRODUCT_H100}
    if tolerate:
        spec["tolerations"] = [TOLERATION]
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
        },
    }


def pods(stack: stk.Stack, ns: str, app: str) -> list[dict[str, Any]]:
    out = stack.kubectl("get", "pods", "-n", ns, "-l", f"app={app}", "-o", "json").stdout
    return [p for p in json.loads(out)["items"] if not p["metadata"].get("deletionTimestamp")]


def node_labels(stack: stk.Stack) -> dict[str, dict[str, str]]:
    out = json.loads(stack.kubectl("get", "nodes", "-o", "json").stdout)
    return {n["metadata"]["name"]: n["metadata"].get("labels", {}) for n in out["items"]}


def test_server_version_and_gpu_nodes(stack: stk.Stack) -> None:
    version = json.loads(stack.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"].startswith("v1.35.")

    # The stack's own nodes (tests sharing the cluster may add nodes of their own).
    own = {n["metadata"]["name"] for n in stk.node_objects(stk.load_pools())}
    nodes = json.loads(stack.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    gpu_nodes = [n for n in nodes if n["metadata"]["name"] in own
                 and "nvidia.com/gpu" in n["status"].get("capacity", {})]
    assert len(gpu_nodes) == 10
    by_pool: dict[str, list[dict[str, Any]]] = {}
    for n in gpu_nodes:
        by_pool.setdefault(n["metadata"]["labels"]["dedicap.dev/pool"], []).append(n)
        ready = {c["type"]: c["status"] for c in n["status"]["conditions"]}
        assert ready["Ready"] == "True", n["metadata"]["name"]
        assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in [
            # a fresh node may still carry the node controller's valueless not-ready taint
            {k: t.get(k) for k in ("key", "value", "effect")} for t in n["spec"]["taints"]]
    assert sorted(by_pool) == ["a10g", "h100"]
    assert len(by_pool["h100"]) == 4 and len(by_pool["a10g"]) == 6
    assert {n["status"]["allocatable"]["nvidia.com/gpu"] for n in by_pool["h100"]} == {"8"}
    assert {n["status"]["allocatable"]["nvidia.com/gpu"] for n in by_pool["a10g"]} == {"1"}
    assert {n["metadata"]["labels"]["nvidia.com/gpu.product"] for n in by_pool["h100"]} == {
        GPU_PRODUCT_H100}
    assert {n["metadata"]["labels"]["topology.kubernetes.io/zone"] for n in by_pool["h100"]} == {
        "zone-a", "zone-b"}


def test_gpu_pods_run_only_on_their_pool(stack: stk.Stack, namespace: str) -> None:
    stack.kubectl("apply", "-n", namespace, "-f", "-",
                  input=json.dumps(deployment("two-gpus", gpus=2, replicas=3)))
    labels = node_labels(stack)

    def running() -> list[dict[str, Any]] | None:
        ps = pods(stack, namespace, "two-gpus")
        ok = len(ps) == 3 and all(p["status"].get("phase") == "Running" for p in ps)
        return ps if ok else None

    ps = wait_for(running, "3 Running pods", timeout=90)
    for p in ps:
        node = p["spec"]["nodeName"]
        assert labels[node]["dedicap.dev/pool"] == "h100", node
        ready = {c["type"]: c["status"] for c in p["status"]["conditions"]}
        assert ready["Ready"] == "True"


def test_too_many_gpus_stays_pending_unschedulable(stack: stk.Stack, namespace: str) -> None:
    stack.kubectl("apply", "-n", namespace, "-f", "-",
                  input=json.dumps(deployment("nine-gpus", gpus=9, replicas=1)))

    def unschedulable() -> str | None:
        for p in pods(stack, namespace, "nine-gpus"):
            for c in p["status"].get("conditions", []):
                if c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable":
                    return str(c.get("message", ""))
        return None

    message = wait_for(unschedulable, "the scheduler's Unschedulable reason", timeout=90)
    assert "nvidia.com/gpu" in message
    assert all(p["status"].get("phase") == "Pending" for p in pods(stack, namespace, "nine-gpus"))


def test_without_toleration_never_on_a_gpu_node(stack: stk.Stack, namespace: str) -> None:
    stack.kubectl("apply", "-n", namespace, "-f", "-",
                  input=json.dumps(deployment("plain", gpus=0, replicas=3, pool=None,
                                              tolerate=False)))
    labels = node_labels(stack)
    ps = wait_for(lambda: (lambda ps: ps if len(ps) == 3 and all(
        p["spec"].get("nodeName") for p in ps) else None)(pods(stack, namespace, "plain")),
        "3 bound pods", timeout=90)
    for p in ps:
        assert "nvidia.com/gpu.product" not in labels[p["spec"]["nodeName"]]


def test_deleting_a_node_moves_pods(stack: stk.Stack, namespace: str) -> None:
    # A pool of three nodes of this test's own, so tests sharing the cluster cannot fill it; one
    # pod per node (6 GPUs on 8-GPU nodes), so the victim node holds exactly one.
    pool = {"name": namespace, "nodes": 3, "zones": ["zone-a"],
            "gpu": {"product": GPU_PRODUCT_H100, "memoryGiB": 80, "perNode": 8}}
    names = [n["metadata"]["name"] for n in stk.node_objects([pool])]
    stk.ensure_nodes(stack, [pool])
    try:
        stack.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(deployment(
            "movable", gpus=6, replicas=2, selector={"dedicap.dev/pool": namespace})))

        def two_running() -> list[dict[str, Any]] | None:
            ps = pods(stack, namespace, "movable")
            return ps if len(ps) == 2 and all(
                p["status"].get("phase") == "Running" for p in ps) else None

        before = wait_for(two_running, "2 Running pods", timeout=90)
        victim = before[0]["spec"]["nodeName"]
        stack.kubectl("delete", "node", victim)

        def moved() -> list[dict[str, Any]] | None:
            ps = two_running()
            return ps if ps and all(p["spec"]["nodeName"] != victim for p in ps) else None

        after = wait_for(moved, "pods re-created away from the deleted node", timeout=180)
        assert {p["metadata"]["name"] for p in after} != {p["metadata"]["name"] for p in before}
        assert {p["spec"]["nodeName"] for p in after} <= set(names) - {victim}
    finally:
        stack.kubectl("delete", "node", *names, "--ignore-not-found", "--wait=false",
                      check=False)
