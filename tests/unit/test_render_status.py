"""A ModelDeployment's status and conditions, from its Deployments, pods and placement."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from dedicap.api import conditions as c
from dedicap.api.models import GPUPoolSpec, ModelDeployment
from dedicap.controller.status.replicas import Problem, compute, no_eligible_pool
from dedicap.decide.cluster import PodInfo, parse_pod
from dedicap.decide.placement import (
    NodeState,
    Placement,
    PlacementRequest,
    PoolAssignment,
    PoolState,
    place,
)

MD = ModelDeployment.model_validate({
    "metadata": {"name": "chat", "namespace": "t", "uid": "u", "generation": 4},
    "spec": {"model": {"name": "chat", "repository": "s3://b/r"},
             "placement": {"pools": ["h100", "a10g"]}, "replicas": 3}})
POOLS = {
    "h100": GPUPoolSpec.model_validate({"nodeSelector": {"p": "h100"}, "pricePerGPUHour": 2.5,
                                        "gpu": {"product": "H100", "memoryGiB": 80}}),
    "a10g": GPUPoolSpec.model_validate({"nodeSelector": {"p": "a10g"}, "pricePerGPUHour": 0.75,
                                        "gpu": {"product": "A10G", "memoryGiB": 24}}),
}


def deployment(pool: str, want: int, replicas: int, ready: int, updated: int | None = None,
               generation: int = 1, observed: int = 1, deadline: bool = False) -> dict[str, Any]:
    updated = ready if updated is None else updated
    conds = [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
             ] if deadline else []
    return {"metadata": {"name": f"chat-{pool}", "generation": generation,
                         "labels": {"dedicap.dev/pool": pool}},
            "spec": {"replicas": want, "template": {"spec": {"containers": [
                {"resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}},
            "status": {"replicas": replicas, "readyReplicas": ready, "updatedReplicas": updated,
                       "availableReplicas": ready, "observedGeneration": observed,
                       "conditions": conds}}


def by_type(report: Any) -> dict[str, c.Cond]:
    return {cond.type: cond for cond in report.conditions}


def _place(wanted: int, pools: dict[str, PoolState]) -> Placement:
    res = MD.spec.resources
    return place(PlacementRequest(wanted, res.gpus_per_replica, res.gpu_memory_gib,
                                  tuple(MD.spec.placement.pools)), pools)


def placed(*assignments: tuple[str, int], wanted: int = 3) -> Placement:
    views = {p: PoolState(p, POOLS[p].gpu.memory_gib, (NodeState("n", "zone-a", 8),))
             for p in POOLS}
    base = _place(wanted, views)
    return Placement(wanted, 1, tuple(PoolAssignment(p, 0, r) for p, r in assignments),
                     base.pools)


def pods(*raw: dict[str, Any]) -> list[PodInfo]:
    parsed = [parse_pod({"metadata": {**r["metadata"], "namespace": "t",
                                      "labels": {"dedicap.dev/modeldeployment": "chat"}},
                         **{k: v for k, v in r.items() if k != "metadata"}}) for r in raw]
    return [p for p in parsed if p is not None]


def test_all_ready() -> None:
    report = compute(MD, placed(("h100", 3)), None, [deployment("h100", 3, 3, 3)], [], POOLS)
    conds = by_type(report)
    assert conds["Ready"].status == "True" and "3/3" in conds["Ready"].message
    assert conds["Progressing"].status == "False"
    assert conds["Degraded"].status == "False"
    assert conds["CapacityConstrained"].status == "False"
    f = report.fields
    assert (f["replicas"], f["readyReplicas"], f["desiredReplicas"]) == (3, 3, 3)
    assert f["selector"] == "dedicap.dev/modeldeployment=chat" and f["pools"] == "h100"
    assert f["cost"] == {"gpus": 3, "hourlyCost": 7.5, "currency": "USD"}
    assert f["observedGeneration"] == 4


def test_rollout_in_progress_and_pool_move() -> None:
    rolling = compute(MD, placed(("h100", 3)), None,
                      [deployment("h100", 3, 4, 3, updated=1, generation=2)], [], POOLS)
    assert by_type(rolling)["Progressing"].reason == "RollingOut"
    moving = compute(MD, placed(("a10g", 3)), None,
                     [deployment("a10g", 3, 3, 1), deployment("h100", 3, 3, 3)], [], POOLS,
                     waiting_to_delete=["chat-h100"])
    conds = by_type(moving)
    assert conds["Progressing"].reason == "MovingPools"
    assert moving.fields["replicas"] == 6  # all replicas that exist, on every pool
    assert [p["pool"] for p in moving.fields["placement"]] == ["a10g", "h100"]
    assert moving.fields["placement"][1]["replicas"] == 0  # leaving h100


def test_capacity_and_failures_are_explained() -> None:
    short = compute(MD, placed(("h100", 1)), None, [deployment("h100", 1, 1, 1)], [], POOLS)
    conds = by_type(short)
    assert conds["Ready"].status == "False" and conds["Ready"].reason == "InsufficientCapacity"
    assert conds["CapacityConstrained"].status == "True"
    assert "wanted 3 replica(s), placed 1" in conds["CapacityConstrained"].message
    pending = {"metadata": {"name": "p"}, "status": {"conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/10 nodes are available: 10 Insufficient nvidia.com/gpu."}]}}
    crashing = {"metadata": {"name": "q"}, "status": {"containerStatuses": [{
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}}}]}}
    report = compute(MD, placed(("h100", 3)), None, [deployment("h100", 3, 3, 1, deadline=True)],
                     pods(pending, crashing), POOLS)
    conds = by_type(report)
    assert conds["CapacityConstrained"].reason == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in conds["CapacityConstrained"].message
    assert conds["Degraded"].reason == "ReplicasFailing"
    assert conds["Progressing"].reason == "ProgressDeadlineExceeded"


def test_a_problem_says_what_to_change() -> None:
    placement = _place(3, {})
    problem = no_eligible_pool(placement)
    assert problem.reason == "UnknownPool" and "spec.placement.pools" in problem.message
    conds = by_type(compute(MD, placement, problem, [], [], POOLS))
    assert conds["Ready"].status == "False" and conds["Degraded"].status == "True"
    invalid = by_type(compute(MD, None, Problem("InvalidSpec", "spec.x: bad"), [], [], POOLS))
    assert invalid["Ready"].message == "spec.x: bad"


def test_condition_merge_keeps_transition_times_and_other_writers() -> None:
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    first = c.merge([{"type": "SLOMet", "status": "True", "reason": "Met"}],
                    [c.Cond("Ready", "False", "ReplicasNotReady", "0/1")], 1, t0)
    assert [x["type"] for x in first] == ["Ready", "SLOMet"]  # the autoscaler's is kept
    same = c.merge(first, [c.Cond("Ready", "False", "ReplicasNotReady", "0/2")], 2,
                   t0 + timedelta(minutes=1))
    assert same[0]["lastTransitionTime"] == "2030-01-01T00:00:00Z"
    assert same[0]["observedGeneration"] == 2 and same[0]["message"] == "0/2"
    flipped = c.merge(same, [c.Cond("Ready", "True", "ReplicasReady", "")], 2,
                      t0 + timedelta(minutes=2))
    assert flipped[0]["lastTransitionTime"] == "2030-01-01T00:02:00Z"
    assert [t.type for t in c.transitions(same, [c.Cond("Ready", "True", "R", "")])] == ["Ready"]
    # A problem condition appearing as False is not news; appearing as True is.
    assert c.transitions([], [c.Cond("Degraded", "False", "AsExpected", "")]) == []
    assert len(c.transitions([], [c.Cond("Degraded", "True", "X", "")])) == 1
