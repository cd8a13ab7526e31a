"""The capacity loop: GPUPool status, and (with capacity management) reservation admission and
status, tenant quotas and RoleBindings. Thin: read the view, call the planners, write what
differs.

One round computes the whole picture from the view's `ClusterState` (`decide.capacity.plan`,
pure) and writes:

- each GPUPool's status: GPU figures from its nodes and the pods bound to them, and Ready;
- each CapacityReservation's status: admitted or why not (with the GPUs left), used reserved
  GPUs, borrowed GPUs, headroom, conditions Admitted and Active;
- per tenant namespace a ResourceQuota on `requests.nvidia.com/gpu` and a RoleBinding of the
  chart's `dedicap-tenant-view` ClusterRole for the namespace's service accounts; those of
  namespaces that no reservation names any more are deleted. Only in the namespaces this
  operator serves (`--namespace`), where its RBAC (namespaced with `watchNamespaces`) lets it
  write.

The PriorityClasses and the tenant ClusterRoles are the Helm chart's (static, cluster-scoped):
the operator creates no cluster-scoped RBAC and no PriorityClass (it checks at start that the
classes exist, `missing_priority_classes`).

Every write is skipped when the cluster already holds it, so a quiet cluster costs no API
request. A round runs when something capacity depends on changed (reservations, pools, nodes,
GPU pods: `kick()`, coalesced to one round per `min_interval_s`) and at least every
`interval_s` (reservation windows open and close with time alone). Everything is derived from
observed state, so a restart converges.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dedicap.controller import status
from dedicap.controller.apply import holds
from dedicap.controller.events import EventRecorder
from dedicap.controller.kube import KINDS, Kube, KubeError
from dedicap.controller.loop import BackgroundLoop
from dedicap.controller.peering import PeeringGate, serves
from dedicap.controller.reconcile import CapacityPlanner
from dedicap.controller.status import tokens as st_tokens
from dedicap.controller.status.capacity import pool_status, reservation_status
from dedicap.controller.view import ClusterView
from dedicap.decide import capacity_objects as co
from dedicap.decide.capacity import CapacityPlan
from dedicap.decide.cluster import ClusterState
from dedicap.metrics.exporter import OperatorMetrics, ReservationFigures

log = logging.getLogger(__name__)


@dataclass
class Applier:
    """Server-side apply of objects the operator owns, only when they differ: from the view's
    copy where the view watches the kind, else from what this process last applied."""

    kube: Kube
    view: ClusterView
    _applied: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict,
                                                                   init=False)
    writes: int = field(default=0, init=False)

    def ensure(self, obj: Mapping[str, Any]) -> bool:
        meta = obj["metadata"]
        key = (obj["kind"], meta.get("namespace") or "", meta["name"])
        if obj["kind"] in self.view.informers:
            cached = self.view.capacity_object(obj["kind"], key[1], key[2])
            if cached is not None and holds(obj, cached):
                return False
        elif self._applied.get(key) == obj:
            return False
        written = self.kube.apply(obj)
        self.writes += 1
        self.view.observe_write(obj["kind"], written)
        self._applied[key] = dict(obj)
        return True


@dataclass
class CapacityRound:
    """What one round did (for tests and logs)."""

    plan: CapacityPlan | None
    state: ClusterState
    writes: int = 0
    quotas_deleted: list[str] = field(default_factory=list)


class CapacityLoop(BackgroundLoop):
    def __init__(self, kube: Kube, view: ClusterView, gate: PeeringGate, events: EventRecorder,
                 *, planner: CapacityPlanner | None, metrics: OperatorMetrics | None = None,
                 interval_s: float = 15.0,
                 min_interval_s: float = 1.0,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        super().__init__("dedicap-capacity", 0.25)
        self.kube = kube
        self.view = view
        self.gate = gate
        self.events = events
        self.planner = planner
        self.metrics = metrics
        self.period_s = interval_s
        self.min_interval_s = min_interval_s
        self.clock = clock
        self.applier = Applier(kube, view)
        self._kicked = threading.Event()
        self._last = -float("inf")

    def kick(self) -> None:
        """Something capacity depends on changed: run a round soon."""
        self._kicked.set()

    def tick(self) -> CapacityRound | None:
        now = time.monotonic()
        due = now - self._last >= self.period_s
        if not due and not (self._kicked.is_set() and now - self._last >= self.min_interval_s):
            return None
        if not (self.view.synced and self.gate.active("capacity")
                and self.gate.acts_for_cluster()):
            return None
        self._kicked.clear()
        self._last = now
        try:
            return self.run_round()
        except KubeError as err:
            log.warning("capacity round failed: %s", err)
            self._kicked.set()  # try again after min_interval_s
            return None

    def run_round(self) -> CapacityRound:
        state = self.view.state()
        plan = self.planner.plan(state) if self.planner is not None else None
        out = CapacityRound(plan, state)
        if plan is not None:
            self._tenant_objects(plan, state, out)
            self._reservations(plan, state)
        self._pools(plan, state)
        out.writes = self.applier.writes
        if self.metrics is not None:
            export(self.metrics, state, plan)
        return out

    # ----------------------------------------------------------------- the parts

    def _tenant_objects(self, plan: CapacityPlan, state: ClusterState,
                        out: CapacityRound) -> None:
        served = self.gate.namespaces
        existing = {ns: q for ns, q in plan.quotas.items()
                    if ns in state.namespaces and serves(served, ns)}
        for obj in co.tenant_objects({ns: (q.gpus, q.reservations)
                                      for ns, q in existing.items()}):
            self.applier.ensure(obj)
        # Quotas dedicap wrote in namespaces no reservation names any more.
        for quota in self.view.capacity_objects("ResourceQuota"):
            ns = quota["metadata"]["namespace"]
            if ns in plan.quotas or not serves(served, ns):
                continue
            for kind, name in (("ResourceQuota", co.QUOTA_NAME),
                               ("RoleBinding", co.TENANT_BINDING)):
                try:
                    self.kube.request("DELETE", KINDS[kind].path(ns, name))
                except KubeError as err:
                    if not err.not_found:
                        raise
            out.quotas_deleted.append(ns)

    def _reservations(self, plan: CapacityPlan, state: ClusterState) -> None:
        now = self.clock()
        for raw in self.view.reservations_raw():
            name = raw["metadata"]["name"]
            cr = state.reservations.get(name)
            if cr is None:
                log.warning("CapacityReservation %s cannot be read: %s", name,
                            state.invalid_reservations.get(name, "invalid"))
                continue
            fields, conds = reservation_status(cr, plan.admissions[name], plan.usage[name])
            fields["tokenCapacity"] = st_tokens.reservation_capacity(
                cr, plan.usage[name], {f"{m['metadata']['namespace']}/{m['metadata']['name']}": m
                                       for m in self.view.modeldeployments()})
            self._write_status("CapacityReservation", raw, fields, conds, now)

    def _pools(self, plan: CapacityPlan | None, state: ClusterState) -> None:
        now = self.clock()
        for raw in self.view.pools_raw():
            name = raw["metadata"]["name"]
            if raw["metadata"].get("deletionTimestamp"):
                continue
            pool = state.pools.get(name)
            if pool is None:
                log.warning("GPUPool %s cannot be read: %s", name,
                            state.invalid_pools.get(name, "invalid"))
                continue
            reserved = plan.committed.get(name, 0) if plan is not None else 0
            fields, cond = pool_status(pool, state.pool_figures(name), reserved)
            self._write_status("GPUPool", raw, fields, [cond], now)

    def _write_status(self, kind: str, raw: Mapping[str, Any], fields: Mapping[str, Any],
                      conds: list[Any], now: datetime) -> None:
        generation = int(raw["metadata"].get("generation", 0) or 0)
        upd = status.update(raw.get("status"), fields, conds, generation, now)
        if not upd.patch:
            return
        try:
            written = self.kube.patch_merge(kind, raw["metadata"]["name"],
                                            {"status": upd.patch}, subresource="status")
        except KubeError as err:
            if err.not_found:  # deleted meanwhile
                return
            raise
        self.applier.writes += 1
        self.view.observe_write(kind, written)
        for cond in upd.transitions:  # once written, as the reconcile does
            self.events.record(raw, status.event_type(cond), cond.reason,
                               f"{cond.type} is {cond.status}: {cond.message}")


def missing_priority_classes(kube: Kube) -> list[str]:
    """The PriorityClasses replicas name that the cluster lacks (the chart installs them)."""
    missing = []
    for name in (co.RESERVED_CLASS, co.BURST_CLASS):
        try:
            kube.request("GET", KINDS["PriorityClass"].path(name=name))
        except KubeError as err:
            if not err.not_found:
                raise
            missing.append(name)
    return missing


def reconcile(kube: Kube, now: datetime, *, namespaces: tuple[str, ...] = ()) -> CapacityRound:
    """One capacity round from a fresh read of the cluster, for tools and tests (the operator
    runs `CapacityLoop` over its shared view instead). Tenant objects are written in the
    namespaces `namespaces` (glob patterns; none: all) serves."""
    view = ClusterView(kube, namespaces=namespaces)
    view.load()
    gate = PeeringGate(kube, "one-shot", 0, "capacity", peering=False, namespaces=namespaces)
    loop = CapacityLoop(kube, view, gate, EventRecorder(kube, "one-shot", background=False),
                        planner=CapacityPlanner(clock=lambda: now), clock=lambda: now)
    return loop.run_round()


def export(metrics: OperatorMetrics, state: ClusterState, plan: CapacityPlan | None) -> None:
    """Pool and reservation figures of one capacity round, as metrics."""
    figures = {}
    for name in state.pools:
        f = state.pool_figures(name)
        figures[name] = {"total": f.total, "allocatable": f.allocatable,
                         "allocated": f.allocated,
                         "reserved": plan.committed.get(name, 0) if plan is not None else 0,
                         "free": f.free}
    metrics.set_gpupools(figures)
    if plan is None:
        return
    reservations = {}
    for name, view in plan.views.items():
        a, u = plan.admissions[name], plan.usage[name]
        reservations[name] = ReservationFigures(
            pool=view.pool, admitted=a.admitted, committed=view.gpus, used=u.reserved_gpus,
            burst=u.burst_gpus, headroom=max(view.gpus - u.reserved_gpus, 0) if a.active else 0)
    metrics.set_reservations(reservations)
