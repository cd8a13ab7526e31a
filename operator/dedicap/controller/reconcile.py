"""The reconcile loop of one object: observe -> plan -> apply -> report.

Driven only by what it observes (the object, its children, nodes, pods), never by what it did
before, so it can be interrupted at any line and run again: the next run converges to the
same children. kopf only decides *when* it runs (handlers.py).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import ValidationError

from dedicap.api.models import GPUPool, ModelDeployment
from dedicap.controller import conditions as c
from dedicap.controller.apply import CHILD_KINDS, Action, apply_children, list_children
from dedicap.controller.autoscale_status import keep_autoscaler_conditions
from dedicap.controller.capacity import CapacityPlanner
from dedicap.controller.kube import Kube, KubeError
from dedicap.controller.observe import ClusterObserver, pool_status, pool_views
from dedicap.controller.status import Problem, compute, no_eligible_pool
from dedicap.decide.placement import Placement, place
from dedicap.decide.render import RenderOptions, render, selector_string
from dedicap.metrics.exporter import OperatorMetrics

log = logging.getLogger(__name__)


class Recorder(Protocol):
    """Posts a Kubernetes Event about the object being reconciled."""

    def __call__(self, type: str, reason: str, message: str) -> None: ...


def validation_summary(err: ValidationError, prefix: str = "") -> str:
    """Pydantic errors as `field.path: what is wrong` (what a user has to change)."""
    parts = []
    for e in err.errors()[:5]:
        loc = ".".join(str(p) for p in e["loc"])
        parts.append(f"{prefix}{loc}: {e['msg']}")
    return "; ".join(parts)


def _warning(cond: c.Cond) -> bool:
    if cond.type in (c.READY, c.METRICS_AVAILABLE, c.SLO_MET):
        return cond.status == "False"
    if cond.type in (c.DEGRADED, c.CAPACITY_CONSTRAINED):
        return cond.status == "True"
    return cond.reason == "ProgressDeadlineExceeded"


def _placement_summary(placement: Placement) -> str:
    parts = [f"{a.replicas} on {a.pool}" for a in placement.assignments if a.replicas]
    return ", ".join(parts) or "no replicas"


@dataclass
class Reconciler:
    kube: Kube
    observer: ClusterObserver
    options: RenderOptions = field(default_factory=RenderOptions)
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    # How long the answer to "does the cluster have ServiceMonitors?" is trusted.
    crd_check_seconds: float = 60.0
    # Reservation-aware placement and GPU accounting; without it, plain placement.
    capacity: CapacityPlanner | None = None
    # Where reconcile latency is observed (the operator's metrics, once they exist).
    metrics: OperatorMetrics | None = None
    _locks: dict[tuple[str, str], threading.Lock] = field(default_factory=dict, init=False)
    _locks_guard: threading.Lock = field(default_factory=threading.Lock, init=False)
    _sm: tuple[float, bool] | None = field(default=None, init=False)

    # ---------------------------------------------------------------- helpers

    def lock(self, namespace: str, name: str) -> threading.Lock:
        """One reconcile per object at a time: the kopf handlers of the object and of its
        children run in different threads."""
        with self._locks_guard:
            return self._locks.setdefault((namespace, name), threading.Lock())

    def forget(self, namespace: str, name: str) -> None:
        with self._locks_guard:
            self._locks.pop((namespace, name), None)
        if self.capacity is not None:
            self.capacity.forget(namespace, name)

    def _options(self) -> RenderOptions:
        now = time.monotonic()
        if self._sm is None or now - self._sm[0] > self.crd_check_seconds:
            try:
                self._sm = (now, self.observer.has_service_monitors())
            except KubeError as err:
                log.warning("cannot tell whether ServiceMonitors exist: %s", err)
                self._sm = (now, False)
        return replace(self.options, service_monitor=self._sm[1])

    def _child_kinds(self, options: RenderOptions) -> tuple[str, ...]:
        return tuple(k for k in CHILD_KINDS if k != "ServiceMonitor" or options.service_monitor)

    # ---------------------------------------------------------------- ModelDeployment

    def reconcile_modeldeployment(self, body: Mapping[str, Any], record: Recorder) -> None:
        meta = body.get("metadata") or {}
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        if meta.get("deletionTimestamp"):
            return  # the garbage collector removes the children
        timer = self.metrics.time_reconcile() if self.metrics else contextlib.nullcontext()
        with self.lock(namespace, name), timer:
            fresh = self.kube.get("ModelDeployment", name, namespace)
            if fresh is None:
                return
            self._reconcile_md(fresh, record)

    def _reconcile_md(self, body: Mapping[str, Any], record: Recorder) -> None:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        previous = dict(body.get("status") or {})
        try:
            md = ModelDeployment.model_validate(body)
        except ValidationError as err:
            self._write_invalid(body, Problem(
                "InvalidSpec", "fix the spec: " + validation_summary(err)), record)
            return

        state = self.observer.state()
        views = pool_views(state, namespace, name)
        pool_specs = {n: v.spec for n, v in views.items()}
        placement = (self.capacity.place(md, views) if self.capacity is not None
                     else place(md.spec, md.spec.desired_replicas(), views))
        options = self._options()
        existing = list_children(self.kube, namespace, name, md.uid, self._child_kinds(options))
        actions: list[Action] = []
        waiting: list[str] = []
        problem: Problem | None = None
        deployments = [o for k, o in existing.items() if k.kind == "Deployment"]
        if not placement.eligible:
            # Leave what runs alone: a typo in the pool list must not take the model down.
            problem = no_eligible_pool(placement)
        else:
            try:
                result = apply_children(self.kube, render(md, placement, pool_specs, options),
                                        existing)
            except KubeError as err:
                problem = Problem("ApplyFailed", f"the API server refused a child: {err}")
            else:
                actions, waiting = result.actions, result.waiting_to_delete
                deployments = result.deployments()
                if any(a.reason in ("Created", "Deleted", "Scaled") for a in actions):
                    self.observer.invalidate()
                    if self.capacity is not None:
                        self.capacity.invalidate()
        pods = self.kube.list("Pod", namespace, labels=selector_string(name))
        report = compute(md, placement, problem, deployments, pods, pool_specs, waiting)
        if self.capacity is not None:
            self.capacity.account(md, report.fields)

        for action in actions:
            record(action.type, action.reason, action.message)
        old_placement = {p.get("pool"): p.get("replicas") for p in previous.get("placement", [])}
        new_placement = {p["pool"]: p["replicas"] for p in report.fields["placement"]}
        if problem is None and old_placement != new_placement:
            record("Normal", "Placed", f"placement: {_placement_summary(placement)} "
                   f"({placement.wanted} wanted)")
        # Problems only the autoscaler sees (model errors, SLO breached at the replica limit)
        # are not overwritten by "nothing wrong here".
        conds = keep_autoscaler_conditions((body.get("status") or {}).get("conditions") or [],
                                           report.conditions, md.spec.autoscaling is not None)
        self._write_status(body, report.fields, conds, md.generation, record)

    def _write_invalid(self, body: Mapping[str, Any], problem: Problem,
                       record: Recorder) -> None:
        conds = [c.Cond(c.READY, "False", problem.reason, problem.message),
                 c.Cond(c.DEGRADED, "True", problem.reason, problem.message)]
        generation = int(body["metadata"].get("generation", 0))
        self._write_status(body, {"observedGeneration": generation}, conds, generation, record)

    def _write_status(self, body: Mapping[str, Any], fields: dict[str, Any],
                      conds: list[c.Cond], generation: int, record: Recorder) -> None:
        previous = dict(body.get("status") or {})
        old_conditions = previous.get("conditions") or []
        merged = c.merge(old_conditions, conds, generation, self.clock())
        for cond in c.transitions(old_conditions, conds):
            record("Warning" if _warning(cond) else "Normal", cond.reason,
                   f"{cond.type} is {cond.status}: {cond.message}")
        patch: dict[str, Any] = {}
        for key, value in fields.items():
            old = previous.get(key)
            if isinstance(value, dict) and isinstance(old, dict):
                if any(old.get(k) != v for k, v in value.items()):
                    patch[key] = value
            elif old != value:
                patch[key] = value
        if merged != old_conditions:
            patch["conditions"] = merged
        if not patch:
            return
        meta = body["metadata"]
        self.kube.patch_merge("ModelDeployment", meta["name"], {"status": patch},
                              namespace=meta["namespace"], subresource="status")

    # ---------------------------------------------------------------- GPUPool

    def refresh_pool(self, body: Mapping[str, Any], record: Recorder) -> None:
        name = body["metadata"]["name"]
        fresh = self.kube.get("GPUPool", name)
        if fresh is None or fresh["metadata"].get("deletionTimestamp"):
            return
        try:
            pool = GPUPool.model_validate(fresh)
        except ValidationError as err:
            log.warning("GPUPool %s cannot be read: %s", name, err)
            return
        state = self.observer.state()
        status = pool_status(pool, state, self.reserved_gpus(name))
        fields = status.wire()
        fields.pop("conditions", None)
        if status.ready_nodes:
            cond = c.Cond(c.READY, "True", "NodesReady",
                          f"{status.ready_nodes}/{status.nodes} nodes Ready with "
                          f"{status.allocatable_gpus} allocatable GPUs")
        else:
            cond = c.Cond(c.READY, "False", "NoReadyNodes", (
                f"no Ready node matches spec.nodeSelector {dict(pool.spec.node_selector)}"
                f" ({status.nodes} match)"))
        self._write_pool_status(fresh, fields, cond, record)

    def reserved_gpus(self, pool: str) -> int:
        """GPUs committed by admitted CapacityReservations on the pool."""
        total = 0
        for item in self.kube.iter("CapacityReservation"):
            if (item.get("spec") or {}).get("pool") == pool and (
                    item.get("status") or {}).get("admitted"):
                total += int(item["spec"].get("gpus", 0))
        return total

    def _write_pool_status(self, body: Mapping[str, Any], fields: dict[str, Any],
                           cond: c.Cond, record: Recorder) -> None:
        previous = dict(body.get("status") or {})
        old_conditions = previous.get("conditions") or []
        generation = int(body["metadata"].get("generation", 0))
        merged = c.merge(old_conditions, [cond], generation, self.clock())
        for t in c.transitions(old_conditions, [cond]):
            record("Warning" if _warning(t) else "Normal", t.reason, t.message)
        patch = {k: v for k, v in fields.items() if previous.get(k) != v}
        if merged != old_conditions:
            patch["conditions"] = merged
        if patch:
            self.kube.patch_merge("GPUPool", body["metadata"]["name"], {"status": patch},
                                  subresource="status")

    def modeldeployments_using(self, pool: str) -> list[dict[str, Any]]:
        return [md for md in self.kube.iter("ModelDeployment")
                if pool in ((md.get("spec") or {}).get("placement") or {}).get("pools", [])]
