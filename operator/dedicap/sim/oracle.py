"""The two oracles the benchmark compares against.

Both know the future. For every minute ``m`` the *minimum* replica count ``n*(m)`` is the
smallest count that serves that minute's actual arrivals (the very per-tick counts the
simulation replays) within the SLO, replayed in isolation with the fluid model from empty
queues; it is never below ``min_replicas``.

- lower bound: ``n*(m)`` replicas exactly during minute ``m``, no start-up delay, billed only
  while needed: ``sum(n*) / 60`` GPU-hours. No scaler can do better at that attainment.
- oracle with start-up: the same schedule, but every replica is requested one start-up delay
  before the minute that needs it and billed from the request (replayed through the simulator
  by ``ScheduleScaler`` with ``lead = startup``). Ratios are quoted against this one.
"""

from __future__ import annotations

import math

import numpy as np

from dedicap.sim import latency as lh
from dedicap.sim.dataplane import FluidDataPlane
from dedicap.sim.service import ServiceModel


def minute_minimum(
    counts: np.ndarray, tick_s: float, service: ServiceModel, slo_percentile: float,
    slo_target_ms: float, slo_error_max: float, min_replicas: int = 1, mean_work: float = 1.0,
) -> np.ndarray:
    """``n*(m)`` for every minute of the per-tick arrival ``counts``."""
    per_min = round(60.0 / tick_s)
    n_min = math.ceil(len(counts) / per_min)
    plane = FluidDataPlane(service, np.random.default_rng(0), 0.0, mean_work)
    mu = plane.table.capacity
    out = np.zeros(n_min, dtype=int)
    hist = np.zeros(lh.N_BINS)
    q = slo_percentile / 100.0
    for m in range(n_min):
        c = counts[m * per_min:(m + 1) * per_min]
        total = float(c.sum())
        if total <= 0:
            out[m] = min_replicas
            continue
        n = max(min_replicas, 1, math.ceil(total / (len(c) * tick_s) / mu))
        while True:
            plane.backlog = 0.0
            hist[:] = 0.0
            errors = 0.0
            for x in c:
                st = plane.step_count(tick_s, float(x), n, [hist])
                errors += st.rejected
            errors += plane.backlog  # still queued at the end of the minute: not served in it
            p_ms = 1000.0 * lh.quantile(hist, q)
            if (not p_ms > slo_target_ms) and errors / total <= slo_error_max:
                break
            n += 1
        out[m] = n
    return out


def lower_bound_gpu_hours(per_minute: np.ndarray, last_minute_s: float = 60.0) -> float:
    """GPU-hours of holding exactly ``n*(m)`` in each minute (the last may be partial)."""
    if len(per_minute) == 0:
        return 0.0
    full = float(per_minute[:-1].sum()) * 60.0
    return (full + float(per_minute[-1]) * last_minute_s) / 3600.0
