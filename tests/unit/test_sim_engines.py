"""The fluid engine (long runs) agrees with the exact, per-request engine."""

from __future__ import annotations

import numpy as np
import pytest

from dedicap.decide.policy import PolicyConfig
from dedicap.sim.baselines import PolicyScaler, StaticScaler
from dedicap.sim.simulator import SimConfig, simulate
from dedicap.sim.traces import Trace


def wave(minutes: int) -> Trace:
    t = np.arange(0, minutes * 60 + 1, 60.0)
    rate = 4000 + 2500 * np.sin(t / 900.0)
    return Trace("wave", minutes * 60.0, rate_t=t, rate=rate)


@pytest.mark.parametrize("scaler_name", ["static", "policy"])
def test_engines_agree(scaler_name: str) -> None:
    tr = wave(30)
    out = {}
    for engine in ("exact", "fluid"):
        scaler = StaticScaler(10) if scaler_name == "static" else PolicyScaler(
            PolicyConfig(latency_target_ms=100.0, max_batch_size=32, max_replicas=100))
        out[engine] = simulate(tr, scaler, SimConfig(engine=engine, slo_target_ms=100.0,
                                                     initial_replicas=10))
    ex, fl = out["exact"], out["fluid"]
    assert fl.gpu_hours == pytest.approx(ex.gpu_hours, rel=0.05)
    assert abs(fl.attainment - ex.attainment) <= 0.1
    ok = np.isfinite(ex.minute_latency_ms) & np.isfinite(fl.minute_latency_ms) & (
        ex.minute_latency_ms < 100)
    ratio = fl.minute_latency_ms[ok] / ex.minute_latency_ms[ok]
    assert np.median(ratio) == pytest.approx(1.0, abs=0.1)
    assert fl.mean_latency_ms == pytest.approx(ex.mean_latency_ms, rel=0.15)
