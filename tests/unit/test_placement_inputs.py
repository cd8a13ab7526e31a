"""What placement and the GPUPool status are computed from: nodes and GPU pods, parsed from
the API's own objects by the one parser per kind (decide/cluster.py)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from dedicap.api.models import GPUPool
from dedicap.controller.status.capacity import pool_status
from dedicap.decide.cluster import ClusterState, parse_node, parse_pod, pod_gpus


def node(name: str, gpus: int, pool: str = "h100", ready: bool = True,
         unschedulable: bool = False) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"dedicap.dev/pool": pool}},
            "spec": {"unschedulable": unschedulable},
            "status": {"capacity": {"nvidia.com/gpu": str(gpus)},
                       "allocatable": {"nvidia.com/gpu": str(gpus)},
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def pod(name: str, node_name: str | None, gpus: int, md: str | None = None, ns: str = "t",
        phase: str = "Running") -> dict[str, Any]:
    labels = {"dedicap.dev/modeldeployment": md} if md else {}
    return {"metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": node_name, "containers": [
                {"resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]},
            "status": {"phase": phase}}


POOL = GPUPool.model_validate({"metadata": {"name": "h100", "generation": 3}, "spec": {
    "nodeSelector": {"dedicap.dev/pool": "h100"},
    "gpu": {"product": "NVIDIA-H100-80GB-HBM3", "memoryGiB": 80}}})


def state(nodes: list[dict[str, Any]], pods: list[dict[str, Any]]) -> ClusterState:
    parsed = tuple(p for p in (parse_pod(x) for x in pods) if p is not None and p.holds_gpus)
    return ClusterState({"h100": POOL}, tuple(parse_node(n) for n in nodes), parsed)


def test_pod_gpus_counts_requests_limits_and_init_containers() -> None:
    assert pod_gpus({"containers": [{"resources": {"requests": {"nvidia.com/gpu": "2"}}},
                                    {"resources": {"limits": {"nvidia.com/gpu": "1"}}}]}) == 3
    assert pod_gpus({"containers": [], "initContainers": [
        {"resources": {"limits": {"nvidia.com/gpu": "4"}}}]}) == 4
    assert pod_gpus({"containers": [{"resources": {}}]}) == 0


def holds(raw: dict[str, Any]) -> bool:
    p = parse_pod(raw)
    return p is not None and p.holds_gpus


def test_only_scheduled_live_gpu_pods_hold_gpus() -> None:
    assert not holds(pod("a", None, 1))  # pending, no node
    assert not holds(pod("b", "n", 1, phase="Succeeded"))
    assert not holds(pod("c", "n", 0))
    parsed = parse_pod(pod("d", "n", 2, md="chat"))
    assert parsed is not None and parsed.holds_gpus
    assert parsed.gpus == 2 and parsed.modeldeployment == "chat"
    # A replica without GPUs is kept (its readiness matters), and holds none.
    replica = parse_pod(pod("e", "n", 0, md="chat"))
    assert replica is not None and not replica.holds_gpus


def test_pool_status_counts_nodes_allocated_and_free() -> None:
    s = state([node("a", 8), node("b", 8), node("c", 8, ready=False), node("x", 1, pool="a10g")],
              [pod("p1", "a", 3), pod("p2", "b", 8), pod("p3", "c", 2), pod("p4", "x", 1)])
    status, ready = pool_status(POOL, s.pool_figures("h100"), reserved_gpus=4)
    assert (status["nodes"], status["readyNodes"]) == (3, 2)
    assert (status["totalGPUs"], status["allocatableGPUs"]) == (24, 16)
    assert status["allocatedGPUs"] == 13  # pods on the not-ready node still hold their GPUs
    assert status["freeGPUs"] == 5  # only Ready nodes offer room
    assert status["reservedGPUs"] == 4 and status["observedGeneration"] == 3
    assert ready.status == "True" and "2/3 nodes Ready with 16 allocatable GPUs" in ready.message


def test_a_modeldeployments_own_pods_do_not_count_against_it() -> None:
    s = state([node("a", 8)], [pod("mine", "a", 4, md="chat"), pod("other", "a", 2, md="x"),
                               pod("elsewhere", "a", 1, md="chat", ns="other-ns")])
    view = s.pool_states("t/chat")["h100"]
    assert view.free == 5  # 8 - 2 (other md) - 1 (same name, other namespace)
    cordoned = state([node("a", 8, unschedulable=True)], [])
    assert cordoned.pool_states("t/chat")["h100"].free == 0


def _reference_pool_states(s: ClusterState, owner: str, protected_priority: int | None
                           ) -> dict[str, tuple[tuple[str, int, int, int], ...]]:
    """Each pool's nodes as the owner sees them, counted from scratch."""
    out = {}
    for name, pool in s.pools.items():
        rows = []
        for n in sorted(s.pool_nodes(pool), key=lambda n: n.name):
            used = protected = 0
            for p in s.pods:
                if p.node == n.name and p.holds_gpus and p.owner != owner:
                    used += p.gpus
                    if protected_priority is None or p.priority >= protected_priority:
                        protected += p.gpus
            rows.append((n.name, n.allocatable_gpus if n.schedulable else 0, used, protected))
        out[name] = tuple(rows)
    return out


@given(st.lists(st.tuples(st.sampled_from(["h100", "a10g"]), st.integers(1, 8), st.booleans()),
                min_size=1, max_size=6),
       st.lists(st.tuples(st.integers(0, 5), st.integers(1, 4), st.sampled_from(["a", "b", "c"]),
                          st.sampled_from([0, 1000])), max_size=12),
       st.sampled_from(["", "t/a", "t/b", "t/z"]), st.sampled_from([None, 1000]))
def test_a_pool_view_shared_by_every_placement_equals_one_counted_for_its_owner(
        nodes: list[tuple[str, int, bool]], pods: list[tuple[int, int, str, int]], owner: str,
        protected_priority: int | None) -> None:
    raw_nodes = [node(f"n{i}", gpus, pool, ready=ready) for i, (pool, gpus, ready)
                 in enumerate(nodes)]
    raw_pods = []
    for j, (at, gpus, md, priority) in enumerate(pods):
        raw = pod(f"p{j}", f"n{at % len(nodes)}", gpus, md=md)
        raw["spec"]["priority"] = priority
        raw_pods.append(raw)
    parsed = tuple(p for p in (parse_pod(x) for x in raw_pods) if p is not None and p.holds_gpus)
    a10g = GPUPool.model_validate({"metadata": {"name": "a10g"}, "spec": {
        "nodeSelector": {"dedicap.dev/pool": "a10g"},
        "gpu": {"product": "NVIDIA-A10G", "memoryGiB": 24}}})
    s = ClusterState({"h100": POOL, "a10g": a10g}, tuple(parse_node(n) for n in raw_nodes),
                     parsed)
    want = _reference_pool_states(s, owner, protected_priority)
    # Twice, and another owner in between: what is shared between calls must not leak.
    for _ in range(2):
        s.pool_states("t/c", protected_priority)
        got = s.pool_states(owner, protected_priority)
        assert {name: tuple((n.name, n.allocatable, n.used, n.used_protected)
                            for n in ps.nodes) for name, ps in got.items()} == want
