"""Capacity reconcile: reservation admission and status, tenant quotas and RoleBindings.

Admission is a decision over every reservation of a pool at once, so one reconcile computes the
whole picture (`plan`, pure) from one read of the cluster (`read`) and writes it (`reconcile`):

- each CapacityReservation's status: admitted or why not (with the GPUs left), used reserved
  GPUs, borrowed GPUs, headroom, conditions Admitted and Active;
- per tenant namespace a ResourceQuota on `requests.nvidia.com/gpu` and a RoleBinding of the
  chart's `dedicap-tenant-view` ClusterRole for the namespace's service accounts; those of
  namespaces that no reservation names any more are deleted. Only in the namespaces this
  operator serves (`--namespace`), where its namespaced RBAC lets it write.

The PriorityClasses and the tenant ClusterRoles are the Helm chart's (static, cluster-scoped):
the operator creates no cluster-scoped RBAC and no PriorityClass, and only checks at start that
the classes exist.

Everything is server-side-applied with the field manager `dedicap` (forced) and derived from
observed state only, so a restart at any line converges. A kopf handler (`register`) runs it
when a reservation changes; the operator's periodic resync (resync.py) runs it every
`--capacity-seconds`, since pools, nodes and pods change without touching any reservation. At
most once per `min_interval` unless a reservation changed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from dedicap.api.models import CapacityReservation, GPUPool, ModelDeployment
from dedicap.controller import conditions as c
from dedicap.controller.accounting import Accountant
from dedicap.controller.kube import FIELD_MANAGER, Kind, Kube, KubeError
from dedicap.controller.observe import NodeInfo, parse_node, pod_gpus, selects
from dedicap.decide import capacity_objects as co
from dedicap.decide import reservations as rv
from dedicap.decide.placement import Placement, PoolView, place_reserved
from dedicap.decide.render import LABEL_MD
from dedicap.metrics.exporter import OperatorMetrics, PoolUsage, ReservationFigures

log = logging.getLogger(__name__)

ZONE_LABEL = "topology.kubernetes.io/zone"
ADMITTED = "Admitted"
ACTIVE = "Active"

# Kinds the capacity reconcile writes besides dedicap's own.
RESOURCE_QUOTA = Kind("v1", "ResourceQuota", "resourcequotas", True)
PRIORITY_CLASS = Kind("scheduling.k8s.io/v1", "PriorityClass", "priorityclasses", False)
ROLE_BINDING = Kind("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings", True)
RESERVATIONS = Kind("dedicap.dev/v1alpha1", "CapacityReservation", "capacityreservations", False)
_KINDS = {k.kind: k for k in (RESOURCE_QUOTA, ROLE_BINDING)}


# ----------------------------------------------------------------------------- read


def parse_gpu_pod(raw: Mapping[str, Any]) -> rv.GPUPod | None:
    """A non-terminated pod that holds GPUs on a node, or is about to: bound, or Pending with the
    node the scheduler nominated for it after preempting (its GPUs are spoken for)."""
    spec = raw.get("spec") or {}
    status = raw.get("status") or {}
    meta = raw.get("metadata") or {}
    if status.get("phase") in ("Succeeded", "Failed"):
        return None
    node = spec.get("nodeName") or status.get("nominatedNodeName")
    gpus = pod_gpus(spec)
    if not node or gpus == 0:
        return None
    labels = meta.get("labels") or {}
    namespace = meta.get("namespace", "")
    md = labels.get(LABEL_MD)
    return rv.GPUPod(
        namespace=namespace, name=meta.get("name", ""), node=node, gpus=gpus,
        priority=int(spec.get("priority") or 0),
        owner=f"{namespace}/{md}" if md else "",
        reservation=labels.get(rv.LABEL_RESERVATION, ""),
        capacity=labels.get(rv.LABEL_CAPACITY, ""), bound=bool(spec.get("nodeName")))


@dataclass(frozen=True)
class Snapshot:
    """One read of everything capacity decisions depend on."""

    reservations: Mapping[str, CapacityReservation]
    invalid_reservations: Mapping[str, str]
    pools: Mapping[str, GPUPool]
    nodes: tuple[NodeInfo, ...]
    pods: tuple[rv.GPUPod, ...]
    namespaces: frozenset[str]

    def pool_nodes(self, pool: GPUPool) -> list[NodeInfo]:
        return [n for n in self.nodes if selects(pool.spec.node_selector, n.labels)]

    def views(self) -> dict[str, rv.ReservationView]:
        return {name: rv.ReservationView.of(r) for name, r in self.reservations.items()}

    def pool_capacity(self) -> dict[str, int]:
        """GPUs of each pool for admission: the capacity of every node in it, Ready or not, so a
        node that flaps does not flap admissions; a deleted node does shrink the pool."""
        return {name: sum(n.capacity_gpus for n in self.pool_nodes(p))
                for name, p in self.pools.items()}

    def pool_figures(self, name: str, reserved: int) -> dict[str, int]:
        """GPUs of the pool by state, as GPUPool status counts them: total (node capacity),
        allocatable (Ready, schedulable nodes), allocated (bound pods), reserved, free."""
        nodes = self.pool_nodes(self.pools[name])
        names = {n.name for n in nodes}
        used: dict[str, int] = {}
        for p in self.pods:
            if p.bound and p.node in names:
                used[p.node] = used.get(p.node, 0) + p.gpus
        usable = [n for n in nodes if n.schedulable]
        return {"total": sum(n.capacity_gpus for n in nodes),
                "allocatable": sum(n.allocatable_gpus for n in usable),
                "allocated": sum(used.values()),
                "reserved": reserved,
                "free": sum(max(n.allocatable_gpus - used.get(n.name, 0), 0) for n in usable)}

    def pool_states(self, exclude_owner: str = "") -> dict[str, rv.PoolState]:
        """Every pool as placement sees it for the ModelDeployment `exclude_owner`."""
        out = {}
        for name, pool in self.pools.items():
            members = [(n.name, n.labels.get(ZONE_LABEL, ""),
                        n.allocatable_gpus if n.schedulable else 0)
                       for n in self.pool_nodes(pool)]
            names = {m[0] for m in members}
            out[name] = rv.PoolState(
                name, pool.spec.gpu.memory_gib,
                rv.node_states(members, (p for p in self.pods if p.node in names),
                               exclude_owner=exclude_owner,
                               protected_priority=co.RESERVED_PRIORITY),
                pool.spec.price_per_gpu_hour, pool.spec.currency)
        return out


def _parse(model: type[Any], items: Iterable[Mapping[str, Any]]) -> tuple[dict[str, Any],
                                                                        dict[str, str]]:
    ok: dict[str, Any] = {}
    bad: dict[str, str] = {}
    for item in items:
        name = item["metadata"]["name"]
        try:
            ok[name] = model.model_validate(item)
        except ValidationError as err:
            bad[name] = str(err)
    return ok, bad


def read(kube: Kube) -> Snapshot:
    reservations, invalid = _parse(CapacityReservation, kube.iter("CapacityReservation"))
    pools, _ = _parse(GPUPool, kube.iter("GPUPool"))
    nodes = tuple(parse_node(n) for n in kube.iter("Node"))
    pods = tuple(p for p in (parse_gpu_pod(raw) for raw in kube.iter(
        "Pod", fields="status.phase!=Succeeded,status.phase!=Failed")) if p is not None)
    namespaces = frozenset(n["metadata"]["name"] for n in kube.iter("Namespace"))
    return Snapshot(reservations, invalid, pools, nodes, pods, namespaces)


# ----------------------------------------------------------------------------- plan (pure)


@dataclass(frozen=True)
class CapacityPlan:
    views: Mapping[str, rv.ReservationView]
    admissions: Mapping[str, rv.Admission]
    usage: Mapping[str, rv.ReservationUsage]
    quotas: Mapping[str, rv.NamespaceQuota]
    committed: Mapping[str, int]  # pool -> GPUs of reservations in effect

    def entitlement(self, md: ModelDeployment) -> rv.Entitlement:
        return rv.entitlement(md.namespace, f"{md.namespace}/{md.name}", md.spec.reservation,
                              self.views, self.admissions, self.usage)


def plan(snapshot: Snapshot, now: datetime) -> CapacityPlan:
    views = snapshot.views()
    seq = list(views.values())
    admissions = rv.admit(seq, snapshot.pool_capacity(), now)
    usage = {name: rv.reservation_usage(v, snapshot.pods) for name, v in views.items()}
    return CapacityPlan(
        views=views, admissions=admissions, usage=usage,
        quotas=rv.namespace_quotas(seq, admissions),
        committed={p: rv.committed_gpus(seq, admissions, p) for p in snapshot.pools})


def placement_for(md: ModelDeployment, snapshot: Snapshot, capacity: CapacityPlan
                  ) -> rv.Placement:
    """Where the ModelDeployment's desired replicas go, under its reservation."""
    res = md.spec.resources
    request = rv.PlacementRequest(md.spec.desired_replicas(), res.gpus_per_replica,
                                  res.gpu_memory_gib, tuple(md.spec.placement.pools))
    return rv.place(request, snapshot.pool_states(f"{md.namespace}/{md.name}"),
                    capacity.entitlement(md))


def reservation_status(cr: CapacityReservation, admission: rv.Admission,
                       usage: rv.ReservationUsage, now: datetime) -> dict[str, Any]:
    """The status the reservation should carry (wire names)."""
    generation = int(cr.metadata.get("generation", 0) or 0)
    in_effect = admission.active
    headroom = max(cr.spec.gpus - usage.reserved_gpus, 0) if in_effect else 0
    if admission.admitted and not in_effect:
        active = c.Cond(ACTIVE, "False", admission.reason, admission.message)
    elif in_effect:
        active = c.Cond(ACTIVE, "True", "InWindow",
                        f"{usage.reserved_gpus} of {cr.spec.gpus} reserved GPUs in use, "
                        f"{usage.burst_gpus} burst GPUs borrowed")
    else:
        active = c.Cond(ACTIVE, "False", admission.reason, "not admitted")
    admitted = c.Cond(ADMITTED, "True" if admission.admitted else "False", admission.reason,
                      admission.message)
    previous = cr.status.model_dump(by_alias=True, mode="json")["conditions"] if cr.status else []
    return {
        "observedGeneration": generation,
        "admitted": admission.admitted,
        "usedGPUs": usage.reserved_gpus,
        "burstGPUs": usage.burst_gpus,
        "headroomGPUs": headroom,
        "message": admission.message,
        "conditions": c.merge(previous, [admitted, active], generation, now),
    }


def _same_status(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    keys = ("observedGeneration", "admitted", "usedGPUs", "burstGPUs", "headroomGPUs", "message")
    if any(old.get(k) != new.get(k) for k in keys):
        return False
    strip = ("lastTransitionTime",)

    def conds(s: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [{k: v for k, v in x.items() if k not in strip} for x in s.get("conditions") or []]
    return conds(old) == conds(new)


# ----------------------------------------------------------------------------- write


def _path(obj: Mapping[str, Any]) -> str:
    meta = obj["metadata"]
    return _KINDS[obj["kind"]].path(meta.get("namespace"), meta["name"])


def apply(kube: Kube, obj: Mapping[str, Any]) -> None:
    kube.request("PATCH", _path(obj), query={"fieldManager": FIELD_MANAGER, "force": "true"},
                 body=dict(obj), content_type="application/apply-patch+yaml")


def missing_priority_classes(kube: Kube) -> list[str]:
    """The PriorityClasses replicas name that the cluster lacks (the chart installs them)."""
    missing = []
    for name in (co.RESERVED_CLASS, co.BURST_CLASS):
        try:
            kube.request("GET", PRIORITY_CLASS.path(name=name))
        except KubeError as err:
            if not err.not_found:
                raise
            missing.append(name)
    return missing


def _managed_quotas(kube: Kube, namespaces: tuple[str, ...]) -> list[dict[str, Any]]:
    """The quotas dedicap wrote: cluster-wide, or per namespace where the operator serves named
    namespaces (its RBAC is namespaced then)."""
    selector = f"app.kubernetes.io/managed-by=dedicap,{co.COMPONENT_LABEL}=capacity"
    if not namespaces or any(set(p) & set("*?[") for p in namespaces):
        paths = [RESOURCE_QUOTA.path()]
    else:
        paths = [RESOURCE_QUOTA.path(ns) for ns in namespaces]
    out: list[dict[str, Any]] = []
    for path in paths:
        try:
            out += kube.request("GET", path, query={"labelSelector": selector}).get("items", [])
        except KubeError as err:
            if not err.not_found:
                raise
    return out


@dataclass
class Outcome:
    plan: CapacityPlan
    snapshot: Snapshot
    statuses_written: list[str] = field(default_factory=list)
    quotas_deleted: list[str] = field(default_factory=list)


def reconcile(kube: Kube, now: datetime, *, namespaces: tuple[str, ...] = ()) -> Outcome:
    """One capacity round. Tenant objects are written in the namespaces `namespaces` (glob
    patterns; none: all) serves; reservations naming others are decided all the same."""
    # The handlers' one namespace rule (imported here: handlers imports this module's users).
    from dedicap.controller.handlers import serves

    snapshot = read(kube)
    capacity = plan(snapshot, now)
    out = Outcome(capacity, snapshot)
    existing = {ns: q for ns, q in capacity.quotas.items()
                if ns in snapshot.namespaces and serves(namespaces, ns)}
    for obj in co.tenant_objects({ns: (q.gpus, q.reservations) for ns, q in existing.items()}):
        apply(kube, obj)
    # Quotas dedicap wrote in namespaces no reservation names any more.
    for quota in _managed_quotas(kube, namespaces):
        ns = quota["metadata"]["namespace"]
        if ns not in capacity.quotas and serves(namespaces, ns):
            for kind, name in ((RESOURCE_QUOTA, co.QUOTA_NAME),
                               (ROLE_BINDING, co.TENANT_BINDING)):
                try:
                    kube.request("DELETE", kind.path(ns, name))
                except KubeError as err:
                    if not err.not_found:
                        raise
            out.quotas_deleted.append(ns)
    for name, cr in sorted(snapshot.reservations.items()):
        status = reservation_status(cr, capacity.admissions[name], capacity.usage[name], now)
        old = cr.status.model_dump(by_alias=True, mode="json") if cr.status else {}
        if _same_status(old, status):
            continue
        try:
            kube.request("PATCH", RESERVATIONS.path(name=name, subresource="status"),
                         query={"fieldManager": FIELD_MANAGER}, body={"status": status},
                         content_type="application/merge-patch+json")
            out.statuses_written.append(name)
        except KubeError as err:
            if not err.not_found:  # deleted meanwhile
                raise
    for name, error in snapshot.invalid_reservations.items():
        log.warning("CapacityReservation %s cannot be read: %s", name, error)
    return out


# ----------------------------------------------------------------------------- kopf


@dataclass
class CapacityController:
    """Runs the capacity reconcile for the reservation handler and the periodic resync: one at
    a time, and unless forced at most once per `min_interval` seconds (the status writes of a
    reconcile, and the initial listing of many reservations, come back as events that would
    otherwise repeat the same cluster-wide work)."""

    kube: Kube
    namespaces: tuple[str, ...] = ()
    min_interval: float = 5.0
    clock: Callable[[], float] = time.monotonic
    on_outcome: Callable[[Outcome], None] | None = None
    last: Outcome | None = field(default=None, init=False)
    _last_run: float = field(default=-1e18, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def run(self, *, force: bool) -> Outcome | None:
        with self._lock:
            if not force and self.clock() - self._last_run < self.min_interval:
                return None
            outcome = reconcile(self.kube, datetime.now(UTC), namespaces=self.namespaces)
            self._last_run = self.clock()
            self.last = outcome
        if self.on_outcome is not None:
            self.on_outcome(outcome)
        return outcome


def register(registry: kopf.OperatorRegistry, controller: CapacityController) -> None:
    """Attach the capacity handlers to `registry`.

    Like the ModelDeployment handlers, only watch events: reservations get no finalizer and no
    progress annotations (deleting one works with the operator down). The periodic run is the
    resync thread's (resync.py), not a kopf timer, so no GPUPool carries a finalizer either.
    """
    generations: dict[str, int] = {}
    lock = threading.Lock()

    @kopf.on.startup(registry=registry, id="capacity-objects")
    def capacity_startup(logger: kopf.Logger, **_: Any) -> None:
        missing = missing_priority_classes(controller.kube)
        if missing:
            # Replicas name these classes: without them the API server refuses their pods.
            logger.error(f"PriorityClasses {', '.join(missing)} do not exist: install them "
                         "with the Helm chart (capacity.enabled), or run with --no-capacity")

    @kopf.on.event("dedicap.dev", "v1alpha1", "capacityreservations", registry=registry,
                   id="capacityreservation")
    def reservation_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        name = body.metadata.name or ""
        generation = int(body.metadata.get("generation", 0))
        with lock:
            changed = True
            if type == "DELETED":
                generations.pop(name, None)
            else:
                changed = generations.get(name) != generation
                generations[name] = generation
        # A new, changed or deleted reservation is decided at once; its own status writes (and
        # the initial listing of many reservations) coalesce into one run per interval.
        outcome = controller.run(force=changed)
        if outcome is not None and changed and name in outcome.plan.admissions:
            a = outcome.plan.admissions[name]
            log.log(logging.INFO if a.admitted else logging.WARNING,
                    "CapacityReservation %s: %s: %s", name, a.reason, a.message)


# ----------------------------------------------------------------------------- planner


@dataclass
class CapacityPlanner:
    """What the ModelDeployment reconcile asks of capacity: a reservation-aware placement and
    the GPU accounting. Reads one `Snapshot` (cached for `ttl` seconds, like the core's
    observer) and decides with the same pure functions as the capacity reconcile."""

    kube: Kube
    ttl: float = 2.0
    metrics: OperatorMetrics | None = None
    accountant: Accountant = field(default_factory=Accountant)
    clock: Callable[[], float] = time.monotonic
    _cached: tuple[float, Snapshot, CapacityPlan] | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def invalidate(self) -> None:
        with self._lock:
            self._cached = None

    def current(self) -> tuple[Snapshot, CapacityPlan]:
        with self._lock:
            now = self.clock()
            if self._cached is None or now - self._cached[0] >= self.ttl:
                snapshot = read(self.kube)
                self._cached = (now, snapshot, plan(snapshot, datetime.now(UTC)))
            return self._cached[1], self._cached[2]

    def place(self, md: ModelDeployment, views: Mapping[str, PoolView]) -> Placement:
        snapshot, capacity = self.current()
        return place_reserved(md.spec, md.spec.desired_replicas(), views,
                              snapshot.pool_states(f"{md.namespace}/{md.name}"),
                              capacity.entitlement(md))

    def account(self, md: ModelDeployment, fields: dict[str, Any]) -> None:
        """Add GPU-hours to the status fields the reconcile is about to write (`cost`, from
        the per-pool `placement` it computed) and export the per-pool usage."""
        snapshot, _ = self.current()
        gpus_by_pool = {p["pool"]: int(p.get("gpus", 0)) for p in fields.get("placement", [])}
        previous = (md.status.cost.model_dump(by_alias=True, mode="json", exclude_none=True)
                    if md.status is not None and md.status.cost is not None else None)
        # status.placement is written in the same patch as status.cost: its per-pool GPUs are
        # the counts held at cost.accountedAt, which a restarted operator charges per pool.
        previous_by_pool = ({p.pool: p.gpus for p in md.status.placement}
                            if md.status is not None and md.status.placement else None)
        report = self.accountant.observe(md.namespace, md.name, gpus_by_pool,
                                         snapshot.pool_states(), datetime.now(UTC), previous,
                                         previous_by_pool)
        fields["cost"] = {**fields.get("cost", {}), **report.status()}
        if self.metrics is not None:
            states = snapshot.pool_states()
            replicas = {p["pool"]: int(p.get("currentReplicas", 0))
                        for p in fields.get("placement", [])}
            usage = {}
            for pool, gpus in gpus_by_pool.items():
                price = states[pool].price_per_gpu_hour if pool in states else 0.0
                hours = report.by_pool.get(pool)
                usage[pool] = PoolUsage(replicas.get(pool, 0), gpus,
                                        hours.gpu_hours if hours else 0.0, gpus * price)
            self.metrics.set_pools(md.namespace, md.name, usage)

    def forget(self, namespace: str, name: str) -> None:
        """A deleted ModelDeployment: its integral and every series of it (idempotent, the
        autoscaler may have dropped them already)."""
        self.accountant.forget(namespace, name)
        if self.metrics is not None:
            self.metrics.forget(namespace, name)

    def export(self, outcome: Outcome) -> None:
        """`CapacityController.on_outcome`: the reconcile's figures as metrics (once the
        operator's metrics exist)."""
        if self.metrics is not None:
            export(self.metrics, outcome)


def export(metrics: OperatorMetrics, outcome: Outcome) -> None:
    """Pool and reservation figures of one capacity reconcile, as metrics."""
    snap, cap = outcome.snapshot, outcome.plan
    metrics.set_gpupools({name: snap.pool_figures(name, cap.committed.get(name, 0))
                          for name in snap.pools})
    figures = {}
    for name, view in cap.views.items():
        a, u = cap.admissions[name], cap.usage[name]
        figures[name] = ReservationFigures(
            pool=view.pool, admitted=a.admitted, committed=view.gpus, used=u.reserved_gpus,
            burst=u.burst_gpus, headroom=max(view.gpus - u.reserved_gpus, 0) if a.active else 0)
    metrics.set_reservations(figures)
