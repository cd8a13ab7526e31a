"""The LLM simulator and `dedicap plan` on token traces: continuous-batching replicas replayed
with the operator's own policy in tokens, against static peak and the oracle with start-up."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from dedicap.decide.policy import PolicyConfig
from dedicap.decide.policy_tokens import TokenSLO
from dedicap.sim import plan
from dedicap.sim.baselines import PolicyScaler, StaticScaler
from dedicap.sim.llm_plan import parse_token_slo
from dedicap.sim.llm_replica import PRESETS
from dedicap.sim.llm_simulator import (
    LLMSimConfig,
    TokenTrace,
    meets,
    minute_minimum,
    replica_tokens_per_minute,
    simulate_llm,
    token_trace,
)

SLO = TokenSLO(ttft_target_ms=500.0, tpot_target_ms=50.0)
H100 = PRESETS["llama-8b-h100"]


def per_minute(rates: list[float], seed: int = 1) -> TokenTrace:
    """Poisson arrivals at each minute's rate (req/s), Azure-like token counts."""
    rng = np.random.default_rng(seed)
    times = np.concatenate([60 * m + np.sort(rng.uniform(0, 60, rng.poisson(60 * r)))
                            for m, r in enumerate(rates)])
    n = len(times)
    return token_trace(times, rng.integers(200, 2000, n), rng.integers(20, 400, n), "profile",
                       duration=60.0 * len(rates))


def test_scaling_a_token_trace_keeps_its_shape_and_mix() -> None:
    tr = per_minute([2.0] * 4)
    big = tr.scaled(3.0, seed=0)
    assert big.requests == 3 * tr.requests
    assert big.prompt.mean() == pytest.approx(tr.prompt.mean())
    assert np.all(np.diff(big.times) >= 0) and big.duration == tr.duration
    half = big.window(0.0, 120.0)
    assert half.duration == 120.0 and half.times.max() < 120.0


def test_one_replica_serves_a_few_requests_per_second_within_the_slo() -> None:
    rps, tpm = replica_tokens_per_minute(H100, SLO, per_minute([1.0, 1.0]), minutes=1)
    # an 8B model on an H100 with ~1,100-token prompts: a handful of requests per second, and
    # hundreds of thousands of tokens per minute
    assert 3 < rps < 30 and 1e5 < tpm < 2e6


def test_the_policy_follows_a_token_peak_for_fewer_gpu_hours_than_static_peak() -> None:
    tr = per_minute([4, 4, 4, 4, 10, 20, 30, 30, 20, 10, 4, 4, 4, 4, 4, 4])
    nstar = minute_minimum(tr, H100, SLO)
    assert nstar[:3].max() < nstar[6:8].max()  # the peak needs more replicas
    assert meets(H100, SLO, tr.window(360, 420), int(nstar[6]))
    cfg = LLMSimConfig(slo=SLO, startup_delay_s=60.0, initial_replicas=int(nstar[0]))
    # a burst memory of a minute: this test is about tokens, not about holding for bursts
    policy = PolicyConfig(max_replicas=50, latency_target_ms=math.inf, tokens=SLO,
                          burst_memory_s=60.0)
    auto = simulate_llm(tr, PolicyScaler(policy), cfg)
    static = simulate_llm(tr, StaticScaler(int(nstar.max())), cfg)
    ups = [e for e in auto.scale_events if e.new > e.old]
    downs = [e for e in auto.scale_events if e.new < e.old]
    assert ups and downs and ups[0].t < downs[0].t, auto.scale_events
    assert "tok/s" in ups[0].reason
    # the minutes the ramp outran the start-up delay miss (a backlog stays with its replica);
    # the rest meet the SLO
    assert static.attainment == 1.0 and auto.attainment >= 0.7, (auto.minute_met,
                                                                   auto.minute_held)
    assert (auto.minute_met[-6:] == 1).all()
    assert auto.gpu_hours < static.gpu_hours * 1.5


def test_token_objectives_parse_and_bad_ones_are_refused() -> None:
    assert parse_token_slo("ttft.p95=500ms") == ("ttft", 95.0, 500.0)
    assert parse_token_slo("tpot.p99=0.05s") == ("tpot", 99.0, 50.0)
    assert parse_token_slo("p95=200ms") is None
    with pytest.raises(Exception, match="percentile"):
        parse_token_slo("ttft.p100=5ms")


def test_plan_on_a_token_trace_states_tokens_per_minute(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    tr = per_minute([3, 3, 6, 9, 6, 3])
    path = tmp_path / "tokens.csv"
    rows = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    rows += [f"2023-11-16 18:{15 + int(t // 60):02d}:{t % 60:09.6f},{p},{o}"
             for t, p, o in zip(tr.times, tr.prompt, tr.output, strict=True)]
    path.write_text("\n".join(rows) + "\n")
    code = plan.main(["--trace", str(path), "--slo", "ttft.p95=500ms", "--slo",
                      "tpot.p95=50ms", "--pool", "h100=2.5", "--tradeoff-points", "2", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    pool = out["pools"][0]
    assert pool["replica"]["tokens_per_minute_at_slo"] > 0
    assert "not measured" in pool["replica"]["source"]
    for run in ("autoscaled", "static_peak", "oracle_with_startup"):
        assert 0.0 <= pool[run]["attainment"] <= 1.0 and pool[run]["gpu_hours"] > 0
    assert out["slo"]["ttft"]["target_ms"] == 500.0
    if out["recommendation"]:
        assert out["recommendation"]["tokens_per_minute_at_slo"] > 0


def test_plan_names_the_option_when_token_columns_are_unclear(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "t.csv"
    path.write_text("timestamp,a_tokens,b_tokens\n" + "".join(
        f"2023-11-16 18:{i // 60:02d}:{i % 60:02d},{10 + i},{5 + i}\n" for i in range(600)))
    assert plan.main(["--trace", str(path), "--slo", "ttft.p95=500ms"]) == 2
    assert "--prompt-column" in capsys.readouterr().err
