"""The policy's fast path: arrivals from the short window, panic, summaries as confirmation, and
the burst-aware headroom."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st
from test_policy import CFG, _steady, served_window

from dedicap.decide.policy import (
    ObservationWindow,
    PolicyConfig,
    PolicyState,
    burst_level,
    decide,
    fast_arrivals,
)


def test_fast_arrivals_are_completions_plus_the_queues_growth() -> None:
    w = ObservationWindow(timestamp=0.0, request_rate_short=80.0, queue_growth=30.0)
    assert fast_arrivals(w) == 110.0
    # while a backlog drains, the completions count it a second time
    assert fast_arrivals(replace(w, queue_growth=-50.0)) == 30.0
    assert fast_arrivals(replace(w, queue_growth=-500.0)) == 0.0
    assert fast_arrivals(replace(w, queue_growth=math.nan)) == 80.0
    assert math.isnan(fast_arrivals(ObservationWindow(timestamp=0.0)))


def learned(rate: float = 3000.0) -> tuple[PolicyState, int]:
    """Half an hour of a steady fleet: its state and its count."""
    state, counts = _steady(CFG, rate, 30, PolicyState())
    return state, counts[-1]


def test_a_step_is_met_at_once_from_the_fast_path() -> None:
    state, n = learned()
    t = 30 * 60.0 + 15.0
    # 15 s after a 4x step: the 60-s window has seen a quarter of it, the short window all of
    # it (what Triton completed) and the queues grow by the rest
    w = served_window(t, 3000.0 * 1.75, n, latency_ms=80.0, request_rate_short=9000.0,
                      queue_growth=3000.0, queue_depth=n * 32.0 * 3)
    d = decide(CFG, w, state, t)
    need = math.ceil(12_000.0 / d.capacity_rps)  # the capacity as learned with this window
    assert d.replicas >= need and "panic" in d.reason
    # one replica beyond the arrivals' count, to drain the backlog: no more
    assert d.replicas <= need + 1
    # without the fast path the same window asks for fewer
    slow = decide(CFG, replace(w, request_rate_short=math.nan, queue_growth=math.nan), state, t)
    assert slow.replicas < d.replicas


def test_a_step_within_the_short_window_is_sized_from_the_last_scrape_interval() -> None:
    # A 4x step that began between the short window's first samples: the window averages it
    # with the old level (7,500 req/s arriving, by its completions and least-squares growth),
    # the last scrape interval alone holds it whole (12,000). Sizing from the blend took a
    # second decision a scrape later, after the SLO was back.
    state, n = learned()
    t = 30 * 60.0 + 15.0
    w = served_window(t, 3000.0 * 1.5, n, latency_ms=80.0, request_rate_short=6000.0,
                      queue_growth=1500.0, queue_depth=n * 32.0 * 3, arrivals_last=12_000.0)
    d = decide(CFG, w, state, t)
    need = math.ceil(12_000.0 / d.capacity_rps)
    assert need <= d.replicas <= need + 1 and "panic: 12000 req/s" in d.reason
    blended = decide(CFG, replace(w, arrivals_last=math.nan), state, t)
    assert blended.replicas < d.replicas


def test_the_remainder_of_a_step_is_sized_from_the_last_interval_while_queues_are_deep(
        ) -> None:
    # After a panic whose first view held part of a 4x step, the replicas it asked for are
    # ready: 8,000 req/s are served while the old replica's backlog drains, so the short
    # window reads 7,000 arriving, below the panic's threshold for that fleet; the last scrape
    # interval alone holds the step whole (12,000). On the live stack the demand path took
    # the rest of the step in two decisions from the blend, the last at the recovery instant.
    state, _ = learned()
    t = 30 * 60.0 + 15.0
    cap = decide(CFG, served_window(t, 3000.0, 3), state, t).capacity_rps
    ready = math.ceil(7000.0 / cap)
    w = served_window(t, 4500.0, ready, latency_ms=1500.0, request_rate_short=8000.0,
                      queue_growth=-1000.0, queue_depth=ready * 32.0 * 3,
                      arrivals_last=12_000.0)
    d = decide(CFG, w, state, t)
    assert "panic" not in d.reason and "now 12000" in d.reason, d.reason
    assert d.replicas >= math.ceil(12_000.0 / d.capacity_rps), d.reason
    blended = decide(CFG, replace(w, arrivals_last=math.nan), state, t)
    assert blended.replicas < d.replicas, blended.reason
    # with the SLO met, one interval's count is noise to the demand path: it changes nothing
    met = replace(w, latency_quantile_ms=80.0, mean_latency_ms=50.0)
    assert (decide(CFG, met, state, t).replicas
            == decide(CFG, replace(met, arrivals_last=math.nan), state, t).replicas)


def test_one_busy_scrape_interval_alone_does_not_panic() -> None:
    # The trigger stays with the short window: a last interval 2.5x the level (a spike of a
    # few seconds) with the window and the queues quiet changes nothing
    state, n = learned()
    t = 30 * 60.0 + 15.0
    w = served_window(t, 3000.0, n, request_rate_short=3000.0, queue_growth=0.0)
    quiet = decide(CFG, w, state, t)
    spiky = decide(CFG, replace(w, arrivals_last=2.5 * 3000.0), state, t)
    assert spiky.replicas == quiet.replicas and "panic" not in spiky.reason


def test_no_second_scale_up_once_the_new_replicas_serve() -> None:
    # After the step's replicas serve, Triton's summaries still show the overload for up to a
    # minute: with the fast path saying the arrivals are served and the backlog drains, that
    # stale breach is confirmation of nothing, and the count stays.
    state, n = learned()
    t = 30 * 60.0 + 15.0
    w = served_window(t, 5250.0, n, latency_ms=80.0, request_rate_short=9000.0,
                      queue_growth=3000.0, queue_depth=n * 96.0)
    first = decide(CFG, w, state, t)
    k = first.replicas
    s = first.state
    for i in range(1, 6):  # 75 s: the replicas start, serve, the backlog drains
        t += 15.0
        ready = k if i >= 2 else n
        # 12,000 req/s arrive throughout: first 9,000 served while the queues grow, then
        # 13,000 while the backlog drains
        w = served_window(t, 12_000.0 if i >= 4 else 9000.0, ready, latency_ms=1500.0,
                          starting=k - ready,
                          request_rate_short=13_000.0 if i >= 2 else 9000.0,
                          queue_growth=-1000.0 if i >= 2 else 3000.0,
                          queue_depth=n * 96.0 / i)
        d = decide(CFG, w, s, t)
        s = d.state
        assert d.replicas <= k, (i, d.reason)


def test_panic_drains_only_a_deep_backlog_and_needs_a_real_overload() -> None:
    state, n = learned()
    t = 30 * 60.0 + 15.0
    # arrivals 20% over the fleet's planned capacity: within what it serves at the SLO
    near = served_window(t, 3000.0, n, request_rate_short=1.2 * 3000.0, queue_growth=0.0)
    assert "panic" not in decide(CFG, near, state, t).reason
    # a deep queue that shrinks is being served: no panic either
    shrinking = served_window(t, 3000.0, n, queue_depth=n * 32.0 * 4,
                              request_rate_short=3000.0, queue_growth=-100.0)
    assert "panic" not in decide(CFG, shrinking, state, t).reason
    # a deep queue that grows is
    growing = replace(shrinking, queue_growth=200.0)
    assert "panic" in decide(CFG, growing, state, t).reason
    # and with panic disabled, the fast path still follows the burst
    off = replace(CFG, panic_threshold=0.0)
    assert "panic" not in decide(off, growing, state, t).reason
    # a quiet fleet whose queues hold almost a batch per replica, one more than a moment ago:
    # at 100 req/s that takes longer than half the target to serve, but it is what batching
    # holds at any load, not a backlog. One request more than a batch is.
    quiet, m = learned(100.0)
    shallow = served_window(t, 100.0, m, latency_ms=30.0, queue_depth=m * 32.0 - 1.0,
                            request_rate_short=100.0, queue_growth=1.0)
    assert "panic" not in decide(CFG, shallow, quiet, t).reason
    assert "panic" in decide(CFG, replace(shallow, queue_depth=m * 32.0 + 1.0), quiet, t).reason


@settings(max_examples=150, deadline=None)
@given(rate=st.floats(100, 20_000), short=st.floats(0, 60_000), growth=st.floats(-5000, 5000),
       queue=st.floats(0, 50_000), ready=st.integers(1, 40))
def test_the_fast_path_provisions_a_burst_and_never_scales_down(
        rate: float, short: float, growth: float, queue: float, ready: int) -> None:
    state, _ = learned()
    t = 30 * 60.0 + 15.0
    base = served_window(t, rate, ready, queue_depth=queue, current_replicas=ready)
    fast = replace(base, request_rate_short=short, queue_growth=growth)
    with_fast, without = decide(CFG, fast, state, t), decide(CFG, base, state, t)
    arriving = fast_arrivals(fast)
    if arriving > 1.5 * rate:  # a burst under way: its arrivals get replicas at once
        need = math.ceil(arriving / with_fast.capacity_rps - 1e-9)
        assert (with_fast.replicas >= min(need, CFG.max_replicas)
                or with_fast.limited_by == "scale-up step limit")
    # scaling down stays the slow path's call
    assert with_fast.direction != "down" or without.direction == "down"


def test_burst_level_is_the_quantile_of_the_fast_rates_kept() -> None:
    fast = tuple((float(i), float(r)) for i, r in enumerate([10] * 95 + [100] * 5))
    assert burst_level(CFG, fast) == 10.0  # bursts 5% of the time: p95 is the background
    fast = tuple((float(i), float(r)) for i, r in enumerate([10] * 90 + [100] * 10))
    assert burst_level(CFG, fast) == 100.0  # 10%: their level is held
    assert burst_level(replace(CFG, burst_quantile=0.0), fast) is None
    assert burst_level(CFG, ()) is None


def _bursts(cfg: PolicyConfig, every: int, length: int, minutes: int
            ) -> tuple[list[int], PolicyState]:
    """A background of 1000 req/s with 8000-req/s bursts of `length` evaluations every
    `every`, read by the fast path (the rate window sees a third of each), the fleet asked."""
    state, ready = PolicyState(), 2
    counts = []
    for i in range(minutes * 4):
        now = 15.0 * (i + 1)
        on = i % every < length
        fast = 8000.0 if on else 1000.0
        slow = 1000.0 + (7000.0 / 3 if on else 0.0)
        d = decide(cfg, served_window(now, slow, ready, request_rate_short=fast,
                                      queue_growth=0.0), state, now)
        state, ready = d.state, d.replicas
        counts.append(ready)
    return counts, state


def test_frequent_bursts_are_held_rare_ones_chased() -> None:
    cfg = replace(CFG, burst_headroom=0.0)  # the learned headroom alone
    frequent, _ = _bursts(cfg, every=8, length=2, minutes=60)  # a 30-s burst every 2 minutes
    rare, _ = _bursts(cfg, every=120, length=2, minutes=60)  # one every 30 minutes
    # between bursts, late in the run: frequent ones keep their level, rare ones do not
    between_frequent = [c for i, c in enumerate(frequent) if i > 120 and i % 8 >= 4]
    between_rare = [c for i, c in enumerate(rare) if i > 130 and i % 120 >= 40]
    assert min(between_frequent) >= math.ceil(8000 / 770)
    assert max(between_rare) < math.ceil(8000 / 770)


def test_smooth_traffic_holds_no_burst_headroom() -> None:
    state, counts = _steady(CFG, 3000.0, 30, PolicyState())
    t = 30 * 60.0 + 15.0
    d = decide(CFG, served_window(t, 3000.0, counts[-1], request_rate_short=3100.0), state, t)
    assert "holding" not in d.reason and "burst" not in d.reason
