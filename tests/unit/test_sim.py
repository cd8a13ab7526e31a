"""The simulator: conservation of requests, Little's law, GPU-hours, start-up, timeouts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dedicap.decide.policy import PolicyConfig
from dedicap.sim.baselines import (
    HPAScaler,
    KEDAScaler,
    KPAScaler,
    PolicyScaler,
    ScheduleScaler,
    StaticScaler,
)
from dedicap.sim.dataplane import (
    ExactDataPlane,
    FluidDataPlane,
    TickStats,
    _Replica,
    run_batcher,
)
from dedicap.sim.oracle import lower_bound_gpu_hours, minute_minimum
from dedicap.sim.service import calibrated, fit_residuals
from dedicap.sim.simulator import SimConfig, Simulation, simulate
from dedicap.sim.traces import Trace

MODEL = calibrated("encoder-1b", queue_timeout=1.0)


def flat(rate: float, minutes: float, name: str = "flat") -> Trace:
    d = minutes * 60.0
    return Trace(name=name, duration=d, rate_t=np.array([0.0, d]), rate=np.array([rate, rate]))


def test_fit_matches_the_calibration() -> None:
    assert MODEL.capacity() == pytest.approx(768, rel=0.01)  # measured saturated throughput
    for _b, measured, modelled in fit_residuals(MODEL):
        assert abs(measured - modelled) < 4.5  # ms, every measured batch size


def test_batcher_dispatches_full_batches_and_waits_the_queue_delay() -> None:
    rep = _Replica()
    rep.q = [0.0, 0.0005]  # two requests, then nothing: dispatched after max_queue_delay
    st = TickStats()
    fins: list[float] = []
    starts: list[int] = []
    ends: list[int] = []
    used = run_batcher(rep, 1.0, MODEL, st, fins, starts, ends)
    assert used == 2 and st.batches == 1
    assert fins[0] == pytest.approx(0.002 + MODEL.batch_time(2))
    rep = _Replica()
    rep.q = [i * 1e-5 for i in range(40)]  # 40 at once: a full batch of 32 goes first
    fins, starts, ends = [], [], []
    run_batcher(rep, 1.0, MODEL, TickStats(), fins, starts, ends)
    assert ends[0] - starts[0] == 32


@pytest.mark.parametrize("engine", ["exact", "fluid"])
def test_requests_are_conserved(engine: str) -> None:
    # 2 replicas at 1.5x their capacity for 3 minutes: queues overflow, the timeout rejects
    sim = Simulation(flat(1.5 * 2 * MODEL.capacity(), 3), StaticScaler(2),
                     SimConfig(engine=engine, initial_replicas=2))
    res = sim.run()
    s = sim.series
    done = s["successes"].sum() + s["rejected"].sum() + s["backend"].sum() + s["unavailable"].sum()
    if engine == "exact":
        plane = sim.plane
        assert isinstance(plane, ExactDataPlane)
        left = float(sum(len(r.q) for r in plane.replicas.values()))
    else:
        assert isinstance(sim.plane, FluidDataPlane)
        left = sim.plane.backlog
    assert done + left == pytest.approx(s["arrivals"].sum(), rel=1e-9)
    assert s["rejected"].sum() > 0.2 * s["arrivals"].sum()  # a third is over capacity
    assert res.attainment == 0.0


def test_littles_law_on_a_static_run() -> None:
    sim = Simulation(flat(0.7 * 3 * MODEL.capacity(), 5), StaticScaler(3),
                     SimConfig(engine="exact", initial_replicas=3))
    res = sim.run()
    little = res.throughput * res.mean_latency_ms / 1000.0
    assert res.mean_inflight == pytest.approx(little, rel=0.1)
    assert res.throughput == pytest.approx(0.7 * 3 * MODEL.capacity(), rel=0.02)


def test_gpu_hours_of_a_static_run() -> None:
    res = simulate(flat(100.0, 30), StaticScaler(4),
                   SimConfig(initial_replicas=4, gpus_per_replica=2, price_per_gpu_hour=3.0))
    assert res.gpu_hours == pytest.approx(4 * 2 * 0.5)
    assert res.cost == pytest.approx(4 * 2 * 0.5 * 3.0)
    assert res.scored == 30 and res.attainment == 1.0


def test_startup_is_billed_and_replicas_serve_only_after_it() -> None:
    # 0 replicas for 2 minutes, then 3 asked for at minute 2 with a 60 s start-up
    plan = np.array([0, 0, 3, 3, 3])
    sim = Simulation(flat(50.0, 5), ScheduleScaler(plan, 0.0, "s"),
                     SimConfig(engine="exact", initial_replicas=0, startup_delay_s=60.0))
    res = sim.run()
    assert res.gpu_hours == pytest.approx(3 * 3 / 60.0)  # held 3 minutes (1 of them starting)
    ready = sim.series["ready"]
    assert ready[119] == 0 and ready[179] == 0 and ready[180] == 3
    assert sim.series["unavailable"][:180].sum() == sim.series["arrivals"][:180].sum()
    assert list(res.minute_met[:3]) == [0, 0, 0] and list(res.minute_met[3:]) == [1, 1]


def test_draining_replicas_finish_their_queue() -> None:
    sim = Simulation(flat(0.9 * 4 * MODEL.capacity(), 2),
                     ScheduleScaler(np.array([4, 2]), 0.0, "s"),
                     SimConfig(engine="exact", initial_replicas=4))
    sim.run()
    s = sim.series
    # everything that reached a replica before the scale-down was answered or rejected
    assert s["unavailable"].sum() == 0
    assert s["held"][60] >= 2


def test_oracle_schedule_meets_the_slo_and_bounds_the_cost() -> None:
    rates = np.concatenate([np.full(10, 2000.0), np.full(10, 6000.0), np.full(10, 1000.0)])
    t = np.arange(31) * 60.0
    tr = Trace("steps", 1800.0, rate_t=t, rate=np.append(rates, rates[-1]))
    cfg = SimConfig(engine="fluid", slo_target_ms=100.0, startup_delay_s=60.0, initial_replicas=3)
    counts = tr.tick_counts(1.0, np.random.default_rng(cfg.seed + 1000))
    nstar = minute_minimum(counts, 1.0, cfg.service, 95.0, 100.0, 0.001)
    assert nstar[5] in (math.ceil(2000 / MODEL.capacity()), math.ceil(2000 / MODEL.capacity()) + 1)
    oracle = simulate(tr, ScheduleScaler(nstar, 60.0, "oracle"), cfg)
    assert oracle.attainment >= 0.9  # the step minutes are smoothed by the rate's interpolation
    lower = lower_bound_gpu_hours(nstar)
    assert lower <= oracle.gpu_hours + 1e-9
    static = simulate(tr, StaticScaler(int(nstar.max())), cfg)
    assert oracle.gpu_hours < static.gpu_hours


@pytest.mark.parametrize("scaler", [
    PolicyScaler(PolicyConfig(latency_target_ms=100.0, max_batch_size=32, max_replicas=100)),
    HPAScaler(0.9), KEDAScaler(600.0), KPAScaler(20.0),
])
def test_every_scaler_follows_a_rise(scaler: object) -> None:
    t = np.array([0.0, 600.0, 1200.0, 1800.0])
    tr = Trace("rise", 1800.0, rate_t=t, rate=np.array([1000.0, 1000.0, 5000.0, 5000.0]))
    res = simulate(tr, scaler, SimConfig(engine="fluid", slo_target_ms=100.0,  # type: ignore[arg-type]
                                         initial_replicas=2))
    assert res.minute_held[-1] >= 5000 / MODEL.capacity()
    assert res.minute_held[5] < res.minute_held[-1]


def test_policy_scaler_state_round_trips_in_the_loop() -> None:
    tr = flat(3000.0, 10)
    cfg = SimConfig(engine="fluid", slo_target_ms=100.0, initial_replicas=5)
    pc = PolicyConfig(latency_target_ms=100.0, max_batch_size=32)
    a = simulate(tr, PolicyScaler(pc), cfg)
    b = simulate(tr, PolicyScaler(pc, roundtrip_state=True), cfg)
    assert a.gpu_hours == b.gpu_hours and a.met == b.met


def test_stale_metrics_hold_the_count() -> None:
    # Prometheus is down from minute 3 to 8 while the load falls: no scale-down meanwhile
    t = np.array([0.0, 180.0, 181.0, 600.0])
    tr = Trace("fall", 600.0, rate_t=t, rate=np.array([5000.0, 5000.0, 500.0, 500.0]))
    pc = PolicyConfig(latency_target_ms=100.0, max_batch_size=32, staleness_s=60.0)
    sim = Simulation(tr, PolicyScaler(pc), SimConfig(engine="fluid", slo_target_ms=100.0,
                                                     initial_replicas=8,
                                                     scrape_gaps=((180.0, 480.0),)))
    sim.run()
    held = sim.series["held"]
    # once the last sample is older than staleness_s (from 165 + 60 s on), nothing moves
    assert held[230:480].min() == held[230:480].max() == held[229]
    assert held[-1] < held[229]  # and once data is back, the fall is followed
