"""Dedicated capacity, decided: reservation admission, tenant quotas, reservation usage and what
each ModelDeployment is entitled to place (placement itself is `placement.py`).

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
- **Entitlement.** A ModelDeployment naming an admitted reservation in effect that lists its
  namespace may take the reservation's GPUs not used by the tenant's other ModelDeployments, as
  reserved replicas, and its burst GPUs likewise; anything else runs as burst (`placement.py`
  says where replicas go).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from dedicap.api.models import CapacityReservation
from dedicap.decide.cluster import LABEL_CAPACITY, LABEL_RESERVATION, PodInfo
from dedicap.decide.placement import BURST, RESERVED, Entitlement

__all__ = ["BURST", "LABEL_CAPACITY", "LABEL_RESERVATION", "RESERVED", "Entitlement"]

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


def reservation_usage(r: ReservationView, pods: Iterable[PodInfo]) -> ReservationUsage:
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


# ----------------------------------------------------------------------------- entitlement


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
