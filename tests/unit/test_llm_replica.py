"""The continuous-batching replica: its scheduling (KV budget, preemption, chunked prefill), its
cost, and the two ways of running it agreeing exactly."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dedicap.sim.llm_replica import (
    PRESETS,
    ContinuousBatcher,
    LLMCost,
    Sequence,
    StepResult,
    run_times,
    token_gaps,
)

TINY = LLMCost(name="tiny", step_base_s=0.01, per_seq_s=0.001, per_ctx_token_s=1e-5,
               prefill_per_token_s=1e-4, kv_tokens=2000, max_num_seqs=8, chunk_tokens=256)


def drain(engine: ContinuousBatcher, until: float = 1e6) -> list[StepResult]:
    out = []
    while not engine.idle() and engine.busy_until < until:
        r = engine.step(engine.busy_until)
        if r.steps == 0:
            break
        out.append(r)
    return out


def test_first_token_after_the_prompt_then_one_per_step() -> None:
    e = ContinuousBatcher(TINY)
    s = Sequence(1, prompt=100, max_tokens=3, arrival=0.0)
    e.submit(s)
    steps = drain(e)
    assert len(steps) == 3
    # the prefill step: 100 prompt tokens, and it samples the first token
    assert steps[0].prefill_tokens == 100 and steps[0].first_tokens == [s]
    assert s.first_token == pytest.approx(TINY.step_s(0, 0, 100))
    # then decode steps reading the growing context
    assert steps[1].decode_tokens == 1
    assert steps[1].end - steps[1].start == pytest.approx(TINY.step_s(1, 101, 0))
    assert s.finished == steps[-1].end and e.kv_used == 0 and e.idle()


def test_chunked_prefill_spreads_a_long_prompt_over_steps() -> None:
    e = ContinuousBatcher(TINY)
    s = Sequence(1, prompt=600, max_tokens=1, arrival=0.0)
    e.submit(s)
    steps = drain(e)
    assert [r.prefill_tokens for r in steps] == [256, 256, 88]
    assert s.finished == steps[-1].end


def test_a_full_kv_cache_makes_requests_wait_first_come_first_served() -> None:
    e = ContinuousBatcher(replace(TINY, chunk_tokens=4000))
    big = [Sequence(i, prompt=900, max_tokens=50, arrival=0.0) for i in range(3)]
    for s in big:
        e.submit(s)
    e.step(0.0)
    e.step(e.busy_until)
    # two prompts fit 1,980 tokens (2,000 less the 1% watermark); the third waits
    assert [s.rid for s in e.running] == [0, 1] and [s.rid for s in e.waiting] == [2]
    assert e.kv_usage == pytest.approx(1804 / 2000)  # prompts, first tokens, one more each
    drain(e)
    assert big[2].admitted is not None and big[2].admitted >= big[0].finished  # type: ignore
    assert all(s.finished is not None for s in big)


def test_decode_growth_beyond_the_cache_preempts_the_newest() -> None:
    cost = LLMCost(name="t", step_base_s=0.01, per_seq_s=0.0, per_ctx_token_s=0.0,
                   prefill_per_token_s=0.0, kv_tokens=1000, max_num_seqs=8, chunk_tokens=2000)
    e = ContinuousBatcher(cost)
    a, b = Sequence(1, 480, 100, 0.0), Sequence(2, 480, 100, 0.0)
    e.submit(a)
    e.submit(b)
    preempted = sum(r.preemptions for r in drain(e))
    assert preempted >= 1 and b.preemptions >= 1 and a.preemptions == 0
    assert a.finished is not None and b.finished is not None and b.finished > a.finished
    assert b.generated == 100  # recomputed, not restarted


def test_time_per_output_token_grows_with_the_sequences_running() -> None:
    cost = PRESETS["llama-8b-h100"]
    gaps = {}
    for n in (1, 16, 128):
        e = ContinuousBatcher(cost)
        for i in range(n):
            e.submit(Sequence(i, prompt=1000, max_tokens=64, arrival=0.0))
        steps = drain(e)
        g = [gap for r in steps for gap, _ in token_gaps(r)]
        gaps[n] = sum(g) / len(g)
    assert gaps[1] < gaps[16] < gaps[128]
    # a single sequence: about the fixed cost of a step (the weights read once)
    assert gaps[1] == pytest.approx(cost.step_s(1, 1032, 0), rel=0.01)


def test_presets_name_their_source_and_say_they_are_not_measured() -> None:
    for cost in PRESETS.values():
        assert "not measured" in cost.source
        # an 8B model in bf16: tens of thousands of prompt tokens per second, a few ms a step
        assert 10_000 < 1 / cost.prefill_per_token_s < 50_000
        assert 0.003 < cost.step_base_s < 0.01


def test_bad_requests_are_refused() -> None:
    with pytest.raises(ValueError):
        ContinuousBatcher(TINY).submit(Sequence(1, prompt=0, max_tokens=3, arrival=0.0))


def test_decode_runs_are_jumped_over() -> None:
    e = ContinuousBatcher(TINY, record_tokens=False)
    for i in range(4):
        e.submit(Sequence(i, prompt=50, max_tokens=80, arrival=0.0))
    r = e.advance(math.inf)
    assert e.idle() and len(r.finished) == 4 and r.generated == 320
    assert max(k for *_, k in r.runs) >= 70  # decode steps counted, not walked
    assert r.steps == sum(k for *_, k in r.runs) + 1  # and the one prefill step


def test_run_times_follow_the_growing_context() -> None:
    assert list(run_times(1.0, 0.5, 0.1, 3)) == pytest.approx([1.0, 1.6, 2.3])


workloads = st.lists(st.tuples(st.floats(0.0, 5.0), st.integers(1, 700), st.integers(1, 80)),
                     min_size=1, max_size=25)


@settings(max_examples=80, deadline=None)
@given(workload=workloads, horizon=st.floats(0.5, 30.0))
def test_jumping_over_decode_runs_changes_nothing(workload: list[tuple[float, int, int]],
                                                  horizon: float) -> None:
    """`advance` without listing tokens (the simulator's) and `step` listing every token (the
    live model's) give the same tokens at the same times: the jumps and the lazy decode
    bookkeeping are exact, not approximations."""
    arrivals = sorted(workload)

    def run(jump: bool) -> tuple[list[tuple[int, float | None, float | None, int]], float]:
        e = ContinuousBatcher(TINY, record_tokens=not jump)
        seqs = [Sequence(i, p, m, t) for i, (t, p, m) in enumerate(arrivals)]
        gaps = 0.0
        for i, s in enumerate(seqs):
            nxt = seqs[i + 1].arrival if i + 1 < len(seqs) else math.inf
            e.submit(s)
            until = min(nxt, horizon)
            if jump:
                r = e.advance(until, nxt)
                gaps += sum(g * n for g, n in token_gaps(r))
            else:
                while not e.idle() and e.busy_until < until:
                    r = e.step(e.busy_until)
                    if r.steps == 0:
                        break
                    gaps += sum(g * n for g, n in token_gaps(r))
        return [(s.rid, s.first_token, s.finished, e.sync(s).generated) for s in seqs], gaps

    exact, gaps_exact = run(jump=False)
    jumped, gaps_jumped = run(jump=True)
    assert len(exact) == len(jumped)
    for (r1, f1, e1, g1), (r2, f2, e2, g2) in zip(exact, jumped, strict=True):
        assert r1 == r2 and g1 == g2
        assert (f1 is None) == (f2 is None) and (e1 is None) == (e2 is None)
        if f1 is not None and f2 is not None:
            assert f1 == pytest.approx(f2, abs=1e-9)
        if e1 is not None and e2 is not None:
            assert e1 == pytest.approx(e2, abs=1e-9)
    assert gaps_exact == pytest.approx(gaps_jumped, rel=1e-9, abs=1e-9)
