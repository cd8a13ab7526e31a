"""Reservation-aware placement as the operator uses it: priority classes per assignment, the
reserved/burst split into two Deployments, status per pool, and the capacity metrics."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest

from dedicap.api.models import GPUPoolSpec, ModelDeployment
from dedicap.controller.status.replicas import compute
from dedicap.decide import placement as pl
from dedicap.decide import reservations as rv
from dedicap.decide.placement import Placement, PlacementRequest
from dedicap.decide.render import RenderOptions, render
from dedicap.metrics.exporter import OperatorMetrics, ReservationFigures

SPEC = GPUPoolSpec.model_validate({
    "nodeSelector": {"dedicap.dev/pool": "h100"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "gpu": {"product": "H100", "memoryGiB": 80}})
A10G = GPUPoolSpec.model_validate({"nodeSelector": {"dedicap.dev/pool": "a10g"},
                                   "gpu": {"product": "A10G", "memoryGiB": 24}})


def _md(replicas: int, reservation: str | None = "acme-h100") -> ModelDeployment:
    spec: dict[str, Any] = {"model": {"name": "m", "repository": "s3://b/m"},
                            "resources": {"gpusPerReplica": 8, "gpuMemoryGiB": 20},
                            "placement": {"pools": ["h100", "a10g"]}, "replicas": replicas}
    if reservation:
        spec["reservation"] = reservation
    return ModelDeployment.model_validate({"metadata": {
        "name": "chat", "namespace": "acme", "uid": "u-1", "generation": 1}, "spec": spec})


def _states(full: int = 0) -> dict[str, pl.PoolState]:
    """h100 with its first `full` nodes taken by pods a reserved replica may not preempt."""
    return {"h100": pl.PoolState("h100", 80, tuple(
                pl.NodeState(f"h{i}", "z", 8, *((8, 8) if i < full else (0, 0)))
                for i in range(4))),
            "a10g": pl.PoolState("a10g", 24, tuple(pl.NodeState(f"a{i}", "z", 1)
                                                    for i in range(2)))}


def place_reserved(md: ModelDeployment, states: dict[str, pl.PoolState],
                   ent: pl.Entitlement) -> Placement:
    res = md.spec.resources
    return pl.place(PlacementRequest(md.spec.desired_replicas(), res.gpus_per_replica,
                                     res.gpu_memory_gib, tuple(md.spec.placement.pools)),
                    states, ent)


def plans(placement: Placement) -> list[tuple[str, int, str | None]]:
    return [(d.pool, d.replicas, d.priority_class) for d in placement.deployments()]


CAPACITY = RenderOptions(priority_classes=True)
ENT = pl.Entitlement("acme-h100", "h100", 16, 8, ("h100",), 16)


def test_reserved_and_burst_replicas_on_one_pool_are_two_deployments() -> None:
    md = _md(3)
    placement = place_reserved(md, _states(), ENT)
    assert plans(placement) == [
        ("h100", 2, "dedicap-reserved"), ("h100", 1, "dedicap-burst")]
    deployments = [o for o in render(md, placement, {"h100": SPEC, "a10g": A10G}, CAPACITY)
                   if o["kind"] == "Deployment"]
    assert [d["metadata"]["name"] for d in deployments] == ["chat-h100", "chat-h100-burst"]
    reserved, burst = deployments
    assert reserved["spec"]["template"]["spec"]["priorityClassName"] == "dedicap-reserved"
    assert burst["spec"]["template"]["spec"]["priorityClassName"] == "dedicap-burst"
    assert burst["spec"]["selector"]["matchLabels"][rv.LABEL_CAPACITY] == "burst"
    labels = burst["spec"]["template"]["metadata"]["labels"]
    assert labels[rv.LABEL_CAPACITY] == "burst" and labels[rv.LABEL_RESERVATION] == "acme-h100"
    assert reserved["spec"]["template"]["metadata"]["labels"][rv.LABEL_CAPACITY] == "reserved"

    # Status: one placement entry per pool, counting both Deployments.
    for d, ready in ((reserved, 2), (burst, 1)):
        d["status"] = {"replicas": ready, "readyReplicas": ready, "updatedReplicas": ready,
                       "availableReplicas": ready, "observedGeneration": 1}
        d["metadata"]["generation"] = 1
    report = compute(md, placement, None, deployments, [], {"h100": SPEC, "a10g": A10G})
    assert report.fields["placement"] == [{"pool": "h100", "replicas": 3, "currentReplicas": 3,
                                           "readyReplicas": 3, "gpus": 24}]


def test_without_a_reservation_every_replica_is_burst_under_the_plain_name() -> None:
    md = _md(2, reservation=None)
    placement = place_reserved(md, _states(), pl.Entitlement())
    assert plans(placement) == [("h100", 2, "dedicap-burst")]
    names = [o["metadata"]["name"] for o in render(md, placement, {"h100": SPEC, "a10g": A10G},
                                                   CAPACITY) if o["kind"] == "Deployment"]
    assert names == ["chat-h100"]


def test_capacity_constrained_carries_the_reason_and_the_numbers() -> None:
    md = _md(4)
    placement = place_reserved(md, _states(full=4),
                               pl.Entitlement("acme-h100", "h100", 8, 0, ("h100",), 8))
    # The pool is full of protected pods: only reserved headroom could reclaim, and none is free.
    assert placement.unplaced == 4 and placement.reason == pl.INSUFFICIENT_CAPACITY
    report = compute(md, placement, None, [], [], {"h100": SPEC, "a10g": A10G})
    cond = next(c for c in report.conditions if c.type == "CapacityConstrained")
    assert cond.status == "True" and cond.reason == pl.INSUFFICIENT_CAPACITY
    assert "wanted 4 replicas x 8 GPU = 32 GPUs, placed 0" in cond.message
    assert "a10g: no node has 8 allocatable GPUs" in cond.message
    # The reserved Deployment stays (at zero) rather than being deleted and re-created.
    assert plans(placement) == [("h100", 0, "dedicap-reserved")]


def test_capacity_metrics_replace_their_series() -> None:
    m = OperatorMetrics()
    m.set_gpupools({"h100": {"total": 32, "allocatable": 32, "allocated": 24, "reserved": 16,
                             "free": 8}})
    m.set_reservations({"r1": ReservationFigures("h100", True, 16, 10, 4, 6),
                        "r2": ReservationFigures("h100", False, 40, 0, 0, 0)})
    text = generate_latest(m.registry).decode()
    assert 'dedicap_gpupool_gpus{pool="h100",state="free"} 8.0' in text
    assert 'dedicap_reservation_gpus{pool="h100",reservation="r1",state="headroom"} 6.0' in text
    assert 'dedicap_reservation_admitted{pool="h100",reservation="r2"} 0.0' in text
    m.set_gpupools({})
    m.set_reservations({"r1": ReservationFigures("h100", True, 16, 16, 0, 0)})
    text = generate_latest(m.registry).decode()
    assert "dedicap_gpupool_gpus{" not in text and 'reservation="r2"' not in text
    assert 'dedicap_reservation_gpus{pool="h100",reservation="r1",state="used"} 16.0' in text
