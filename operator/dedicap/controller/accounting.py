"""GPU-hours and cost of each ModelDeployment, integrated from the GPU counts the operator
observes at every reconcile (see `reservations.accumulate`: the count seen at one observation
holds until the next).

The integral lives in the operator's memory and is written to `status.cost` (gpuHours, since) at
every reconcile; a restarted operator continues from the status it finds. The time the operator
was down is not charged (the count then is unknown), so gpuHours is a lower bound across
restarts: for billing-grade totals, integrate the `dedicap_modeldeployment_gpus` series in
Prometheus, which is what it is exported for.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dedicap.decide.reservations import GPUHours, PoolState, accumulate, hourly_cost


@dataclass(frozen=True)
class CostReport:
    gpus: int
    gpu_hours: float
    hourly_cost: float
    currency: str | None
    since: datetime
    by_pool: Mapping[str, GPUHours]

    def status(self) -> dict[str, Any]:
        """`status.cost` in wire names."""
        out: dict[str, Any] = {"gpus": self.gpus, "gpuHours": round(self.gpu_hours, 6),
                               "hourlyCost": round(self.hourly_cost, 6),
                               "since": self.since.strftime("%Y-%m-%dT%H:%M:%SZ")}
        if self.currency:
            out["currency"] = self.currency
        return out


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return None


class Accountant:
    """Per ModelDeployment: the GPU-hours integral in total and per pool. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total: dict[tuple[str, str], GPUHours] = {}
        self._pools: dict[tuple[str, str], dict[str, GPUHours]] = {}

    def observe(self, namespace: str, name: str, gpus_by_pool: Mapping[str, int],
                pools: Mapping[str, PoolState], now: datetime,
                previous_cost: Mapping[str, Any] | None = None) -> CostReport:
        """Advance the integrals to `now` and record the GPUs held from now on.
        `previous_cost` (the status.cost found) seeds a ModelDeployment this process has not
        seen yet."""
        key = (namespace, name)
        gpus = sum(gpus_by_pool.values())
        with self._lock:
            total = self._total.get(key)
            if total is None:
                seed = previous_cost or {}
                since = _parse_time(seed.get("since")) or now
                total = GPUHours(float(seed.get("gpuHours") or 0.0), gpus, now, min(since, now))
            else:
                total = accumulate(total, gpus, now)
            self._total[key] = total
            per_pool = self._pools.setdefault(key, {})
            for pool in set(per_pool) | set(gpus_by_pool):
                per_pool[pool] = accumulate(per_pool.get(pool), gpus_by_pool.get(pool, 0), now)
            by_pool = dict(per_pool)
        cost, currency = hourly_cost(gpus_by_pool, pools)
        return CostReport(gpus, total.gpu_hours, cost, currency, total.since, by_pool)

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._total.pop((namespace, name), None)
            self._pools.pop((namespace, name), None)
