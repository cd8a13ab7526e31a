"""Rate forecasting for the autoscaling policy: Holt's linear trend on irregular samples.

The policy must request a replica one start-up delay before it is needed, so it extrapolates
the request rate ``horizon`` seconds ahead. Holt's method (a smoothed level plus a smoothed
slope) follows diurnal ramps closely and reacts within a few evaluations to a change of slope;
its smoothing constants are time constants in seconds, so the filter is the same whatever the
evaluation interval is. Pure functions, no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class HoltState:
    level: float
    trend: float  # requests/s per second
    t: float  # time of the last update


def holt_update(
    prev: HoltState | None, value: float, t: float, level_tau: float, trend_tau: float
) -> HoltState:
    """Fold one observation ``value`` taken at ``t`` into the level and trend."""
    if prev is None or t <= prev.t:
        return HoltState(level=value, trend=0.0 if prev is None else prev.trend, t=t)
    dt = t - prev.t
    alpha = 1.0 - math.exp(-dt / level_tau)
    beta = 1.0 - math.exp(-dt / trend_tau)
    predicted = prev.level + prev.trend * dt
    level = predicted + alpha * (value - predicted)
    slope = (level - prev.level) / dt
    trend = prev.trend + beta * (slope - prev.trend)
    return HoltState(level=max(level, 0.0), trend=trend, t=t)


def holt_forecast(state: HoltState, horizon: float) -> float:
    """The rate expected ``horizon`` seconds after the last update (never negative)."""
    return max(state.level + state.trend * horizon, 0.0)
