"""The simulator's signal pipeline: what the operator reads, as Prometheus and Triton give it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dedicap.decide.policy import fast_arrivals
from dedicap.sim.baselines import StaticScaler
from dedicap.sim.service import calibrated
from dedicap.sim.simulator import SimConfig, Simulation
from dedicap.sim.traces import Trace

MODEL = calibrated("encoder-1b", queue_timeout=1.0)  # 768 req/s saturated


def steps(*parts: tuple[float, float]) -> Trace:
    """Piecewise-constant rate: (seconds, req/s) one after the other."""
    t, r, at = [], [], 0.0
    for length, rate in parts:
        t += [at, at + length - 1e-6]
        r += [rate, rate]
        at += length
    return Trace(name="steps", duration=at, rate_t=np.array(t), rate=np.array(r))


def run(trace: Trace, replicas: int, **cfg: object) -> Simulation:
    sim = Simulation(trace, StaticScaler(replicas),
                     SimConfig(service=cfg.pop("service", MODEL), slo_target_ms=100.0,
                               initial_replicas=replicas, **cfg))  # type: ignore[arg-type]
    sim.run()
    return sim


def test_rates_are_prometheus_answers_from_the_scraped_samples() -> None:
    # 100 req/s, then 400 from 600 s. At 637.5 s the fast path's window (37.5 s: samples at
    # 600, 615, 630) holds only the new level; rate(...[60s]) takes the samples 585..630, a
    # third of them before the step.
    sim = run(steps((600, 100.0), (120, 400.0)), replicas=2)
    w = sim.view.prometheus(637.5)
    assert w.timestamp == 630.0
    assert w.request_rate_short == pytest.approx(400.0, rel=0.05)
    assert w.request_rate == pytest.approx((15 * 100 + 30 * 400) / 45, rel=0.05)
    # with one sample in the window there is no rate: the policy holds, as the operator does
    assert sim.view.prometheus(20.0).timestamp is None


def test_the_summary_looks_back_48_to_60_seconds_and_reads_nan_when_idle() -> None:
    # one replica overloaded (twice its capacity, a 1-s queue timeout) from 120 s to 180 s,
    # then light load until 300 s, then nothing
    sim = run(steps((120, 100.0), (60, 1500.0), (120, 100.0), (120, 0.0)), replicas=1)
    high = 1000.0 * sim.summary_at(225.0)  # buckets from 168 s: the overload's tail
    low = 1000.0 * sim.summary_at(255.0)  # from 204 s: after the backlog timed out
    assert high > 500.0 and low < 100.0
    assert math.isnan(sim.summary_at(405.0))  # no request since 300 s


def test_the_queues_growth_makes_the_fast_arrivals_whole() -> None:
    # no queue timeout: 1000 req/s into one replica that serves 768 grows the queue by ~232/s,
    # and Triton counts only what completes
    sim = run(steps((60, 100.0), (60, 1000.0)), replicas=1,
              service=calibrated("encoder-1b", queue_timeout=None))
    w = sim.view.prometheus(112.5)
    assert w.request_rate_short == pytest.approx(MODEL.capacity(), rel=0.05)
    assert w.queue_growth == pytest.approx(1000.0 - MODEL.capacity(), rel=0.15)
    assert fast_arrivals(w) == pytest.approx(1000.0, rel=0.05)
    assert w.queue_depth > 5000.0


def test_the_last_scrape_interval_holds_a_step_the_short_window_blends() -> None:
    # 100 -> 1000 req/s at 615 s, one replica serving 768: at 637.5 s the short window
    # (samples at 600, 615, 630) holds half of the step; the interval 615-630 holds it whole,
    # its completions plus the queue's step over the scrape interval are the arrivals
    sim = run(steps((615, 100.0), (60, 1000.0)), replicas=1,
              service=calibrated("encoder-1b", queue_timeout=None))
    w = sim.view.prometheus(637.5)
    assert w.arrivals_last == pytest.approx(1000.0, rel=0.05)
    assert fast_arrivals(w) < 0.8 * 1000.0


def test_a_scrape_outage_leaves_no_rate_and_the_policy_holds() -> None:
    sim = run(steps((400, 200.0)), replicas=1, scrape_gaps=((200.0, 260.0),))
    # one sample (195 s) in the last minute: no rate, as Prometheus would answer
    assert sim.view.prometheus(247.5).timestamp is None
    assert sim.view.prometheus(277.5).timestamp is None  # only 270 s since
    w = sim.view.prometheus(292.5)
    assert w.timestamp == 285.0 and w.request_rate == pytest.approx(200.0, rel=0.1)
