"""Placement without a reservation (plain, as with capacity management off): preference order,
GPU memory, node fit, capacity; properties with hypothesis."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from dedicap.api.models import ModelDeploymentSpec
from dedicap.decide.placement import (
    DeploymentPlan,
    NodeState,
    Placement,
    PlacementRequest,
    PoolState,
)
from dedicap.decide.placement import place as place_request


def _pool(name: str, nodes: list[tuple[int, int]], memory: float = 80.0) -> PoolState:
    return PoolState(name, memory, tuple(
        NodeState(f"{name}-{i}", "zone-a", alloc, used, used)
        for i, (alloc, used) in enumerate(nodes)))


def place(spec: ModelDeploymentSpec, replicas: int, pools: dict[str, PoolState]) -> Placement:
    res = spec.resources
    return place_request(PlacementRequest(replicas, res.gpus_per_replica, res.gpu_memory_gib,
                                          tuple(spec.placement.pools)), pools)


def used(p: Placement) -> list[tuple[str, int]]:
    return [(a.pool, a.replicas) for a in p.assignments if a.replicas]


def fits(pool: PoolState, gpus: int) -> int:
    return sum(n.free // gpus for n in pool.nodes)


def _spec(pools: list[str], gpus: int = 1, memory: float = 0.0) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate({
        "model": {"name": "m", "repository": "s3://b/r"},
        "resources": {"gpusPerReplica": gpus, "gpuMemoryGiB": memory},
        "placement": {"pools": pools}})


H100 = _pool("h100", [(8, 0)] * 4)
A10G = _pool("a10g", [(1, 0)] * 6, memory=24)


def test_first_pool_takes_everything_that_fits() -> None:
    p = place(_spec(["h100", "a10g"]), 5, {"h100": H100, "a10g": A10G})
    assert used(p) == [("h100", 5)]
    assert p.unplaced == 0


def test_overflow_goes_to_the_next_pool_in_order() -> None:
    busy = _pool("h100", [(8, 7), (8, 8)])  # room for one 1-GPU replica
    p = place(_spec(["h100", "a10g"]), 4, {"h100": busy, "a10g": A10G})
    assert used(p) == [("h100", 1), ("a10g", 3)]


def test_gpu_memory_and_node_size_exclude_pools_with_reasons() -> None:
    p = place(_spec(["a10g", "h100"], gpus=2, memory=40), 2, {"h100": H100, "a10g": A10G})
    assert used(p) == [("h100", 2)]
    assert p.pools[0].reason == "InsufficientGPUMemory"
    p = place(_spec(["h100"], gpus=16), 1, {"h100": H100})
    assert p.pools[0].reason == "ReplicaDoesNotFitNode"
    assert "gpusPerReplica=16" in p.explain() and p.assignments == ()


def test_unknown_pool_and_no_room_are_explained_not_assigned() -> None:
    p = place(_spec(["nope"]), 2, {})
    assert p.assignments == () and p.unplaced == 2 and not p.eligible
    assert "no GPUPool named 'nope'" in p.explain()
    full = _pool("h100", [(8, 8)])
    p = place(_spec(["h100"]), 3, {"h100": full})
    # An eligible pool keeps an empty Deployment; the three replicas are reported unplaced.
    assert used(p) == [] and p.deployments(priority_classes=False) == (
        DeploymentPlan("h100", 0, None),)
    assert p.unplaced == 3 and "3 not placed" in p.explain()


def test_multi_gpu_replicas_must_fit_within_one_node() -> None:
    fragmented = _pool("h100", [(8, 5), (8, 5), (8, 5)])  # 9 free GPUs, 3 per node
    p = place(_spec(["h100"], gpus=4), 2, {"h100": fragmented})
    assert p.placed == 0 and fits(fragmented, 4) == 0 and p.pools[0].free_gpus == 9


def test_unschedulable_nodes_offer_nothing() -> None:
    # A node that is not Ready or is cordoned offers 0 allocatable GPUs to placement.
    pool = PoolState("h100", 80.0, (NodeState("n", "zone-a", 0),), ready_nodes=0)
    assert place(_spec(["h100"]), 1, {"h100": pool}).pools[0].reason == "NoReadyNodes"


nodes = st.lists(st.tuples(st.integers(0, 8), st.integers(0, 10)), min_size=0, max_size=6)


@given(
    pools=st.lists(st.tuples(st.sampled_from(["h100", "a10g", "l4", "a100"]), nodes,
                             st.sampled_from([16.0, 24.0, 80.0])), min_size=0, max_size=4,
                   unique_by=lambda t: t[0]),
    order=st.permutations(["h100", "a10g", "l4", "a100"]),
    gpus=st.integers(1, 8),
    memory=st.sampled_from([0.0, 20.0, 40.0]),
    replicas=st.integers(0, 40),
)
def test_placement_invariants(pools: list[Any], order: list[str], gpus: int, memory: float,
                              replicas: int) -> None:
    views = {name: _pool(name, n, mem) for name, n, mem in pools}
    spec = _spec(list(order[:3]), gpus=gpus, memory=memory)
    p = place(spec, replicas, views)
    # Never more than wanted, never a replica where it cannot run.
    assert 0 <= p.placed <= replicas and p.unplaced == replicas - p.placed
    for a in p.assignments:
        view = views[a.pool]
        report = next(r for r in p.pools if r.pool == a.pool)
        assert report.eligible and a.pool in spec.placement.pools
        assert view.gpu_memory_gib >= memory
        assert a.replicas <= fits(view, gpus)
    # Preference: a later pool gets replicas only when every earlier eligible pool is full.
    for i, a in enumerate(p.assignments):
        if a.replicas:
            for earlier in p.assignments[:i]:
                assert earlier.replicas == fits(views[earlier.pool], gpus)
    # If anything fits anywhere, it is placed (no replica left out while room exists).
    room = sum(fits(views[r.pool], gpus) for r in p.pools if r.eligible)
    assert p.placed == min(replicas, room)
    # Deterministic.
    assert place(spec, replicas, views) == p
