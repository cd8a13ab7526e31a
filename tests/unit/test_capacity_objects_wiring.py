"""Reservation-aware placement as the operator uses it: priority classes per assignment, the
reserved/burst split into two Deployments, status per pool, and the capacity metrics."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest

from dedicap.api.models import GPUPoolSpec, ModelDeployment
from dedicap.controller.status import compute
from dedicap.decide import reservations as rv
from dedicap.decide.placement import NodeCapacity, PoolView, place_reserved
from dedicap.decide.render import render
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


def _views() -> dict[str, PoolView]:
    return {"h100": PoolView("h100", SPEC, tuple(NodeCapacity(f"h{i}", 8) for i in range(4))),
            "a10g": PoolView("a10g", A10G, tuple(NodeCapacity(f"a{i}", 1) for i in range(2)))}


def _states(full: int = 0) -> dict[str, rv.PoolState]:
    """h100 with its first `full` nodes taken by pods a reserved replica may not preempt."""
    return {"h100": rv.PoolState("h100", 80, tuple(
                rv.NodeState(f"h{i}", "z", 8, *((8, 8) if i < full else (0, 0)))
                for i in range(4))),
            "a10g": rv.PoolState("a10g", 24, tuple(rv.NodeState(f"a{i}", "z", 1)
                                                    for i in range(2)))}


ENT = rv.Entitlement("acme-h100", "h100", 16, 8, ("h100",), 16)


def test_reserved_and_burst_replicas_on_one_pool_are_two_deployments() -> None:
    md = _md(3)
    placement = place_reserved(md.spec, 3, _views(), _states(), ENT)
    assert [(a.pool, a.replicas, a.priority_class) for a in placement.assignments] == [
        ("h100", 2, "dedicap-reserved"), ("h100", 1, "dedicap-burst")]
    deployments = [o for o in render(md, placement, {"h100": SPEC, "a10g": A10G})
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
    placement = place_reserved(md.spec, 2, _views(), _states(), rv.Entitlement())
    assert [(a.pool, a.replicas, a.priority_class) for a in placement.assignments] == [
        ("h100", 2, "dedicap-burst")]
    names = [o["metadata"]["name"] for o in render(md, placement, {"h100": SPEC, "a10g": A10G})
             if o["kind"] == "Deployment"]
    assert names == ["chat-h100"]


def test_capacity_constrained_carries_the_reason_and_the_numbers() -> None:
    md = _md(4)
    placement = place_reserved(md.spec, 4, _views(), _states(full=4),
                               rv.Entitlement("acme-h100", "h100", 8, 0, ("h100",), 8))
    # The pool is full of protected pods: only reserved headroom could reclaim, and none is free.
    assert placement.unplaced == 4 and placement.constraint_reason == rv.INSUFFICIENT_CAPACITY
    report = compute(md, placement, None, [], [], {"h100": SPEC, "a10g": A10G})
    cond = next(c for c in report.conditions if c.type == "CapacityConstrained")
    assert cond.status == "True" and cond.reason == rv.INSUFFICIENT_CAPACITY
    assert "wanted 4 replicas x 8 GPU = 32 GPUs, placed 0" in cond.message
    assert "a10g: no node has 8 allocatable GPUs" in cond.message
    # The reserved Deployment stays (at zero) rather than being deleted and re-created.
    assert [(a.pool, a.replicas) for a in placement.assignments] == [("h100", 0)]


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
