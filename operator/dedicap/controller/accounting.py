"""GPU-hours and cost of each ModelDeployment, integrated from the GPU counts the operator
observes at every reconcile: the count seen at one observation holds until the next
(`reservations.accumulate`).

`status.cost` records the integral as a pair: `gpuHours` integrated up to `accountedAt`, and
`gpus`, the count seen then and at every observation since. The status is the record that
outlives the process, so the same rule applies across operator downtime: a restarted operator
(or a new leader after a peering handover) finds the pair and charges [accountedAt, now) at
`gpus`, since pods keep holding their GPUs while no operator watches them
(`reservations.resume`). Per pool, the gap is charged at the counts of `status.placement`
written with the pair, or, when those do not add up, in the proportion of the pools used now
(`reservations.gap_by_pool`).

The pair is rewritten when the counts change, with any other status write, and otherwise at
most every `rewrite_after` (an hour by default; `reservations.still_holds`): while the counts
stay the same, the older pair states the integral exactly, and a write only to move it would be
a write of a quiet fleet for nothing (every status write is also an event that reconciles the
ModelDeployment again). So `gpuHours` in the status may be up to that old; `accountedAt` says
up to when it counts, and `dedicap_modeldeployment_gpu_hours` is the figure up to now.

A status without `accountedAt` (written before the field existed) is continued from its
`gpuHours` without charging the gap, as nothing says since when it holds. An `accountedAt` in
the future (another operator's clock runs ahead) charges nothing for the gap.

The per-pool integrals are this process's own (exported as metrics, not written to status):
they start at its first observation, plus the gap charged then.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from dedicap.decide.accounting import (
    GPUHours,
    Priced,
    accumulate,
    gap_by_pool,
    hourly_cost,
    resume,
    still_holds,
)


@dataclass(frozen=True)
class CostReport:
    gpus: int
    hourly_cost: float
    currency: str | None
    total: GPUHours  # the integral up to now
    record: GPUHours  # what status.cost states: `total`, or an older pair that implies it
    by_pool: Mapping[str, GPUHours]

    @property
    def gpu_hours(self) -> float:
        return self.total.gpu_hours

    @property
    def since(self) -> datetime:
        return self.total.since

    def status(self, fresh: bool = False) -> dict[str, Any]:
        """`status.cost` in wire names: the record (or, `fresh`, the integral up to now, to
        ride along with a status write that happens anyway). `gpuHours`, `accountedAt` and
        `gpus` always travel together (one patch), so a reader never pairs one record's hours
        with another's instant."""
        record = self.total if fresh else self.record
        out: dict[str, Any] = {"gpus": record.gpus,
                               "gpuHours": round(record.gpu_hours, 6),
                               "hourlyCost": round(self.hourly_cost, 6),
                               "since": record.since.strftime("%Y-%m-%dT%H:%M:%SZ"),
                               # Microseconds: the next reader resumes exactly from here.
                               "accountedAt": _wire_time(record.at)}
        if self.currency:
            out["currency"] = self.currency
        return out


def _wire_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return None


def recorded_integral(cost: Mapping[str, Any] | None) -> GPUHours | None:
    """The integral a `status.cost` records, or None when it carries no `accountedAt` (an
    older status: its gpuHours end at an unknown instant)."""
    if not cost:
        return None
    at = _parse_time(cost.get("accountedAt"))
    if at is None:
        return None
    since = _parse_time(cost.get("since")) or at
    return GPUHours(float(cost.get("gpuHours") or 0.0), int(cost.get("gpus") or 0), at,
                    min(since, at))


class Accountant:
    """Per ModelDeployment: the GPU-hours integral in total and per pool. Thread-safe."""

    def __init__(self, rewrite_after: timedelta = timedelta(hours=1)) -> None:
        self.rewrite_after = rewrite_after
        self._lock = threading.Lock()
        self._total: dict[tuple[str, str], GPUHours] = {}
        self._pools: dict[tuple[str, str], dict[str, GPUHours]] = {}

    def observe(self, namespace: str, name: str, gpus_by_pool: Mapping[str, int],
                pools: Mapping[str, Priced], now: datetime,
                previous_cost: Mapping[str, Any] | None = None,
                previous_by_pool: Mapping[str, int] | None = None) -> CostReport:
        """Advance the integrals to `now` and record the GPUs held from now on.
        `previous_cost` is the status.cost found (written by this process or another one) and
        `previous_by_pool` the per-pool GPUs of the status.placement found with it."""
        key = (namespace, name)
        gpus = sum(gpus_by_pool.values())
        recorded = recorded_integral(previous_cost)
        with self._lock:
            memory = self._total.get(key)
            if memory is None and recorded is None and previous_cost:
                # An older status without accountedAt: continue its gpuHours from now.
                since = _parse_time(previous_cost.get("since")) or now
                total = GPUHours(float(previous_cost.get("gpuHours") or 0.0), gpus, now,
                                 min(since, now))
            else:
                total = resume(memory, recorded, gpus, now)
            self._total[key] = total
            per_pool = self._pools.get(key)
            if per_pool is None:
                # First sight in this process: the gap since the record, per pool.
                gap = (gap_by_pool(recorded, previous_by_pool, gpus_by_pool, now)
                       if recorded is not None else {})
                per_pool = {pool: GPUHours(hours, 0, now, now) for pool, hours in gap.items()}
                self._pools[key] = per_pool
            for pool in set(per_pool) | set(gpus_by_pool):
                per_pool[pool] = accumulate(per_pool.get(pool), gpus_by_pool.get(pool, 0), now)
            by_pool = dict(per_pool)
        record = total
        if recorded is not None and still_holds(recorded, gpus_by_pool, previous_by_pool or {},
                                                now, self.rewrite_after):
            record = recorded
        cost, currency = hourly_cost(gpus_by_pool, pools)
        return CostReport(gpus, cost, currency, total, record, by_pool)

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._total.pop((namespace, name), None)
            self._pools.pop((namespace, name), None)
