"""The informer's store: what it keeps of the operator's own writes, and when what was derived
from it (the cluster state, the plan, the autoscaler's replica limits) must be rebuilt. Only the
store is exercised: nothing here talks to an API server."""

from __future__ import annotations

from typing import Any

from dedicap.controller.informer import Informer
from dedicap.controller.kube import KINDS
from dedicap.decide.cluster import parse_node


def node(version: int, *, gpus: int = 8, heartbeat: str = "t0") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "h100-0", "resourceVersion": str(version),
                         "labels": {"dedicap.dev/pool": "h100"}},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus)},
                       "capacity": {"nvidia.com/gpu": str(gpus)},
                       "conditions": [{"type": "Ready", "status": "True",
                                       "lastHeartbeatTime": heartbeat}]}}


def test_generation_moves_only_when_the_kept_record_changes() -> None:
    nodes: Informer[Any] = Informer(kube=None, kind=KINDS["Node"], parse=parse_node)  # type: ignore[arg-type]
    nodes.observe_write(node(1))
    first = nodes.generation
    assert first > 0
    # a heartbeat: a new resourceVersion, the same NodeInfo
    nodes.observe_write(node(2, heartbeat="t1"))
    assert nodes.generation == first
    # an older answer is ignored; a changed allocatable is a change
    nodes.observe_write(node(1, gpus=4))
    assert nodes.generation == first and nodes.values()[0].allocatable_gpus == 8
    nodes.observe_write(node(3, gpus=4))
    assert nodes.generation > first and nodes.values()[0].allocatable_gpus == 4
