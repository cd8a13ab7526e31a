"""Dedicated capacity, decided: reservation admission, tenant quotas, reservation-aware placement
and GPU accounting.

Pure functions over frozen data: no Kubernetes client, no clock (every function that depends on
time takes `now`), so the operator, the simulator and the tests run the same decisions.

The rules, in one place:

- **Admission.** A reservation commits GPUs of one pool for its validity window. Reservations are
  admitted one by one in a fixed order (those already admitted at their current generation first,
  then by creationTimestamp, then name): one is admitted when, at every instant of its window,
  the GPUs committed to the reservations admitted before it plus its own fit the pool's GPUs. So
  the sum of admitted reservations active at any instant never exceeds the pool, and an edit that
  grows an old reservation cannot push out a newer one that already holds its GPUs: the edit is
  the one refused. A refused reservation's message says how many GPUs are left.
- **Quota.** A tenant namespace may request `sum(gpus + burst.maxGPUs)` GPUs over the admitted
  reservations in effect now that name it. Kubernetes quotas are per namespace, so a reservation
  that names several namespaces grants the full amount to each; placement keeps the sum within the
  reservation.
- **Placement.** A replica runs on one node (all its GPUs there), on a pool whose GPUs have at
  least the model's GPU memory. Replicas take the reservation's headroom first (paid for, and
  entitled to preempt burst replicas of others), then burst (borrowing GPUs that are free right
  now, including idle reserved GPUs of others, preemptible) on the pools in preference order, up
  to the burst limit. What cannot be placed is reported with numbers, never left as Pending pods.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from dedicap.api.models import CapacityReservation

RESERVED = "reserved"
BURST = "burst"

# Pod labels the operator puts on replicas, read back to account reservation usage.
LABEL_RESERVATION = "dedicap.dev/reservation"
LABEL_CAPACITY = "dedicap.dev/capacity"  # RESERVED or BURST

# Admission reasons (CamelCase, stable for programs).
ADMITTED = "Admitted"
NOT_YET_ACTIVE = "NotYetActive"
OVERCOMMITTED = "PoolOvercommitted"
POOL_NOT_FOUND = "PoolNotFound"
EXPIRED = "Expired"


# ----------------------------------------------------------------------------- reservations


@dataclass(frozen=True)
class ReservationView:
    """What admission, quotas and placement need of one CapacityReservation."""

    name: str
    pool: str
    gpus: int
    namespaces: tuple[str, ...]
    burst_max: int = 0
    burst_pools: tuple[str, ...] = ()  # empty: the reservation's own pool
    not_before: datetime | None = None
    not_after: datetime | None = None
    created: datetime | None = None
    generation: int = 0
    # The generation at which it was last found admitted (from its status), if it was.
    admitted_generation: int | None = None

    @classmethod
    def of(cls, cr: CapacityReservation) -> ReservationView:
        meta = cr.metadata
        created = meta.get("creationTimestamp")
        if isinstance(created, str):
            created = datetime.fromisoformat(created.replace("Z", "+00:00"))
        generation = int(meta.get("generation", 0) or 0)
        status = cr.status
        admitted_generation = (status.observed_generation
                               if status is not None and status.admitted else None)
        spec = cr.spec
        return cls(
            name=cr.name, pool=spec.pool, gpus=spec.gpus, namespaces=tuple(spec.namespaces),
            burst_max=spec.burst.max_gpus if spec.burst else 0,
            burst_pools=tuple(spec.burst.pools) if spec.burst else (),
            not_before=spec.window.not_before if spec.window else None,
            not_after=spec.window.not_after if spec.window else None,
            created=created if isinstance(created, datetime) else None,
            generation=generation, admitted_generation=admitted_generation)

    @property
    def borrow_pools(self) -> tuple[str, ...]:
        return self.burst_pools or (self.pool,)

    def expired(self, now: datetime) -> bool:
        return self.not_after is not None and now >= self.not_after

    def in_window(self, now: datetime) -> bool:
        return (self.not_before is None or now >= self.not_before) and not self.expired(now)

    def _order(self) -> tuple[int, float, str]:
        stable = self.admitted_generation == self.generation
        created = self.created.timestamp() if self.created is not None else math.inf
        return (0 if stable else 1, created, self.name)


@dataclass(frozen=True)
class Admission:
    """The admission decision for one reservation."""

    name: str
    pool: str
    admitted: bool
    active: bool  # admitted and inside its window now: its GPUs are in effect
    reason: str
    message: str
    left_gpus: int  # GPUs of the pool still uncommitted over its window, after this decision


@dataclass(frozen=True)
class _Commitment:
    start: float
    end: float
    gpus: int
    name: str


def _peak(commitments: Iterable[_Commitment], start: float, end: float) -> tuple[int, list[str]]:
    """Most GPUs committed at any instant of [start, end), and to which reservations then. The
    committed sum is piecewise constant and only rises where a commitment starts, so its maximum
    over the interval is reached at `start` or at one of those starts."""
    items = list(commitments)
    instants = {start} | {c.start for c in items if start < c.start < end}
    best, names = 0, []
    for t in sorted(instants):
        here = [c for c in items if c.start <= t < c.end]
        total = sum(c.gpus for c in here)
        if total > best:
            best, names = total, sorted(c.name for c in here)
    return best, names


def admit(reservations: Sequence[ReservationView], pool_gpus: Mapping[str, int],
          now: datetime) -> dict[str, Admission]:
    """Decide admission for every reservation (see the module's rules). `pool_gpus` maps each
    existing pool to its GPUs (the capacity of its nodes)."""
    committed: dict[str, list[_Commitment]] = {}
    out: dict[str, Admission] = {}
    t_now = now.timestamp()
    for r in sorted(reservations, key=ReservationView._order):
        if r.pool not in pool_gpus:
            out[r.name] = Admission(r.name, r.pool, False, False, POOL_NOT_FOUND,
                                    f"no GPUPool named {r.pool!r}: create it or change spec.pool",
                                    0)
            continue
        total = pool_gpus[r.pool]
        if r.expired(now):
            out[r.name] = Admission(r.name, r.pool, False, False, EXPIRED,
                                    f"the validity window ended at {_iso(r.not_after)}; the "
                                    "reservation holds no GPUs", 0)
            continue
        start = max(r.not_before.timestamp(), t_now) if r.not_before else t_now
        end = r.not_after.timestamp() if r.not_after else math.inf
        mine = committed.setdefault(r.pool, [])
        peak, holders = _peak(mine, start, end)
        left = max(total - peak, 0)
        if r.gpus > left:
            held = f" (committed to {', '.join(holders)})" if holders else ""
            out[r.name] = Admission(
                r.name, r.pool, False, False, OVERCOMMITTED,
                f"pool {r.pool} has {total} GPUs and {peak} are already committed{held}: "
                f"{left} GPUs left, {r.gpus} asked. Lower spec.gpus to at most {left}, or move "
                "the window", left)
            continue
        mine.append(_Commitment(start, end, r.gpus, r.name))
        active = r.in_window(now)
        left_after = left - r.gpus
        if active:
            reason, message = ADMITTED, (
                f"{r.gpus} of pool {r.pool}'s {total} GPUs committed; {left_after} GPUs of the "
                "pool left uncommitted")
        else:
            reason, message = NOT_YET_ACTIVE, (
                f"{r.gpus} of pool {r.pool}'s {total} GPUs committed from "
                f"{_iso(r.not_before)}; {left_after} GPUs of the pool left uncommitted")
        out[r.name] = Admission(r.name, r.pool, True, active, reason, message, left_after)
    return out


def _iso(t: datetime | None) -> str:
    return t.isoformat() if t is not None else "-"


def committed_gpus(reservations: Sequence[ReservationView], admissions: Mapping[str, Admission],
                   pool: str) -> int:
    """GPUs of `pool` committed to reservations in effect now (GPUPool status.reservedGPUs)."""
    return sum(r.gpus for r in reservations
               if r.pool == pool and admissions.get(r.name, _NO).active)


@dataclass(frozen=True)
class NamespaceQuota:
    """The GPU quota of one tenant namespace and the reservations it comes from."""

    namespace: str
    gpus: int
    reservations: tuple[str, ...]  # every reservation naming the namespace, in effect or not
    in_effect: tuple[str, ...]  # the admitted ones in their window, which make up `gpus`


def namespace_quotas(reservations: Sequence[ReservationView],
                     admissions: Mapping[str, Admission]) -> dict[str, NamespaceQuota]:
    """Per namespace named by any reservation: sum of gpus + burst.maxGPUs over the reservations
    in effect. A namespace whose reservations are all refused or out of their window gets 0, so its
    tenant cannot take GPUs it has not been granted."""
    acc: dict[str, tuple[int, list[str], list[str]]] = {}
    for r in sorted(reservations, key=lambda r: r.name):
        for ns in r.namespaces:
            gpus, names, effective = acc.setdefault(ns, (0, [], []))
            names.append(r.name)
            if admissions.get(r.name, _NO).active:
                effective.append(r.name)
                acc[ns] = (gpus + r.gpus + r.burst_max, names, effective)
    return {ns: NamespaceQuota(ns, g, tuple(n), tuple(e)) for ns, (g, n, e) in sorted(acc.items())}


_NO = Admission("", "", False, False, "", "", 0)


# ----------------------------------------------------------------------------- cluster state


@dataclass(frozen=True)
class GPUPod:
    """A pod holding (or about to hold) GPUs: bound to a node, or nominated to one by preemption."""

    namespace: str
    name: str
    node: str
    gpus: int
    priority: int = 0
    owner: str = ""  # "<namespace>/<modeldeployment>" for dedicap replicas
    reservation: str = ""
    capacity: str = ""  # RESERVED, BURST or "" (not a dedicap replica)
    bound: bool = True  # False: only nominated (its preemption victims are still leaving)


@dataclass(frozen=True)
class NodeState:
    """GPUs of one node as one ModelDeployment sees them (its own pods left out)."""

    name: str
    zone: str
    allocatable: int  # 0 when the node is not Ready or is cordoned
    used: int = 0  # requested by other pods on the node
    used_protected: int = 0  # of `used`, what a reserved replica may not preempt

    @property
    def free(self) -> int:
        return max(self.allocatable - self.used, 0)

    @property
    def reclaimable(self) -> int:
        """Free GPUs plus those of pods a reserved replica may preempt."""
        return max(self.allocatable - self.used_protected, 0)


@dataclass(frozen=True)
class PoolState:
    name: str
    gpu_memory_gib: float
    nodes: tuple[NodeState, ...]
    price_per_gpu_hour: float = 0.0
    currency: str = "USD"

    @property
    def allocatable(self) -> int:
        return sum(n.allocatable for n in self.nodes)

    @property
    def free(self) -> int:
        return sum(n.free for n in self.nodes)

    @property
    def reclaimable(self) -> int:
        return sum(n.reclaimable for n in self.nodes)


def node_states(nodes: Iterable[tuple[str, str, int]], pods: Iterable[GPUPod], *,
                exclude_owner: str = "", protected_priority: int) -> tuple[NodeState, ...]:
    """Nodes `(name, zone, allocatable)` with the GPUs of `pods` on them, leaving out the pods of
    `exclude_owner` (the ModelDeployment being placed: its own replicas are what it re-places).
    Pods at or above `protected_priority` cannot be preempted by a reserved replica."""
    used: dict[str, int] = {}
    protected: dict[str, int] = {}
    for p in pods:
        if exclude_owner and p.owner == exclude_owner:
            continue
        used[p.node] = used.get(p.node, 0) + p.gpus
        if p.priority >= protected_priority:
            protected[p.node] = protected.get(p.node, 0) + p.gpus
    return tuple(NodeState(n, z, a, used.get(n, 0), protected.get(n, 0))
                 for n, z, a in sorted(nodes))


# ----------------------------------------------------------------------------- usage


@dataclass(frozen=True)
class ReservationUsage:
    reserved_gpus: int = 0
    burst_gpus: int = 0
    by_owner: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # owner -> (res, burst)

    def others(self, owner: str) -> tuple[int, int]:
        """(reserved, burst) GPUs used by replicas other than `owner`'s."""
        mine = self.by_owner.get(owner, (0, 0))
        return self.reserved_gpus - mine[0], self.burst_gpus - mine[1]


def reservation_usage(r: ReservationView, pods: Iterable[GPUPod]) -> ReservationUsage:
    """GPUs used under the reservation: its tenant's replicas labelled with it, by capacity."""
    res = burst = 0
    by_owner: dict[str, tuple[int, int]] = {}
    for p in pods:
        if p.reservation != r.name or p.namespace not in r.namespaces:
            continue
        a, b = by_owner.get(p.owner, (0, 0))
        if p.capacity == RESERVED:
            res += p.gpus
            by_owner[p.owner] = (a + p.gpus, b)
        elif p.capacity == BURST:
            burst += p.gpus
            by_owner[p.owner] = (a, b + p.gpus)
    return ReservationUsage(res, burst, by_owner)


# ----------------------------------------------------------------------------- placement


@dataclass(frozen=True)
class Entitlement:
    """What one ModelDeployment may take now: reserved headroom in the reservation's pool, and
    burst GPUs on the burst pools (`burst_gpus` None: no limit but the namespace's quota)."""

    reservation: str | None = None
    pool: str | None = None
    reserved_gpus: int = 0
    burst_gpus: int | None = None
    burst_pools: tuple[str, ...] | None = None  # None: any pool the ModelDeployment accepts
    committed_gpus: int = 0  # the reservation's spec.gpus, for the explanation
    note: str = ""  # why a named reservation is not in effect, if it is not


def entitlement(namespace: str, owner: str, reservation: str | None,
                reservations: Mapping[str, ReservationView],
                admissions: Mapping[str, Admission],
                usage: Mapping[str, ReservationUsage]) -> Entitlement:
    """The entitlement of the ModelDeployment `owner` in `namespace` naming `reservation`.

    Without a reservation in effect its replicas run as burst (preemptible, lowest dedicap
    priority), limited only by the namespace's quota: they never hold reserved GPUs against the
    tenant that paid for them."""
    if reservation is None:
        return Entitlement()
    r = reservations.get(reservation)
    if r is None:
        return Entitlement(note=f"reservation {reservation} does not exist; replicas run as "
                                "burst (preemptible)")
    if namespace not in r.namespaces:
        return Entitlement(note=f"reservation {reservation} does not list namespace {namespace}; "
                                "replicas run as burst (preemptible)")
    a = admissions.get(reservation, _NO)
    if not a.active:
        why = a.message or "not admitted yet"
        return Entitlement(note=f"reservation {reservation} is not in effect "
                                f"({a.reason or 'Pending'}: {why}); replicas run as burst "
                                "(preemptible)")
    res_others, burst_others = usage.get(reservation, ReservationUsage()).others(owner)
    return Entitlement(
        reservation=reservation, pool=r.pool,
        reserved_gpus=max(r.gpus - res_others, 0),
        burst_gpus=max(r.burst_max - burst_others, 0),
        burst_pools=r.borrow_pools, committed_gpus=r.gpus)


@dataclass(frozen=True)
class PlacementRequest:
    replicas: int
    gpus_per_replica: int
    gpu_memory_gib: float
    pools: tuple[str, ...]  # preference order


@dataclass(frozen=True)
class PoolAssignment:
    pool: str
    reserved: int = 0  # replicas at reserved priority
    burst: int = 0  # replicas at burst priority

    @property
    def replicas(self) -> int:
        return self.reserved + self.burst


@dataclass(frozen=True)
class PoolReport:
    """The numbers behind the decision on one pool."""

    pool: str
    eligible: bool
    reason: str  # why not eligible: UnknownPool, InsufficientGPUMemory, ReplicaDoesNotFitNode
    allocatable_gpus: int = 0
    free_gpus: int = 0
    reserved_headroom_gpus: int = 0  # of this ModelDeployment's reservation, when on this pool
    reserved: int = 0
    burst: int = 0

    def describe(self, gpr: int, need_gib: float, memory_gib: float) -> str:
        if self.reason == "UnknownPool":
            return f"{self.pool}: no such GPUPool"
        if self.reason == "InsufficientGPUMemory":
            return f"{self.pool}: GPU memory {memory_gib:g} GiB < {need_gib:g} GiB needed"
        if self.reason == "ReplicaDoesNotFitNode":
            return f"{self.pool}: no node has {gpr} allocatable GPUs for one replica"
        text = (f"{self.pool}: placed {self.reserved} reserved + {self.burst} burst, "
                f"free {self.free_gpus}/{self.allocatable_gpus} GPUs")
        if self.reserved_headroom_gpus or self.reserved:
            text += f", reserved headroom {self.reserved_headroom_gpus} GPUs"
        return text


@dataclass(frozen=True)
class Placement:
    wanted: int
    gpus_per_replica: int
    assignments: tuple[PoolAssignment, ...]  # eligible pools in preference order (may hold 0)
    pools: tuple[PoolReport, ...]
    reason: str  # "" when every replica is placed, else why not
    message: str
    note: str = ""

    @property
    def placed(self) -> int:
        return sum(a.replicas for a in self.assignments)

    @property
    def unplaced(self) -> int:
        return self.wanted - self.placed

    @property
    def constrained(self) -> bool:
        return self.placed < self.wanted

    def on(self, pool: str) -> PoolAssignment:
        for a in self.assignments:
            if a.pool == pool:
                return a
        return PoolAssignment(pool)


# Reasons of CapacityConstrained.
NO_ELIGIBLE_POOL = "NoEligiblePool"
BURST_LIMIT = "BurstLimitReached"
INSUFFICIENT_CAPACITY = "InsufficientCapacity"


class _Nodes:
    """Mutable per-node free GPUs of one pool while replicas are being assigned."""

    def __init__(self, nodes: Sequence[NodeState]) -> None:
        self.names = [n.name for n in nodes]
        self.zone = {n.name: n.zone for n in nodes}
        self.free = {n.name: n.free for n in nodes}
        self.reclaim = {n.name: n.reclaimable for n in nodes}
        self.mine: dict[str, int] = {}  # replicas assigned per node
        self.mine_zone: dict[str, int] = {}

    def _spread_key(self, name: str, room: int) -> tuple[int, int, int, str]:
        # Spread: fewest of our replicas in the zone, then on the node, then most room, then name.
        return (self.mine_zone.get(self.zone[name], 0), self.mine.get(name, 0), -room, name)

    def fits(self, gpr: int) -> bool:
        """Whether a replica of `gpr` GPUs fits the free GPUs of some node."""
        return any(self.free[n] >= gpr for n in self.names)

    def take(self, gpr: int, *, reclaim: bool) -> bool:
        """Assign one replica of `gpr` GPUs. Truly free GPUs first; with `reclaim` (reserved
        replicas), GPUs of preemptible pods only when no node has enough free ones."""
        fits = [n for n in self.names if self.free[n] >= gpr]
        if not fits and reclaim:
            fits = [n for n in self.names if self.reclaim[n] >= gpr]
        if not fits:
            return False
        node = min(fits, key=lambda n: self._spread_key(n, self.free[n]))
        self.free[node] = max(self.free[node] - gpr, 0)
        self.reclaim[node] -= gpr
        self.mine[node] = self.mine.get(node, 0) + 1
        z = self.zone[node]
        self.mine_zone[z] = self.mine_zone.get(z, 0) + 1
        return True


def place(request: PlacementRequest, pools: Mapping[str, PoolState],
          ent: Entitlement | None = None) -> Placement:
    """How many replicas go to which pool, reserved or burst, and why not more (module rules)."""
    ent = ent or Entitlement()
    gpr = request.gpus_per_replica
    reports: dict[str, PoolReport] = {}
    nodes: dict[str, _Nodes] = {}
    for name in request.pools:
        pool = pools.get(name)
        if pool is None:
            reports[name] = PoolReport(name, False, "UnknownPool")
            continue
        base = PoolReport(name, True, "", pool.allocatable, pool.free,
                          ent.reserved_gpus if ent.pool == name else 0)
        if pool.gpu_memory_gib < request.gpu_memory_gib:
            reports[name] = replace(base, eligible=False, reason="InsufficientGPUMemory")
        elif not any(n.allocatable >= gpr for n in pool.nodes):
            reports[name] = replace(base, eligible=False, reason="ReplicaDoesNotFitNode")
        else:
            reports[name] = base
            nodes[name] = _Nodes(pool.nodes)
    counts = {name: [0, 0] for name in nodes}
    remaining = request.replicas
    # 1. Reserved headroom, in the reservation's pool (paid for; may preempt burst replicas).
    if ent.pool is not None and ent.pool in nodes:
        budget = ent.reserved_gpus // gpr
        while remaining > 0 and budget > 0 and nodes[ent.pool].take(gpr, reclaim=True):
            counts[ent.pool][0] += 1
            remaining -= 1
            budget -= 1
    # 2. Burst, on the burst pools in the ModelDeployment's order, up to the burst limit.
    burst_budget = math.inf if ent.burst_gpus is None else ent.burst_gpus // gpr
    burst_blocked = False
    for name in request.pools:
        if name not in nodes or (ent.burst_pools is not None and name not in ent.burst_pools):
            continue
        while remaining > 0:
            if burst_budget <= 0:
                # The limit is the reason only where there was room it kept us from using.
                burst_blocked = burst_blocked or nodes[name].fits(gpr)
                break
            if not nodes[name].take(gpr, reclaim=False):
                break
            counts[name][1] += 1
            remaining -= 1
            burst_budget -= 1
    assignments = tuple(PoolAssignment(n, r, b) for n, (r, b) in counts.items())
    final = tuple(replace(reports[n], reserved=counts[n][0], burst=counts[n][1])
                  if n in counts else reports[n] for n in request.pools)
    result = Placement(request.replicas, gpr, assignments, final, "", "", ent.note)
    if remaining <= 0:
        return result
    if not nodes:
        reason = NO_ELIGIBLE_POOL
    elif burst_blocked:
        reason = BURST_LIMIT
    else:
        reason = INSUFFICIENT_CAPACITY
    return replace(result, reason=reason, message=_explain(request, ent, result, pools, reason))


def _explain(request: PlacementRequest, ent: Entitlement, p: Placement,
             pools: Mapping[str, PoolState], reason: str) -> str:
    gpr = request.gpus_per_replica
    head = (f"wanted {p.wanted} replicas x {gpr} GPU = {p.wanted * gpr} GPUs, placed "
            f"{p.placed} ({p.unplaced} not placed)")
    if ent.reservation is not None:
        head += (f"; reservation {ent.reservation}: {ent.committed_gpus} GPUs reserved on "
                 f"{ent.pool}, {ent.reserved_gpus} available to this ModelDeployment, burst "
                 f"{ent.burst_gpus} GPUs left")
        if ent.pool not in request.pools:
            head += f" (its pool {ent.pool} is not in spec.placement.pools)"
    elif ent.note:
        head += f"; {ent.note}"
    if reason == BURST_LIMIT:
        head += "; the burst limit is reached: raise the reservation's burst.maxGPUs or gpus"
    per_pool = "; ".join(
        r.describe(gpr, request.gpu_memory_gib,
                   pools[r.pool].gpu_memory_gib if r.pool in pools else 0.0) for r in p.pools)
    return f"{head}. Per pool: {per_pool}"


# ----------------------------------------------------------------------------- accounting


@dataclass(frozen=True)
class GPUHours:
    """GPU-hours integrated from observed GPU counts, up to the instant `at`. Between two
    observations the count seen at the first one is taken to hold (a replica is billed from when
    it is seen until it is seen gone): `gpus` is the count seen at `at`, held from then on."""

    gpu_hours: float
    gpus: int
    at: datetime
    since: datetime


def accumulate(prev: GPUHours | None, gpus_now: int, now: datetime) -> GPUHours:
    """Advance the integral to `now` and record the GPUs held from now on. A clock that went
    backwards adds nothing (never a negative charge). Zero GPUs held before and after charges
    nothing and leaves the record as it was, `at` included: an idle ModelDeployment's record,
    and so its status, does not change at every observation."""
    if prev is None:
        return GPUHours(0.0, gpus_now, now, now)
    if prev.gpus == 0 and gpus_now == 0:
        return prev
    hours = max((now - prev.at).total_seconds(), 0.0) / 3600.0
    return GPUHours(prev.gpu_hours + prev.gpus * hours, gpus_now, max(now, prev.at), prev.since)


def resume(memory: GPUHours | None, recorded: GPUHours | None, gpus_now: int,
           now: datetime) -> GPUHours:
    """Advance the integral to `now` from the further of two records of it: `memory` (what this
    process integrated) and `recorded` (what the status says, written by this process or by
    another one, e.g. the operator that ran before a restart).

    The same rule as `accumulate` applies across any gap between observations, however long:
    the count seen at the last observation holds until the next one. After a restart the
    operator's downtime is charged at the count recorded when the last operator stopped
    looking, since pods do not go away because nobody watches them.

    Why this cannot count an interval twice: each record is a pair (gpu_hours, at) meaning
    "every instant before `at`, and none after, is in gpu_hours", and it is always taken whole
    (never one record's gpu_hours with the other's `at`). Advancing a record from `at` to `now`
    adds only [at, now), so the result is again such a pair. Two operators reconciling at once
    (a peering handover) each write such pairs; whichever is read, the next step only adds
    time after its own `at`. Taking the further record (the one whose `at` is later) only
    avoids charging an interval again at a different count; it never combines the two.

    A recorded `at` in the future (clock skew between operators) is treated as `now`: the gap
    is charged nothing rather than a negative amount, and integration continues from now."""
    base = memory
    if recorded is not None and (memory is None or recorded.at > memory.at):
        base = replace(recorded, at=min(recorded.at, now), since=min(recorded.since, now))
    return accumulate(base, gpus_now, now)


def still_holds(record: GPUHours, gpus_now: Mapping[str, int], record_by_pool: Mapping[str, int],
                now: datetime, every: timedelta) -> bool:
    """Whether a written record (`status.cost` with `record_by_pool`, the per-pool counts
    written with it) still says all there is to say at `now`: the counts it holds are the
    counts seen now, on every pool, and its instant is not in the future and less than `every`
    ago. The integral now is then exactly `gpu_hours + gpus x (now - at)`, which is what the
    record already states; rewriting it would only make one more status write, and with it one
    more event that reconciles the ModelDeployment again.

    Every observation since the record saw the same counts: an observation that saw others
    would have written a newer record."""
    def held(counts: Mapping[str, int]) -> dict[str, int]:
        return {pool: gpus for pool, gpus in counts.items() if gpus > 0}
    return (record.gpus == sum(gpus_now.values()) and held(record_by_pool) == held(gpus_now)
            and record.at <= now < record.at + every)


def gap_by_pool(recorded: GPUHours, recorded_by_pool: Mapping[str, int] | None,
                current_by_pool: Mapping[str, int], now: datetime) -> dict[str, float]:
    """The GPU-hours of [recorded.at, now) per pool, at the count held at `recorded.at` (the
    same charge `resume` adds to the total). Per pool as recorded when the recorded per-pool
    counts add up to the recorded total; otherwise the recorded total is shared in the
    proportion of the current counts (nothing per pool when no pool holds GPUs now). A
    recorded instant in the future charges nothing."""
    hours = max((now - recorded.at).total_seconds(), 0.0) / 3600.0
    if hours <= 0.0 or recorded.gpus <= 0:
        return {}
    if recorded_by_pool is not None and sum(recorded_by_pool.values()) == recorded.gpus:
        return {pool: gpus * hours for pool, gpus in recorded_by_pool.items() if gpus > 0}
    current = sum(g for g in current_by_pool.values() if g > 0)
    if current <= 0:
        return {}
    return {pool: recorded.gpus * hours * gpus / current
            for pool, gpus in current_by_pool.items() if gpus > 0}


def hourly_cost(gpus_by_pool: Mapping[str, int], pools: Mapping[str, PoolState]
                ) -> tuple[float, str | None]:
    """Cost per hour of the GPUs held, at each pool's price, and the currency (None when the
    pools' currencies differ and the sum would mean nothing)."""
    total = 0.0
    currencies = set()
    for name, gpus in gpus_by_pool.items():
        pool = pools.get(name)
        if pool is None or gpus <= 0:
            continue
        total += gpus * pool.price_per_gpu_hour
        currencies.add(pool.currency)
    if len(currencies) > 1:
        return total, None
    return total, next(iter(currencies), None)
