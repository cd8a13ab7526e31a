"""GPU-hours and cost, integrated from observed GPU counts. Pure (time comes in as arguments).

The count seen at one observation is taken to hold until the next: a replica is billed from when
it is seen until it is seen gone. `controller/accounting.py` keeps the integrals of a running
operator and writes them to `status.cost`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol


class Priced(Protocol):
    """A pool's price: a GPUPool's spec or placement's PoolState."""

    @property
    def price_per_gpu_hour(self) -> float: ...
    @property
    def currency(self) -> str: ...


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


def hourly_cost(gpus_by_pool: Mapping[str, int], pools: Mapping[str, Priced]
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
