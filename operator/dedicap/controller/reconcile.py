"""The reconcile of one ModelDeployment: observe -> plan -> apply -> report.

Driven only by what it observes (the object, its children, nodes, pods — all from the shared
view, no API read), never by what it did before, so it can be interrupted at any line and run
again: the next run converges to the same children. It writes only what differs: an unchanged
ModelDeployment costs no API request. When it runs is `dispatch.py`'s business.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from dedicap.api import conditions as c
from dedicap.api.models import ModelDeployment
from dedicap.controller import status
from dedicap.controller.accounting import Accountant
from dedicap.controller.apply import Action, apply_children, merge_created, owned_by
from dedicap.controller.events import EventRecorder
from dedicap.controller.kube import Kube, KubeError
from dedicap.controller.status.autoscaling import keep_autoscaler_conditions
from dedicap.controller.status.replicas import Problem, compute, no_eligible_pool
from dedicap.controller.view import ClusterView
from dedicap.decide import capacity as cap
from dedicap.decide.cluster import ClusterState
from dedicap.decide.placement import Placement
from dedicap.decide.render import RenderOptions, render
from dedicap.metrics.exporter import OperatorMetrics, PoolUsage

log = logging.getLogger(__name__)


def validation_summary(err: ValidationError, prefix: str = "") -> str:
    """Pydantic errors as `field.path: what is wrong` (what a user has to change)."""
    parts = []
    for e in err.errors()[:5]:
        loc = ".".join(str(p) for p in e["loc"])
        parts.append(f"{prefix}{loc}: {e['msg']}")
    return "; ".join(parts)


def _placement_summary(placement: Placement) -> str:
    parts = [f"{a.replicas} on {a.pool}" for a in placement.assignments if a.replicas]
    return ", ".join(parts) or "no replicas"


@dataclass
class CapacityPlanner:
    """The capacity plan of the current cluster state, computed once per state and second (the
    reconcile of every ModelDeployment, the autoscaler's replica limits and the capacity loop
    share it)."""

    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    _cached: tuple[int, int, cap.CapacityPlan] | None = field(default=None, init=False)

    def plan(self, state: ClusterState) -> cap.CapacityPlan:
        now = self.clock()
        key = (id(state), int(now.timestamp()))
        cached = self._cached
        if cached is not None and cached[:2] == key:
            return cached[2]
        result = cap.plan(state, now)
        if cached is not None and cached[2] == result:
            # the same plan a second later: the same object, so that what was computed from
            # it (the autoscaler's replica limits) is known to still hold
            result = cached[2]
        self._cached = (key[0], key[1], result)
        return result


@dataclass
class Outcome:
    """What one reconcile did (for tests and logs)."""

    writes: int = 0
    problem: str = ""


@dataclass
class Reconciler:
    kube: Kube
    view: ClusterView
    events: EventRecorder
    options: RenderOptions = field(default_factory=RenderOptions)
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    # Capacity management (reservation-aware placement, GPU accounting); None: plain placement.
    capacity: CapacityPlanner | None = None
    accountant: Accountant = field(default_factory=Accountant)
    metrics: OperatorMetrics | None = None
    _locks: dict[tuple[str, str], threading.Lock] = field(default_factory=dict, init=False)
    _locks_guard: threading.Lock = field(default_factory=threading.Lock, init=False)
    _placements: tuple[Any, Any, dict[tuple[Any, ...], Placement]] = field(
        default_factory=lambda: (None, None, {}), init=False)
    _placements_guard: threading.Lock = field(default_factory=threading.Lock, init=False)

    def lock(self, namespace: str, name: str) -> threading.Lock:
        """One writer of a ModelDeployment's status at a time: the reconcile and the
        autoscaler each read the view, compute and write; the lock keeps one from writing
        conditions computed from a status the other is replacing."""
        with self._locks_guard:
            return self._locks.setdefault((namespace, name), threading.Lock())

    def forget(self, namespace: str, name: str) -> None:
        """A deleted ModelDeployment: its integral and every series of it."""
        with self._locks_guard:
            self._locks.pop((namespace, name), None)
        self.accountant.forget(namespace, name)
        if self.metrics is not None:
            self.metrics.forget(namespace, name)

    def plan(self, state: ClusterState) -> cap.CapacityPlan | None:
        """The capacity plan placement follows (None: capacity management is off); the same
        object for as long as its content holds."""
        return self.capacity.plan(state) if self.capacity is not None else None

    def placement(self, md: ModelDeployment, state: ClusterState,
                  replicas: int | None = None) -> Placement:
        """Where the replicas go (`replicas`: how many to place, default the desired count).
        Placing one ModelDeployment walks every node of its pools: at a thousand of them,
        resynced and evaluated with nothing changing, that was most of an idle operator's
        work. The cluster state and the plan are rebuilt only when something they hold
        changes, so while both are the same objects, the same spec has the same placement."""
        plan = self.plan(state)
        key = (md.namespace, md.name, md.uid, md.generation, replicas)
        with self._placements_guard:
            memo = self._placements
            if memo[0] is state and memo[1] is plan and key in memo[2]:
                return memo[2][key]
        placed = cap.placement(md, state, plan, replicas)
        with self._placements_guard:
            if not (self._placements[0] is state and self._placements[1] is plan):
                # one cluster state at a time is kept (and with it, alive)
                self._placements = (state, plan, {})
            self._placements[2][key] = placed
        return placed

    def reconcile(self, namespace: str, name: str) -> Outcome:
        started = time.monotonic()
        try:
            with self.lock(namespace, name):
                return self._reconcile(namespace, name)
        finally:
            if self.metrics is not None:
                self.metrics.observe_reconcile(time.monotonic() - started)

    def _reconcile(self, namespace: str, name: str) -> Outcome:
        body = self.view.modeldeployment(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return Outcome()  # the garbage collector removes the children
        try:
            md = ModelDeployment.model_validate(body)
        except ValidationError as err:
            return self._invalid(body, err)

        state = self.view.state()
        placement = self.placement(md, state)
        pool_specs = {n: p.spec for n, p in state.pools.items()}
        options = replace(self.options, service_monitor=self.view.has_service_monitors(),
                          priority_classes=self.capacity is not None)
        existing = {k: o for k, o in self.view.children(namespace, name).items()
                    if owned_by(o, md.uid)}
        actions: list[Action] = []
        waiting: list[str] = []
        problem: Problem | None = None
        writes = 0
        deployments = [o for k, o in existing.items() if k.kind == "Deployment"]
        if not placement.eligible:
            # Leave what runs alone: a typo in the pool list must not take the model down.
            problem = no_eligible_pool(placement)
        else:
            try:
                result = apply_children(self.kube, render(md, placement, pool_specs, options),
                                        existing, placement.wanted, self.view.observe_write)
            except KubeError as err:
                if err.unreachable:
                    raise  # retried with backoff; nothing to report that is true
                if err.namespace_terminating:
                    # The namespace goes, and the ModelDeployment with it: its children are
                    # being removed on purpose, not to be put back or reported as a failure.
                    return Outcome()
                problem = Problem("ApplyFailed", f"the API server refused a child: {err}")
            else:
                actions, waiting = merge_created(result.actions), result.waiting_to_delete
                deployments = result.deployments()
                writes += result.writes
        report = compute(md, placement, problem, deployments,
                         self.view.pods_of(namespace, name), pool_specs, waiting)
        fresh_cost = (self._account(md, report.fields, state) if self.capacity is not None
                      else None)

        for action in actions:
            self.events.record(body, action.type, action.reason, action.message)
        previous = body.get("status") or {}
        old_placement = {p.get("pool"): p.get("replicas") for p in previous.get("placement", [])}
        new_placement = {p["pool"]: p["replicas"] for p in report.fields["placement"]}
        if problem is None and old_placement != new_placement:
            self.events.record(body, "Normal", "Placed",
                               f"placement: {_placement_summary(placement)} "
                               f"({placement.wanted} wanted)")
        # Problems only the autoscaler sees (model errors, SLO breached at the replica limit)
        # are not overwritten by "nothing wrong here".
        conds = keep_autoscaler_conditions(previous.get("conditions") or [], report.conditions,
                                           md.spec.autoscaling is not None)
        writes += self._write_status(body, report.fields, conds, md.generation, fresh_cost)
        return Outcome(writes, problem.reason if problem else "")

    def _invalid(self, body: Mapping[str, Any], err: ValidationError) -> Outcome:
        invalid = Problem("InvalidSpec", "fix the spec: " + validation_summary(err))
        conds = [c.Cond(c.READY, "False", invalid.reason, invalid.message),
                 c.Cond(c.DEGRADED, "True", invalid.reason, invalid.message)]
        generation = int(body["metadata"].get("generation", 0))
        writes = self._write_status(body, {"observedGeneration": generation}, conds, generation)
        return Outcome(writes, invalid.reason)

    def _account(self, md: ModelDeployment, fields: dict[str, Any],
                 state: ClusterState) -> dict[str, Any]:
        """Add GPU-hours to the status fields about to be written (`cost`, from the per-pool
        `placement` computed: the record, which may be an older pair that still holds) and
        export the per-pool usage. Returns `cost` up to now, for a status write that happens
        anyway."""
        gpus_by_pool = {p["pool"]: int(p.get("gpus", 0)) for p in fields.get("placement", [])}
        previous = (md.status.cost.model_dump(by_alias=True, mode="json", exclude_none=True)
                    if md.status is not None and md.status.cost is not None else None)
        # status.placement is written in the same patch as status.cost: its per-pool GPUs are
        # the counts held at cost.accountedAt, which a restarted operator charges per pool.
        previous_by_pool = ({p.pool: p.gpus for p in md.status.placement}
                            if md.status is not None and md.status.placement else None)
        prices = {name: pool.spec for name, pool in state.pools.items()}
        report = self.accountant.observe(md.namespace, md.name, gpus_by_pool, prices,
                                         self.clock(), previous, previous_by_pool)
        fields["cost"] = {**fields.get("cost", {}), **report.status()}
        fresh = {**fields["cost"], **report.status(fresh=True)}
        if self.metrics is not None:
            replicas = {p["pool"]: int(p.get("currentReplicas", 0))
                        for p in fields.get("placement", [])}
            usage = {}
            for pool, gpus in gpus_by_pool.items():
                price = prices[pool].price_per_gpu_hour if pool in prices else 0.0
                hours = report.by_pool.get(pool)
                usage[pool] = PoolUsage(replicas.get(pool, 0), gpus,
                                        hours.gpu_hours if hours else 0.0, gpus * price)
            self.metrics.set_pools(md.namespace, md.name, usage)
        return fresh

    def _write_status(self, body: Mapping[str, Any], fields: dict[str, Any],
                      conds: list[c.Cond], generation: int,
                      fresh_cost: dict[str, Any] | None = None) -> int:
        upd = status.update(body.get("status"), fields, conds, generation, self.clock())
        if not upd.patch:
            return 0
        if fresh_cost is not None and fields.get("cost") != fresh_cost:
            # Written anyway: the cost record rides along, up to now.
            fields = {**fields, "cost": fresh_cost}
            upd = status.update(body.get("status"), fields, conds, generation, self.clock())
        meta = body["metadata"]
        try:
            written = self.kube.patch_merge("ModelDeployment", meta["name"],
                                            {"status": upd.patch}, namespace=meta["namespace"],
                                            subresource="status")
        except KubeError as err:
            if err.not_found:  # deleted since the view showed it: nothing to report
                return 0
            raise
        self.view.observe_write("ModelDeployment", written)
        # Explained once written: a crash before the write must not leave an Event that says
        # a condition changed when the status never did (the next process decides afresh).
        for cond in upd.transitions:
            self.events.record(body, status.event_type(cond), cond.reason,
                               f"{cond.type} is {cond.status}: {cond.message}")
        return 1
