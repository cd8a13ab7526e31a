"""The capacity plan of the whole cluster, and the placement of one ModelDeployment under it.
Pure: one `ClusterState` and the time in, decisions out.

`plan` decides, for every CapacityReservation at once (admission is a decision over all
reservations of a pool): admission, usage, each tenant namespace's GPU quota and the GPUs
committed per pool. `placement` places one ModelDeployment's replicas with what its reservation
entitles it to — or, without capacity management, plainly on whatever is free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from dedicap.api.models import ModelDeployment
from dedicap.decide import reservations as rv
from dedicap.decide.capacity_objects import RESERVED_PRIORITY
from dedicap.decide.cluster import ClusterState
from dedicap.decide.placement import Entitlement, Placement, PlacementRequest, place


@dataclass(frozen=True)
class CapacityPlan:
    views: Mapping[str, rv.ReservationView]
    admissions: Mapping[str, rv.Admission]
    usage: Mapping[str, rv.ReservationUsage]
    quotas: Mapping[str, rv.NamespaceQuota]
    committed: Mapping[str, int]  # pool -> GPUs of reservations in effect

    def entitlement(self, md: ModelDeployment) -> Entitlement:
        return rv.entitlement(md.namespace, f"{md.namespace}/{md.name}", md.spec.reservation,
                              self.views, self.admissions, self.usage)


def plan(state: ClusterState, now: datetime) -> CapacityPlan:
    views = {name: rv.ReservationView.of(r) for name, r in state.reservations.items()}
    seq = list(views.values())
    admissions = rv.admit(seq, state.pool_capacity(), now)
    usage = {name: rv.reservation_usage(v, state.pods) for name, v in views.items()}
    return CapacityPlan(
        views=views, admissions=admissions, usage=usage,
        quotas=rv.namespace_quotas(seq, admissions),
        committed={p: rv.committed_gpus(seq, admissions, p) for p in state.pools})


def placement(md: ModelDeployment, state: ClusterState, capacity: CapacityPlan | None,
              replicas: int | None = None) -> Placement:
    """Where `replicas` (default: the desired count) of the ModelDeployment go. With a capacity
    plan: reserved headroom first, then burst, reserved replicas entitled to preempt burst ones;
    without one (capacity management off): every pod is protected, nothing is reserved."""
    res = md.spec.resources
    request = PlacementRequest(md.spec.desired_replicas() if replicas is None else replicas,
                               res.gpus_per_replica, res.gpu_memory_gib,
                               tuple(md.spec.placement.pools))
    owner = f"{md.namespace}/{md.name}"
    if capacity is None:
        return place(request, state.pool_states(owner))
    return place(request, state.pool_states(owner, RESERVED_PRIORITY), capacity.entitlement(md))
