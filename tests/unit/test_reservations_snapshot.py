"""Capacity's pure half: pods and nodes read back, the plan, placement, reservation status."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from dedicap.api.models import CapacityReservation, GPUPool, ModelDeployment
from dedicap.controller.status.capacity import reservation_status
from dedicap.decide import placement as pl
from dedicap.decide import reservations as rv
from dedicap.decide.capacity import placement as placement_for
from dedicap.decide.capacity import plan
from dedicap.decide.cluster import ClusterState, PodInfo, PoolFigures, parse_node, parse_pod

NOW = datetime(2025, 3, 1, tzinfo=UTC)


def _node(name: str, pool: str, gpus: int, zone: str = "zone-a", ready: bool = True
          ) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"dedicap.dev/pool": pool,
                                                  "topology.kubernetes.io/zone": zone}},
            "status": {"capacity": {"nvidia.com/gpu": str(gpus)},
                       "allocatable": {"nvidia.com/gpu": str(gpus)},
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def _pod(ns: str, name: str, gpus: int, *, node: str | None = None, nominated: str | None = None,
         md: str | None = None, reservation: str | None = None, capacity: str | None = None,
         priority: int = 0, phase: str = "Running") -> dict[str, Any]:
    labels = {k: v for k, v in (("dedicap.dev/modeldeployment", md),
                                (rv.LABEL_RESERVATION, reservation),
                                (rv.LABEL_CAPACITY, capacity)) if v}
    spec: dict[str, Any] = {"priority": priority, "containers": [
        {"name": "c", "resources": {"requests": {"nvidia.com/gpu": str(gpus)}}}]}
    if node:
        spec["nodeName"] = node
    status: dict[str, Any] = {"phase": phase}
    if nominated:
        status["nominatedNodeName"] = nominated
    return {"metadata": {"namespace": ns, "name": name, "labels": labels}, "spec": spec,
            "status": status}


def _pool(name: str, memory: float, price: float) -> GPUPool:
    return GPUPool.model_validate({"metadata": {"name": name}, "spec": {
        "nodeSelector": {"dedicap.dev/pool": name},
        "gpu": {"product": name, "memoryGiB": memory}, "pricePerGPUHour": price}})


def _reservation(name: str, ns: str, gpus: int, burst: int = 0, minute: int = 0,
                 status: dict[str, Any] | None = None) -> CapacityReservation:
    raw: dict[str, Any] = {
        "metadata": {"name": name, "generation": 1,
                     "creationTimestamp": f"2025-01-01T00:{minute:02d}:00Z"},
        "spec": {"namespaces": [ns], "pool": "h100", "gpus": gpus,
                 **({"burst": {"maxGPUs": burst}} if burst else {})}}
    if status:
        raw["status"] = status
    return CapacityReservation.model_validate(raw)


def _md(ns: str, name: str, replicas: int, reservation: str | None) -> ModelDeployment:
    return ModelDeployment.model_validate({"metadata": {"namespace": ns, "name": name}, "spec": {
        "model": {"name": "m", "repository": "s3://b/m"},
        "resources": {"gpusPerReplica": 1, "gpuMemoryGiB": 20},
        "placement": {"pools": ["h100", "a10g"]}, "replicas": replicas,
        **({"reservation": reservation} if reservation else {})}})


def _holding(raw: dict[str, Any]) -> PodInfo | None:
    p = parse_pod(raw)
    return p if p is not None and p.holds_gpus else None


def test_pods_count_when_bound_or_nominated_and_carry_their_capacity() -> None:
    p = _holding(_pod("acme", "a", 2, node="n0", md="chat", reservation="r",
                      capacity="reserved", priority=1_000_000))
    assert p is not None
    assert (p.namespace, p.name, p.node, p.gpus, p.priority, p.owner, p.reservation,
            p.capacity, p.bound) == ("acme", "a", "n0", 2, 1_000_000, "acme/chat", "r",
                                     "reserved", True)
    nominated = _holding(_pod("acme", "b", 1, nominated="n1", phase="Pending"))
    assert nominated is not None and nominated.node == "n1" and not nominated.bound
    assert _holding(_pod("acme", "c", 1, phase="Pending")) is None  # not scheduled
    assert _holding(_pod("acme", "d", 1, node="n0", phase="Succeeded")) is None
    assert _holding(_pod("acme", "e", 0, node="n0")) is None
    # Neither GPUs nor a ModelDeployment: not kept at all.
    assert parse_pod(_pod("acme", "f", 0, node="n0")) is None


def _snapshot(reservations: list[CapacityReservation], pods: list[dict[str, Any]]
              ) -> ClusterState:
    nodes = ([_node(f"h100-{i}", "h100", 8, f"zone-{'ab'[i % 2]}") for i in range(4)]
             + [_node(f"a10g-{i}", "a10g", 1) for i in range(6)]
             + [_node("h100-dead", "h100", 8, ready=False)])
    parsed = [p for p in (_holding(x) for x in pods) if p is not None]
    return ClusterState({"h100": _pool("h100", 80, 2.5), "a10g": _pool("a10g", 24, 0.75)},
                        tuple(parse_node(n) for n in nodes), tuple(parsed),
                        {r.name: r for r in reservations}, namespaces=frozenset({"acme"}))


def test_plan_admits_against_node_capacity_and_reports_usage() -> None:
    snap = _snapshot(
        [_reservation("acme", "acme", 16, burst=8, minute=0),
         _reservation("beta", "beta", 0, burst=16, minute=1),
         _reservation("greedy", "gamma", 30, minute=2)],
        [_pod("acme", "a", 4, node="h100-0", md="chat", reservation="acme", capacity="reserved",
              priority=1_000_000),
         _pod("acme", "b", 1, node="a10g-0", md="chat", reservation="acme", capacity="burst",
              priority=1_000),
         _pod("beta", "c", 8, node="h100-1", md="x", reservation="beta", capacity="burst",
              priority=1_000)])
    assert snap.pool_capacity() == {"h100": 40, "a10g": 6}  # the NotReady node still counts
    cap = plan(snap, NOW)
    assert cap.admissions["acme"].admitted and cap.admissions["beta"].admitted
    assert not cap.admissions["greedy"].admitted
    assert "24 GPUs left, 30 asked" in cap.admissions["greedy"].message
    assert (cap.usage["acme"].reserved_gpus, cap.usage["acme"].burst_gpus) == (4, 1)
    assert cap.quotas["acme"].gpus == 24 and cap.quotas["gamma"].gpus == 0
    assert cap.committed == {"h100": 16, "a10g": 0}
    states = snap.pool_states("acme/chat", 1_000_000)
    # acme/chat's own pod is left out; beta's burst pod is reclaimable by reserved replicas.
    assert states["h100"].free == 32 - 8 and states["h100"].reclaimable == 32
    assert states["h100"].allocatable == 32  # the NotReady node offers nothing
    assert snap.pool_figures("h100") == PoolFigures(
        nodes=5, ready_nodes=4, total=40, allocatable=32, allocated=12, free=20)


def test_placement_for_a_deployment_uses_its_reservation() -> None:
    beta_fills = [_pod("beta", f"c{i}", 8, node=f"h100-{i}", md="x", reservation="beta",
                       capacity="burst", priority=1_000) for i in range(4)]
    snap = _snapshot([_reservation("acme", "acme", 16, burst=8)], beta_fills)
    cap = plan(snap, NOW)
    p = placement_for(_md("acme", "chat", 20, "acme"), snap, cap)
    # 16 reserved (preempting beta's burst replicas), burst only on free GPUs: none on h100.
    assert (p.on("h100").reserved, p.on("h100").burst) == (16, 0)
    assert p.on("a10g").burst == 0  # burst pools default to the reservation's own pool
    assert p.reason == pl.INSUFFICIENT_CAPACITY and p.unplaced == 4
    beta = placement_for(_md("beta", "x", 4, None), snap, cap)
    assert beta.on("h100").replicas == 4 and not beta.constrained  # its own pods re-placed


def test_reservation_status_says_admitted_used_headroom() -> None:
    cr = _reservation("acme", "acme", 16, burst=8)
    usage = rv.ReservationUsage(6, 2, {})
    a = rv.Admission("acme", "h100", True, True, rv.ADMITTED, "16 of 32 committed", 16)
    s, conds = reservation_status(cr, a, usage)
    assert (s["admitted"], s["usedGPUs"], s["burstGPUs"], s["headroomGPUs"]) == (True, 6, 2, 10)
    assert {x.type: x.status for x in conds} == {"Admitted": "True", "Active": "True"}
    refused = rv.Admission("acme", "h100", False, False, rv.OVERCOMMITTED, "4 GPUs left", 4)
    s2, conds2 = reservation_status(_reservation("acme", "acme", 16, status=s), refused,
                                    rv.ReservationUsage())
    assert not s2["admitted"] and s2["headroomGPUs"] == 0 and s2["message"] == "4 GPUs left"
    admitted = next(x for x in conds2 if x.type == "Admitted")
    assert admitted.status == "False" and admitted.reason == rv.OVERCOMMITTED
