"""The token-level capacity model and its seam into ``decide()``: what a streaming LLM replica
serves within TTFT / TPOT objectives, learned from vLLM's signals; scaling for token demand and
for a full KV cache; never for BACKEND errors or for an objective no replica count meets."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dedicap.controller.autoscale import read_state
from dedicap.decide.policy import ObservationWindow, PolicyConfig, PolicyState, decide
from dedicap.decide.policy_tokens import (
    TokenFit,
    TokenSignals,
    TokenSLO,
    capacity,
    learn,
    normalized_latency,
)

NOW = 1_700_000_000.0
# a replica whose engine step takes 10 ms + 1 ms per running sequence; TPOT's p95 is 1.2x its
# mean; one sequence holds 2% of the KV cache; prompts are 4 tokens per generated one
S0, S1, RATIO, KV_SEQ, PROMPT_PER_TOKEN, TOKENS_PER_REQUEST = 0.010, 0.001, 1.2, 0.02, 4.0, 100


def tau(n: float) -> float:
    return S0 + S1 * n


def signals(n_per_replica: float, ready: int, *, waiting: float = 0.0, ttft_ms: float = 120.0,
            kv_per_seq: float = KV_SEQ, tpot_scale: float = 1.0) -> TokenSignals:
    """What a fleet of `ready` such replicas, each running `n_per_replica`, reports."""
    step = tau(n_per_replica) * tpot_scale
    gen = ready * n_per_replica / step  # Little: running / time per token
    return TokenSignals(
        ttft_ms=ttft_ms, tpot_ms=1000 * step * RATIO, mean_tpot_ms=1000 * step,
        mean_ttft_ms=ttft_ms / 1.5, finished_rate=gen / TOKENS_PER_REQUEST,
        prompt_token_rate=gen * PROMPT_PER_TOKEN, generation_token_rate=gen,
        running=ready * n_per_replica, running_now=ready * n_per_replica, waiting=waiting,
        waiting_max=waiting,
        kv_usage=min(n_per_replica * kv_per_seq, 1.0), preemption_rate=0.0)


def window(sig: TokenSignals, ready: int, t: float, *, starting: int = 0,
           current: int | None = None, backend: float = 0.0) -> ObservationWindow:
    requests = sig.finished_rate if math.isfinite(sig.finished_rate) else 0.0
    return ObservationWindow(
        timestamp=t, window_s=60.0, request_rate=requests + backend, success_rate=requests,
        backend_failure_rate=backend, ready_replicas=ready, starting_replicas=starting,
        current_replicas=current if current is not None else ready + starting, tokens=sig)


def config(**slo: float) -> PolicyConfig:
    token_slo = TokenSLO(**{"ttft_target_ms": 500.0, "tpot_target_ms": 50.0, **slo})
    return PolicyConfig(min_replicas=1, max_replicas=20, latency_target_ms=math.inf,
                        tokens=token_slo)


def learned(points: tuple[float, ...] = (4, 8, 16, 24)) -> TokenFit:
    fit = TokenFit()
    for i, n in enumerate(points):
        fit = learn(fit, signals(n, 2), 2, 60.0, NOW + 60 * i, 3600.0)
    return fit


def test_capacity_follows_the_step_time_line_and_the_tightest_objective() -> None:
    fit = learned()
    coef = fit.step.coefficients()
    assert coef is not None and coef[0] == pytest.approx(S0) and coef[1] == pytest.approx(S1)
    # TPOT p95 <= 50 ms with p95 = 1.2 x mean: a step of at most 41.7 ms, 31.7 sequences
    cap = capacity(TokenSLO(tpot_target_ms=50.0), fit)
    assert cap is not None and cap.limited_by == "timePerOutputToken"
    n = (0.05 / RATIO - S0) / S1
    assert cap.sequences == pytest.approx(n, rel=1e-3)
    assert cap.work_per_s == pytest.approx(n / tau(n), rel=1e-3)
    assert cap.tokens_per_minute == pytest.approx(60 * cap.work_per_s * (1 + PROMPT_PER_TOKEN))
    # a cache that holds fewer sequences binds first: 0.9 / 0.04 = 22.5
    small = learned()
    small = learn(small, signals(20, 2, kv_per_seq=0.04), 2, 60.0, NOW + 400, 1.0)
    cap = capacity(TokenSLO(tpot_target_ms=50.0), small)
    assert cap is not None and cap.limited_by == "kvCache"
    # nothing learned: nothing claimed
    assert capacity(TokenSLO(tpot_target_ms=50.0), TokenFit()) is None


def test_an_objective_no_replica_count_meets_bounds_nothing() -> None:
    # one sequence's step is 11 ms: a 10 ms TPOT target cannot be met by any number of replicas
    cap = capacity(TokenSLO(tpot_target_ms=10.0), learned())
    assert cap is not None and cap.unattainable == ("timePerOutputToken",)
    assert cap.limited_by == "kvCache"  # the next bound: 0.9 / 0.02 = 45 sequences


def test_normalized_latency_is_the_worst_objective() -> None:
    slo = TokenSLO(ttft_target_ms=500, tpot_target_ms=50)
    assert normalized_latency(slo, TokenSignals(ttft_ms=250, tpot_ms=75)) == pytest.approx(1.5)
    assert math.isnan(normalized_latency(slo, TokenSignals()))


def run(cfg: PolicyConfig, steps: list[tuple[TokenSignals, int, int]], state: PolicyState
        | None = None, backend: float = 0.0) -> tuple[list[int], PolicyState, list[str]]:
    """Decisions for (signals, ready, current) per evaluation, 15 s apart (after `state`'s)."""
    state = state or PolicyState()
    start = NOW if state.last_eval is None else state.last_eval + 15
    out, reasons = [], []
    for i, (sig, ready, current) in enumerate(steps):
        t = start + 15 * i
        d = decide(cfg, window(sig, ready, t, current=current, backend=backend), state, t)
        state = d.state
        out.append(d.replicas)
        reasons.append(d.reason)
    return out, state, reasons


def test_rising_token_demand_scales_up_in_tokens() -> None:
    cfg = config()
    warm = [(signals(n, 1), 1, 1) for n in (4, 8, 12, 12)]
    counts, state, reasons = run(cfg, warm)
    assert counts[-1] == 1
    # the replica now runs 40 sequences: steps of 50 ms, TPOT p95 60 ms > 50 ms
    counts, _, reasons = run(cfg, [(signals(40, 1), 1, 1)] * 2, state)
    assert counts[-1] >= 2
    assert "tok/s" in reasons[-1] and "req/s" not in reasons[-1]
    assert "TPOT p95 60ms > 50ms" in reasons[-1]


def test_a_full_kv_cache_scales_up_though_every_latency_is_met() -> None:
    # TPOT fine (8 sequences: 18 ms steps), TTFT not an objective, but the cache is full and
    # requests pile up behind it
    cfg = config(ttft_target_ms=math.inf)
    fit_steps = [(signals(n, 1, kv_per_seq=0.12), 1, 1) for n in (2, 4, 6, 8)]
    counts, state, _ = run(cfg, fit_steps)
    full = signals(8, 1, kv_per_seq=0.124, waiting=12)
    counts, _, reasons = run(cfg, [(full, 1, 1)] * 3, state)
    assert counts[-1] >= 2, reasons
    assert "12 requests waiting, KV cache 99% full" in reasons[-1]
    assert "limited by kvCache" in reasons[-1]


def test_backend_errors_are_reported_not_scaled_for() -> None:
    cfg = config()
    steps = [(signals(n, 1), 1, 1) for n in (4, 6, 6, 6, 6, 6)]
    counts, _, reasons = run(cfg, steps, backend=0.5)
    assert set(counts) == {1}
    assert "BACKEND failures" in reasons[-1]


def test_a_ttft_target_below_the_prefill_is_not_scaled_for() -> None:
    # every request's first token takes 900 ms of prefill, whatever the load
    cfg = config(ttft_target_ms=300.0, tpot_target_ms=math.inf)
    steps = [(signals(n, 2, ttft_ms=900.0), 2, 2) for n in (2, 3, 4, 3, 2, 3, 4, 3)]
    counts, _, reasons = run(cfg, steps)
    assert max(counts) == 2, reasons
    assert "not scaled for timeToFirstToken" in reasons[-1]


def test_falling_demand_scales_down_after_the_stabilization_window() -> None:
    cfg = config()
    busy = [(signals(n, 3), 3, 3) for n in (8, 12, 16, 20)]
    counts, state, _ = run(cfg, busy)
    quiet = [(signals(2, 3), 3, 3)] * 30  # a third of what three replicas served
    counts, _, reasons = run(cfg, quiet, state)
    first_down = counts.index(2)
    assert 15 * first_down >= 180, counts  # not before the stabilization window
    assert counts[-1] == 2 and "scale-down" in reasons[-1], reasons  # one step at a time


def test_the_token_state_survives_json_strictly() -> None:
    cfg = config()
    _, state, _ = run(cfg, [(signals(n, 2), 2, 2) for n in (4, 8, 16)])
    assert state.tokens is not None and state.tokens.step.w > 0
    back, why = read_state({"state": json.dumps(state.to_dict()), "version": 1})
    assert why == "" and back == state
    for forged in ({"tokens": "x"}, {"tokens": {"step": {"w": "1"}}},
                   {"tokens": {"kv_per_seq": {"w": -1, "wx": 0}}},
                   {"tokens": {"max_running": math.inf}}, {"tokens": {"extra": 1}}):
        bad, why = read_state({"state": json.dumps({**state.to_dict(), **forged}), "version": 1})
        assert bad == PolicyState() and why.startswith("unreadable"), forged


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 60.0), st.integers(1, 6), st.floats(0.0, 30.0),
                          st.floats(0.5, 3.0)), min_size=1, max_size=12))
def test_token_decisions_are_deterministic_through_json_and_within_limits(
        seq: list[tuple[float, int, float, float]]) -> None:
    cfg = replace(config(), max_replicas=8)
    a, b = PolicyState(), PolicyState()
    for i, (n, ready, waiting, scale) in enumerate(seq):
        t = NOW + 15 * i
        w = window(signals(n, ready, waiting=waiting, tpot_scale=scale), ready, t)
        da = decide(cfg, w, a, t, replica_limit=6)
        db = decide(cfg, w, b, t, replica_limit=6)
        assert da == db
        assert 1 <= da.replicas <= 6
        a = da.state
        b = PolicyState.from_dict(json.loads(json.dumps(db.state.to_dict())), strict=True)
