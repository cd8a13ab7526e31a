"""The autoscaling policy's invariants (property-based) and its behaviour on typical windows."""

from __future__ import annotations

import json
import math
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from dedicap.decide.policy import (
    SUMMARY_LOOKBACK_S,
    Behavior,
    ObservationWindow,
    PolicyConfig,
    PolicyState,
    capacity_per_replica,
    decide,
)

CFG = PolicyConfig(min_replicas=1, max_replicas=50, latency_target_ms=100.0, max_batch_size=32)


def served_window(now: float, rate: float, ready: int, latency_ms: float = 40.0,
                  starting: int = 0, **over: float) -> ObservationWindow:
    """A window as a healthy encoder-1b fleet would report it (S(b) = 8 ms + 1.05 ms * b)."""
    per = rate / max(ready, 1)
    b = max(1.0, min(32.0, per * 0.03))
    base = ObservationWindow(
        timestamp=now - 5.0, window_s=60.0, request_rate=rate, success_rate=rate,
        rejected_rate=0.0, backend_failure_rate=0.0, mean_latency_ms=latency_ms * 0.6,
        latency_quantile_ms=latency_ms, queue_depth=ready * b * 0.5, mean_queue_ms=5.0,
        mean_compute_ms=8.0 + 1.05 * b, mean_batch_size=b, ready_replicas=ready,
        starting_replicas=starting, current_replicas=ready + starting,
    )
    return replace(base, **over)  # type: ignore[arg-type]


windows = st.builds(
    ObservationWindow,
    timestamp=st.one_of(st.none(), st.floats(0, 1000)),
    window_s=st.just(60.0),
    request_rate=st.one_of(st.just(math.nan), st.floats(0, 50_000)),
    success_rate=st.floats(0, 50_000),
    rejected_rate=st.floats(0, 1000),
    backend_failure_rate=st.floats(0, 1000),
    mean_latency_ms=st.one_of(st.just(math.nan), st.floats(0, 10_000)),
    latency_quantile_ms=st.one_of(st.just(math.nan), st.floats(0, 10_000)),
    queue_depth=st.one_of(st.just(math.nan), st.floats(0, 100_000)),
    mean_queue_ms=st.one_of(st.just(math.nan), st.floats(0, 5000)),
    mean_compute_ms=st.one_of(st.just(math.nan), st.floats(0.1, 500)),
    mean_batch_size=st.one_of(st.just(math.nan), st.floats(1, 64)),
    ready_replicas=st.integers(0, 80),
    starting_replicas=st.integers(0, 20),
    current_replicas=st.integers(0, 100),
)
configs = st.builds(
    PolicyConfig,
    min_replicas=st.integers(0, 10),
    max_replicas=st.integers(0, 60),
    latency_target_ms=st.floats(10, 1000),
    max_batch_size=st.one_of(st.none(), st.integers(1, 128)),
    startup_delay_s=st.floats(0, 300),
)


@settings(max_examples=300, deadline=None)
@given(cfg=configs, seq=st.lists(windows, min_size=1, max_size=8),
       limit=st.one_of(st.none(), st.integers(0, 70)))
def test_never_outside_min_max_or_reservation(cfg: PolicyConfig, seq: list[ObservationWindow],
                                               limit: int | None) -> None:
    state = PolicyState()
    hi = cfg.max_replicas if limit is None else min(cfg.max_replicas, limit)
    lo = min(cfg.min_replicas, hi)
    for i, w in enumerate(seq):
        d = decide(cfg, w, state, now=1000.0 + 15.0 * i, replica_limit=limit)
        assert lo <= d.replicas <= hi
        assert d.reason
        state = d.state


@settings(max_examples=300, deadline=None)
@given(cfg=configs, w=windows, age=st.floats(0, 10_000), warm=st.lists(windows, max_size=4))
def test_no_scale_down_without_fresh_data(cfg: PolicyConfig, w: ObservationWindow, age: float,
                                          warm: list[ObservationWindow]) -> None:
    state = PolicyState()
    now = 2000.0
    for i, x in enumerate(warm):
        state = decide(cfg, x, state, now=now - 100 + i).state
    stale = age > cfg.staleness_s
    for blind in (replace(w, timestamp=None), replace(w, timestamp=now - age) if stale else None,
                  replace(w, timestamp=now, request_rate=math.nan, success_rate=math.nan)):
        if blind is None:
            continue
        d = decide(cfg, blind, state, now)
        hi = min(cfg.max_replicas, 10**9)
        assert d.replicas >= min(blind.current_replicas, hi)


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(100, 20_000), ready=st.integers(1, 40),
       lat=st.lists(st.floats(1, 5000), min_size=2, max_size=2),
       queue=st.floats(0, 50_000), warm_steps=st.integers(0, 6))
def test_monotone_in_latency(rate: float, ready: int, lat: list[float], queue: float,
                             warm_steps: int) -> None:
    state = PolicyState()
    now = 0.0
    for _ in range(warm_steps):
        now += 15.0
        state = decide(CFG, served_window(now, rate, ready), state, now).state
    now += 15.0
    lo_lat, hi_lat = sorted(lat)
    a = decide(CFG, served_window(now, rate, ready, lo_lat, queue_depth=queue), state, now)
    b = decide(CFG, served_window(now, rate, ready, hi_lat, queue_depth=queue), state, now)
    assert b.replicas >= a.replicas


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(100, 20_000), ready=st.integers(1, 40), backend=st.floats(0, 1.0))
def test_backend_failures_never_scale_up(rate: float, ready: int, backend: float) -> None:
    state = PolicyState()
    for i in range(4):
        state = decide(CFG, served_window(15.0 * i, rate, ready), state, 15.0 * i).state
    now = 60.0
    ok = served_window(now, rate, ready)
    failing = replace(ok, success_rate=rate * (1 - backend), backend_failure_rate=rate * backend)
    a, b = decide(CFG, ok, state, now), decide(CFG, failing, state, now)
    assert b.replicas <= a.replicas
    if backend > CFG.error_rate_max:
        assert "BACKEND" in b.reason


@settings(max_examples=60, deadline=None)
@given(seq=st.lists(st.tuples(st.floats(0, 20_000), st.floats(1, 3000), st.integers(1, 30)),
                    min_size=1, max_size=12))
def test_state_survives_json_and_decisions_are_deterministic(
        seq: list[tuple[float, float, int]]) -> None:
    s1, s2 = PolicyState(), PolicyState()
    for i, (rate, lat, ready) in enumerate(seq):
        now = 15.0 * (i + 1)
        w = served_window(now, rate, ready, lat)
        d1 = decide(CFG, w, s1, now)
        d2 = decide(CFG, w, s2, now)
        assert (d1.replicas, d1.reason) == (d2.replicas, d2.reason)
        s1 = d1.state
        s2 = PolicyState.from_dict(json.loads(json.dumps(d2.state.to_dict())))
    assert s1 == s2


def test_learns_capacity_near_the_calibrated_replica() -> None:
    # encoder-1b saturates near 770 req/s with full batches of 32
    state = PolicyState()
    for i, per in enumerate([200, 300, 450, 600, 700, 500, 650]):
        now = 15.0 * (i + 1)
        state = decide(CFG, served_window(now, per * 10, 10), state, now).state
    cap = capacity_per_replica(CFG, state, now)
    assert cap is not None
    assert 0.75 * 770 <= cap <= 770


def test_scales_up_at_once_on_a_capacity_breach() -> None:
    state = PolicyState()
    for i in range(8):
        state = decide(CFG, served_window(15.0 * i, 6000, 10), state, 15.0 * i).state
    now = 120.0
    w = served_window(now, 12_000, 10, latency_ms=900.0, queue_depth=20_000.0,
                      rejected_rate=100.0, success_rate=7_700.0)  # saturated: 770 each
    d = decide(CFG, w, state, now)
    assert d.direction == "up"
    assert d.replicas >= 16  # twice the load, at once (the step limit allows 100%)


def test_scales_down_slowly_and_within_the_step_limit() -> None:
    cfg = replace(CFG, behavior=Behavior(
        scale_down_stabilization_s=180.0, scale_down_max_percent=20,
        scale_down_max_replicas=1, scale_down_period_s=60.0))
    state = PolicyState()
    now = 0.0
    current = 20
    for _ in range(20):  # busy for 5 minutes
        now += 15.0
        d = decide(cfg, served_window(now, 13_000, current), state, now)
        state, current = d.state, d.replicas
    assert current >= 19
    seen = [current]
    times = []
    for _ in range(40):  # the load falls to a quarter
        now += 15.0
        d = decide(cfg, served_window(now, 3000, current, latency_ms=20.0), state, now)
        state = d.state
        if d.replicas != current:
            times.append(now)
            assert current - d.replicas <= max(1, math.floor(0.2 * current))
        current = d.replicas
        seen.append(current)
    assert times and times[0] >= 300.0 + 180.0 - 15.0  # not before the stabilization window
    assert seen[-1] < seen[0]


def test_forecast_requests_ahead_of_a_ramp() -> None:
    state = PolicyState()
    now = 0.0
    rate = 3000.0
    ready = 6
    last = None
    for _ in range(30):  # +40 req/s every 15 s
        now += 15.0
        rate += 40.0
        last = decide(CFG, served_window(now, rate, ready), state, now)
        state = last.state
        ready = last.replicas
    assert last is not None
    assert last.forecast_rps > rate  # the forecast leads the observed rate


def test_holds_on_stale_data_even_when_idle() -> None:
    state = PolicyState()
    w = served_window(0.0, 0.0, 10, latency_ms=math.nan)
    d = decide(CFG, replace(w, timestamp=-1000.0), state, 0.0)
    assert d.replicas == 10 and d.direction == "hold" and "stale" in d.reason


def test_an_idle_fleet_that_never_saw_traffic_shrinks_to_min_after_stabilization() -> None:
    # No request has ever arrived, so no capacity could be learned; fresh data saying "zero"
    # is not blindness: the fleet goes to minReplicas, but not before the stabilization window.
    cfg = replace(CFG, min_replicas=2, behavior=Behavior(scale_down_stabilization_s=120.0))
    state = PolicyState()
    idle = dict(latency_ms=math.nan, mean_compute_ms=math.nan, mean_batch_size=math.nan,
                queue_depth=0.0)
    seen = []
    ready = 6
    for i in range(40):
        now = 15.0 * (i + 1)
        d = decide(cfg, served_window(now, 0.0, ready, **idle), state, now)
        state, ready = d.state, d.replicas
        seen.append((now, ready))
    assert all(n == 6 for t, n in seen if t < 120.0)
    assert seen[-1][1] == 2
    assert "no traffic" in d.reason


def test_reservation_limit_wins_over_min_replicas() -> None:
    cfg = replace(CFG, min_replicas=5)
    d = decide(cfg, served_window(0.0, 100.0, 5), PolicyState(), 0.0, replica_limit=3)
    assert d.replicas == 3


def _run(cfg: PolicyConfig, rates: list[float], start_ready: int) -> list[int]:
    state = PolicyState()
    ready = start_ready
    out = []
    for i, rate in enumerate(rates):
        now = 15.0 * (i + 1)
        d = decide(cfg, served_window(now, rate, ready, latency_ms=30.0), state, now)
        state, ready = d.state, d.replicas
        out.append(ready)
    return out


def test_burst_memory_holds_capacity_after_a_burst_then_lets_go() -> None:
    quiet, burst = 1000.0, 8000.0
    rates = [quiet] * 30 + [burst] * 12 + [quiet] * 200  # 7.5 min quiet, a 3-min burst, 50 min
    counts = _run(CFG, rates, 2)
    peak = max(counts)
    assert peak >= burst / 770
    after = counts[42 + 20:42 + 60]  # 5 to 15 minutes after the burst: mostly still held
    assert min(after) >= math.ceil(0.6 * burst / 770)  # the peak decays with a 30-min half-life
    assert max(counts[:30]) <= 3
    assert counts[-1] <= 3  # released once burst_memory_s has passed


def test_smooth_ramps_do_not_count_as_bursts() -> None:
    rates = [3000.0 + 10.0 * i for i in range(120)] + [4190.0 - 10.0 * i for i in range(120)]
    state = PolicyState()
    ready = 5
    for i, rate in enumerate(rates):
        now = 15.0 * (i + 1)
        d = decide(CFG, served_window(now, rate, ready), state, now)
        state, ready = d.state, d.replicas
        assert "burst" not in d.reason
    assert state.last_jump_t is None


def _steady(cfg: PolicyConfig, rate: float, minutes: int, state: PolicyState,
            t0: float = 0.0, latency_ms: float = 70.0) -> tuple[PolicyState, list[int]]:
    """Evaluations every 15 s of a steady load served by the count the policy asks for."""
    ready = 10
    counts = []
    for i in range(minutes * 4):
        now = t0 + 15.0 * (i + 1)
        d = decide(cfg, served_window(now, rate, ready, latency_ms=latency_ms), state, now)
        state, ready = d.state, d.replicas
        counts.append(ready)
    return state, counts


def test_error_budget_tightens_a_smooth_fleet_up_to_the_saturated_capacity() -> None:
    cfg = replace(CFG, budget_step=0.05, miss_budget=0.01)  # faster than the default, same law
    state, counts = _steady(cfg, 6000.0, 600, PolicyState())
    assert state.budget > 1.05  # ten hours of met windows at high load
    assert state.budget <= 1.0 / cfg.utilization + 1e-9  # never past the saturated throughput
    assert counts[-1] < counts[40]  # fewer replicas for the same load than at the start
    off, off_counts = _steady(replace(cfg, miss_budget=0.0), 6000.0, 600, PolicyState())
    assert off.budget == 1.0 and off_counts[-1] >= counts[-1]


def test_error_budget_a_missed_steady_window_costs_what_many_met_ones_earned() -> None:
    state, _ = _steady(CFG, 6000.0, 120, PolicyState())
    before = state.budget
    assert before > 1.0
    now = 120 * 60.0 + 60.0
    ready = 9
    w = served_window(now, 6000.0, ready, latency_ms=140.0, queue_depth=ready * 20.0)
    d = decide(CFG, w, state, now)
    assert math.isclose(d.state.budget, before * (1.0 - CFG.budget_step))
    # the fast latency gain creeping back must not undo the budget's verdict
    for i in range(1, 9):
        t = now + 15.0 * i
        d = decide(CFG, served_window(t, 6000.0, d.replicas, latency_ms=50.0), d.state, t)
    assert d.state.budget < before
    # what one miss takes back, (1-b)/b met windows give: the factor settles near b misses
    b = CFG.miss_budget
    per_met = CFG.budget_step * b / (1.0 - b)
    assert math.isclose(CFG.budget_step / per_met, (1.0 - b) / b)


def test_error_budget_ignores_low_load_and_rises_faster_than_replicas_start() -> None:
    low, _ = _steady(CFG, 1000.0, 300, PolicyState())  # one replica at a third of its capacity
    assert low.budget == 1.0
    state, _ = _steady(CFG, 6000.0, 60, PolicyState())
    now = 61 * 60.0
    # the rate doubled within one start-up delay and the latency broke: not a headroom verdict
    w = served_window(now, 12_000.0, 9, latency_ms=400.0, queue_depth=5000.0)
    assert decide(CFG, w, state, now).state.budget == state.budget


def test_a_latency_window_from_before_a_scale_up_does_not_lower_the_gain() -> None:
    # Triton's summaries look back a whole window: right after new replicas start serving,
    # the quantile still shows the overload the smaller fleet had. That says nothing about
    # what each replica of the larger fleet serves, so it must not lower the gain.
    state, _ = _steady(CFG, 3000.0, 30, PolicyState())  # 5-ish replicas, steady
    t = 31 * 60.0
    d = decide(CFG, served_window(t, 3000.0, 4, latency_ms=70.0), state, t)
    t += 15.0
    grown = decide(CFG, served_window(t, 3000.0, 4, latency_ms=70.0,
                                      current_replicas=6), d.state, t)
    # two evaluations later the two new replicas serve; the quantile still shows the breach
    t += 30.0
    w = served_window(t, 3000.0, 6, latency_ms=160.0, current_replicas=6)
    after = decide(CFG, w, grown.state, t)
    assert after.state.gain == grown.state.gain
    # the same breach on a fleet that has not changed for a window does lower it
    state2, _ = _steady(CFG, 3000.0, 30, PolicyState())
    steady_n = state2.history[-1][1]
    t2 = 31 * 60.0
    w2 = served_window(t2, 3000.0, steady_n, latency_ms=160.0,
                       queue_depth=steady_n * 40.0)
    assert decide(CFG, w2, state2, t2).state.gain < state2.gain


def test_a_draining_backlog_is_not_a_breach_to_step_up_for() -> None:
    state, _ = _steady(CFG, 3000.0, 30, PolicyState())
    n = state.history[-1][1]
    t = 31 * 60.0
    deep = n * 32.0 * 4  # four full batches per replica wait
    first = decide(CFG, served_window(t, 3000.0, n, latency_ms=900.0, queue_depth=deep),
                   state, t)
    assert "one step up" in first.reason  # a deep queue, nothing starting: step up
    k = first.replicas
    t += 15.0
    # the step is served (nothing starting) and the queue is half gone: it is draining
    draining = decide(CFG, served_window(t, 3000.0, k, latency_ms=900.0,
                                         queue_depth=deep / 2), first.state, t)
    assert "one step up" not in draining.reason and draining.replicas == k
    t += 15.0
    # it grew again: the fleet is still short
    growing = decide(CFG, served_window(t, 3000.0, k, latency_ms=900.0,
                                        queue_depth=deep), draining.state, t)
    assert "one step up" in growing.reason and growing.replicas > k


def test_no_second_step_up_before_the_new_replicas_have_served_an_interval() -> None:
    state, _ = _steady(CFG, 3000.0, 30, PolicyState())
    n = state.history[-1][1]
    t = 31 * 60.0
    deep = n * 32.0 * 4
    first = decide(CFG, served_window(t, 3000.0, n, latency_ms=900.0, queue_depth=deep),
                   state, t)
    k = first.replicas
    assert k > n
    t += 15.0
    # the new replicas just became ready; the old fleet's backlog grew meanwhile
    settling = decide(CFG, served_window(t, 3000.0, k, latency_ms=900.0,
                                         queue_depth=1.5 * deep), first.state, t)
    assert "one step up" not in settling.reason and settling.replicas == k
    t += 15.0
    # a whole interval with them, and the queues still grow: the fleet is still short
    short = decide(CFG, served_window(t, 3000.0, k, latency_ms=900.0, queue_depth=2 * deep),
                   settling.state, t)
    assert "one step up" in short.reason and short.replicas > k


def test_a_stale_quantile_over_shallow_queues_does_not_cut_the_gain() -> None:
    state, _ = _steady(CFG, 3000.0, 30, PolicyState())
    n = state.history[-1][1]
    t = 31 * 60.0
    w = served_window(t, 3000.0, n, latency_ms=900.0, queue_depth=float(n))
    d = decide(CFG, w, state, t)
    assert d.state.gain == state.gain
    assert "one step up" not in d.reason


def test_a_steady_replica_that_breaks_records_the_load_it_broke_at() -> None:
    now = 0.0
    state = PolicyState()
    for _ in range(8):
        now += 15.0
        state = decide(CFG, served_window(now, 650, 1), state, now).state
    assert state.breach_rps == 0.0
    now += 15.0
    state = decide(CFG, served_window(now, 720, 1, latency_ms=300.0, queue_depth=200.0),
                   state, now).state
    assert state.breach_rps == 720.0 and state.breach_t == now
    # a breach while replicas start is the fleet catching up, not a replica's limit
    now += 15.0
    state = decide(CFG, served_window(now, 700, 1, latency_ms=300.0, queue_depth=200.0,
                                      starting=1), state, now).state
    assert state.breach_rps == 720.0


def test_no_scale_down_back_to_a_load_per_replica_where_the_capacity_broke() -> None:
    """The capacity is a belief; a steady replica that broke at a load says more. Two replicas
    at 600 req/s, which the belief gives to one: with no evidence they go down to one, after
    one replica broke at 600 req/s they stay two."""

    def settle(state: PolicyState) -> tuple[int, str]:
        now, current, reason = 0.0, 2, ""
        for _ in range(30):  # past the stabilization window
            now += 15.0
            d = decide(CFG, served_window(now, 600, current, latency_ms=30.0), state, now)
            state, current, reason = d.state, d.replicas, d.reason
            assert d.capacity_rps > 600.0  # the belief: one replica would do
        return current, reason

    assert settle(PolicyState())[0] == 1
    held, why = settle(PolicyState(breach_rps=600.0, breach_t=0.0))
    assert held == 2 and "broke at 600 req/s" in why


def test_a_met_window_above_the_recorded_breach_clears_it() -> None:
    now = 100.0
    state = PolicyState(breach_rps=400.0, breach_t=now)
    for _ in range(3):
        now += 15.0
        state = decide(CFG, served_window(now, 500, 1, latency_ms=30.0), state, now).state
    assert state.breach_rps == 0.0 and state.breach_t is None


def test_a_vanishing_recorded_breach_holds_instead_of_overflowing() -> None:
    # a breach recorded at a load that underflows (a token policy's units, say) makes the
    # count it asks for infinite: the scale-down holds rather than raising
    state, now, current = PolicyState(breach_rps=5e-324, breach_t=0.0), 0.0, 2
    for _ in range(30):
        now += 15.0
        # (no quantile read: nothing clears the record)
        d = decide(CFG, served_window(now, 600, current, latency_quantile_ms=math.nan), state,
                   now)
        state, current = d.state, d.replicas
    assert current == 2


def _slow_series(rate: float, latency_ms: float, minutes: float,
                 compute: tuple[float, float] = (8.0, 1.05)) -> list[tuple[float, int, str]]:
    """(time, replicas, reason) of a fleet starting on one replica at a steady load whose
    latency quantile stays at `latency_ms` with queues under a batch per replica."""
    now, current, state, out = 0.0, 1, PolicyState(), []
    while now < minutes * 60.0:
        now += 15.0
        b = max(1.0, min(32.0, rate / current * 0.03))
        w = served_window(now, rate, current, latency_ms=latency_ms, queue_depth=current * 4.0,
                          mean_compute_ms=compute[0] + compute[1] * b)
        d = decide(CFG, w, state, now)
        state, current = d.state, d.replicas
        out.append((now, current, d.reason))
    return out


def test_a_replica_slow_rather_than_queued_gets_a_step_once_the_summary_covers_only_it() -> None:
    """One replica at 600 req/s, which the fit believes it serves (knee 692 req/s), has a p95
    of 150 ms over a 100-ms target with queues under a batch: large batches at random
    arrivals. While the quantile may still hold older requests, nothing; once the fleet has
    been calm for longer than the summary looks back, one step up, and the gain learns."""
    series = _slow_series(600.0, 150.0, 5)
    steps = [(t, n) for t, n, why in series if "one step up" in why]
    assert steps, "the latency never counted"
    t_step, n_step = steps[0]
    # calm from the first evaluation (15 s): the quantile holds only it after 60 s + 15 s
    assert t_step >= 15.0 + SUMMARY_LOOKBACK_S + CFG.evaluation_interval_s
    assert n_step == 2
    # the same fleet within the target: no step
    assert all(n == 1 for _, n, _ in _slow_series(600.0, 80.0, 5))


def test_a_latency_more_replicas_do_not_lower_costs_one_replica_not_the_maximum() -> None:
    # the quantile stays at 150 ms whatever the fleet: after one step each replica carries
    # under half of what it saturates at, and the latency is no longer the load's
    series = _slow_series(600.0, 150.0, 15)
    assert max(n for _, n, _ in series) == 2 and series[-1][1] == 2
    # a latency no load explains from the start: no step at all
    assert all(n == 1 for _, n, _ in _slow_series(100.0, 150.0, 10))


def test_a_model_slower_than_the_target_is_not_chased_over_shallow_queues() -> None:
    # a lone request's batch takes 60 ms against a 100-ms target (2 x 60 ms > it): smaller
    # batches cannot meet it, so the latency over shallow queues never asks for a step (the
    # capacity, learned from the same fit, already sizes such a fleet by throughput)
    series = _slow_series(60.0, 150.0, 10, compute=(60.0, 1.0))
    assert not any("one step up" in why for _, _, why in series)
