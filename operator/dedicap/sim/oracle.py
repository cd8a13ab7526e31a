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

A third, weaker one bounds what *holding* can save on bursty traffic, where a burst ends
before a replica started for it is ready:

- level oracle: the slow level of ``n*`` (a centred rolling median, so bursts do not move it)
  known one start-up ahead, times one multiplier for the whole trace (``level_schedule``). It
  holds headroom for bursts in proportion to the load, as a burst-aware autoscaler at best
  can, with a level it would have to estimate and a multiplier picked in hindsight. Where the
  cheapest such schedule at an attainment costs about what the cheapest static fleet does, no
  holding rule beats the static fleet there.

Two steps down from it, towards what a scaler knows: the same with a trailing level (ending
where a scaler must ask for a minute's replicas), and with the multiplier learned as well
(``learned_level_schedule``). The benchmark sets the three side by side.
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


def slow_level(per_minute: np.ndarray, window_min: int = 31, lag_min: int | None = None
               ) -> np.ndarray:
    """The rolling median of ``per_minute`` over ``window_min`` minutes: the level under the
    bursts, since bursts take a minority of the minutes. Centred (knows the future) when
    ``lag_min`` is None; else trailing, ending ``lag_min`` minutes before each minute (what a
    scaler knows when it must ask for that minute's replicas), from the first minute on."""
    n = np.asarray(per_minute, dtype=float)
    if lag_min is None:
        half = max(window_min, 1) // 2
        return np.array([float(np.median(n[max(i - half, 0):i + half + 1]))
                         for i in range(len(n))])
    ends = [max(i - lag_min, 0) for i in range(len(n))]
    return np.array([float(np.median(n[max(e - window_min + 1, 0):e + 1])) for e in ends])


def level_multipliers(per_minute: np.ndarray, coverages: tuple[float, ...],
                      window_min: int = 31, lag_min: int | None = None) -> list[float]:
    """Multipliers of the slow level whose schedule covers at least each of ``coverages`` of
    the minutes (replayed in isolation): quantiles of ``n*`` over its slow level, rounded up to
    0.01 so a sweep's parameters are short and repeatable."""
    n = np.asarray(per_minute, dtype=float)
    if len(n) == 0:
        return []
    ratio = n / np.maximum(slow_level(n, window_min, lag_min), 1.0)
    out = {math.ceil(float(np.quantile(ratio, min(max(c, 0.0), 1.0), method="higher")) * 100.0
                     - 1e-9) / 100.0 for c in coverages}
    return sorted(out)


def level_schedule(per_minute: np.ndarray, multiplier: float, window_min: int = 31,
                   lag_min: int | None = None) -> np.ndarray:
    """Replicas per minute: ``multiplier`` times the slow level, rounded up, never below one."""
    level = slow_level(per_minute, window_min, lag_min)
    return np.maximum(np.ceil(multiplier * level - 1e-9), 1).astype(int)


def learned_level_schedule(per_minute: np.ndarray, quantile: float, window_min: int = 31,
                           lag_min: int = 2, warm_min: int = 30) -> np.ndarray:
    """A trailing slow level times a multiplier learned as it goes: the ``quantile`` of the
    ratio of need to level over the minutes known so far (those ending ``lag_min`` before).
    Until ``warm_min`` minutes are known it holds the highest need seen. Nothing here looks
    ahead: it is how well holding does when the tail of the bursts must be learned."""
    n = np.asarray(per_minute, dtype=float)
    level = slow_level(n, window_min, lag_min)
    ratio = n / np.maximum(level, 1.0)
    out = np.ones(len(n), dtype=int)
    for m in range(len(n)):
        known = max(m - lag_min + 1, 1)
        if known < warm_min:
            out[m] = max(int(n[:known].max()), 1)
            continue
        mult = float(np.quantile(ratio[:known], quantile, method="higher"))
        out[m] = max(math.ceil(mult * level[m] - 1e-9), 1)
    return out
