"""A streaming LLM at the autoscaler's pure edge: its objectives mapped to the policy, its token
snapshot to the policy's window, and the answer to status (observed tokens, token capacity,
SLOMet, reason codes) and to its reservation's token capacity."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from dedicap.api.models import AutoscalingSpec, CapacityReservation
from dedicap.controller import autoscale as asc
from dedicap.controller.policy_config import AutoscalerDefaults, policy_config
from dedicap.controller.status import autoscaling as st
from dedicap.controller.status import tokens as st_tokens
from dedicap.decide.policy import Decision, PolicyState, decide
from dedicap.decide.policy_tokens import TokenFit, TokenSignals, learn
from dedicap.decide.reservations import ReservationUsage
from dedicap.metrics.snapshot import MetricsSnapshot
from dedicap.metrics.snapshot_tokens import TokenSnapshot

NOW = 1_700_000_000.0
WHEN = datetime.fromtimestamp(NOW, UTC)


def spec(**slo: Any) -> AutoscalingSpec:
    return AutoscalingSpec.model_validate({"minReplicas": 1, "maxReplicas": 8, "slo": slo or {
        "timeToFirstToken": {"percentile": 99, "targetMs": 500},
        "timePerOutputToken": {"targetMs": 50}, "errorRate": {"max": 0.01}}})


def snap(**fields: Any) -> MetricsSnapshot:
    base: dict[str, Any] = dict(available=True, queried_at=NOW, window_s=60.0, percentile=95.0,
                                timestamp=NOW - 2, request_rate=4.0, success_rate=4.0,
                                failure_rates={}, latency_quantile_ms=9000.0, pods_reporting=2)
    base.update(fields)
    return MetricsSnapshot(**base)


def tokens(**fields: Any) -> TokenSnapshot:
    base: dict[str, Any] = dict(ttft_ms=300.0, tpot_ms=40.0, e2e_ms=9000.0, mean_ttft_ms=200.0,
                                mean_tpot_ms=30.0, finished_rate=4.0, prompt_token_rate=800.0,
                                generation_token_rate=400.0, running=12.0, running_now=12.0,
                                waiting=0.0, kv_usage=0.4, preemption_rate=0.0)
    base.update(fields)
    return TokenSnapshot("vllm", **base)


def test_token_objectives_map_to_the_policy_only_for_llm_profiles() -> None:
    cfg = policy_config(spec(), AutoscalerDefaults(), "vllm")
    assert cfg.tokens is not None
    assert (cfg.tokens.ttft_percentile, cfg.tokens.ttft_target_ms) == (99.0, 500.0)
    assert (cfg.tokens.tpot_percentile, cfg.tokens.tpot_target_ms) == (95.0, 50.0)
    assert math.isinf(cfg.tokens.e2e_target_ms) and cfg.error_rate_max == 0.01
    plain = policy_config(spec(latency={"targetMs": 200}), AutoscalerDefaults())
    assert plain.tokens is None
    e2e = policy_config(spec(latency={"targetMs": 20_000}), AutoscalerDefaults(), "tensorrtllm")
    assert e2e.tokens is not None and e2e.tokens.e2e_target_ms == 20_000


def test_the_window_carries_the_token_signals_only_when_read() -> None:
    w = asc.observation_window(snap(), ready=2, starting=0, current=2, tokens=tokens())
    assert w.tokens is not None and w.tokens.ttft_ms == 300.0 and w.tokens.kv_usage == 0.4
    down = TokenSnapshot("vllm", available=False, problem="QueryError")
    assert asc.observation_window(snap(), ready=2, starting=0, current=2, tokens=down).tokens \
        is None


def test_observed_status_shows_the_token_figures_or_blanks() -> None:
    o = st_tokens.observed(tokens(kv_usage=1.2))
    assert o["ttftMs"] == 300.0 and o["tpotMs"] == 40.0 and o["kvCacheUsage"] == 1.0
    assert o["generationTokensPerSecond"] == 400.0 and o["waitingRequests"] == 0.0
    # a stream's latency is to its last token (vLLM's end-to-end histogram)
    assert o["latencyMs"] == 9000.0 and o["p95Ms"] == 9000.0
    assert st_tokens.observed(tokens(), e2e_percentile=99)["p95Ms"] is None
    assert set(st_tokens.observed(None).values()) == {None}


def test_slo_met_judges_the_token_objectives() -> None:
    cfg = policy_config(spec(), AutoscalerDefaults(), "vllm")
    s = spec()
    ok = st.slo_condition(snap(), s, st_tokens.verdict_problems(tokens(), cfg))
    assert ok.status == "True"
    slow = st.slo_condition(snap(), s, st_tokens.verdict_problems(tokens(ttft_ms=800.0), cfg))
    assert slow.status == "False" and slow.reason == "TokenLatencyAboveTarget"
    assert "TTFT p99 800ms > 500ms" in slow.message


def decision(direction: str) -> Decision:
    return Decision(replicas=3, direction=direction,  # type: ignore[arg-type]
                    reason="r", state=PolicyState())


def test_reason_codes_name_token_latency_and_a_full_kv_cache() -> None:
    cfg = policy_config(spec(), AutoscalerDefaults(), "vllm")
    slow = asc.observation_window(snap(), ready=2, starting=0, current=2,
                                  tokens=tokens(tpot_ms=90.0))
    assert st.reason_code(decision("up"), slow, cfg) == st.CODE_TOKEN_LATENCY
    full = asc.observation_window(snap(), ready=2, starting=0, current=2,
                                  tokens=tokens(waiting=9.0, kv_usage=0.97))
    assert st.reason_code(decision("up"), full, cfg) == st.CODE_KV_CACHE
    calm = asc.observation_window(snap(), ready=2, starting=0, current=2, tokens=tokens())
    assert st.reason_code(decision("up"), calm, cfg) == st.CODE_DEMAND_UP
    # Demand rising past what a replica's cache holds (as learned): the cache is what runs out,
    # before a request has had to wait for it.
    fit = TokenFit()
    for i, n in enumerate((2.0, 4.0, 6.0)):
        step = 0.01 + 0.001 * n
        fit = learn(fit, TokenSignals(mean_tpot_ms=1000 * step, tpot_ms=1200 * step,
                                      generation_token_rate=2 * n / step, running=2 * n,
                                      running_now=2 * n, kv_usage=0.1 * n, waiting=0.0,
                                      ttft_ms=200.0, finished_rate=2 * n / step / 100),
                    2, 60.0, NOW + 60 * i, 3600.0)
    bound = Decision(replicas=3, direction="up", reason="r", state=PolicyState(tokens=fit))
    assert st.reason_code(bound, calm, cfg) == st.CODE_KV_CACHE
    assert st.reason_code(replace(bound, direction="hold"), calm, cfg) == st.CODE_STEADY


def test_token_capacity_status_once_learned() -> None:
    cfg = policy_config(spec(), AutoscalerDefaults(), "vllm")
    assert st_tokens.capacity_status(cfg, PolicyState(), 2, 1, WHEN) is None
    fit = TokenFit()
    for i, n in enumerate((4.0, 8.0, 16.0)):
        step = 0.01 + 0.001 * n
        fit = learn(fit, TokenSignals(mean_tpot_ms=1000 * step, tpot_ms=1200 * step,
                                      generation_token_rate=2 * n / step,
                                      prompt_token_rate=4 * 2 * n / step, running=2 * n,
                                      running_now=2 * n, kv_usage=0.02 * n, waiting=0.0,
                                      ttft_ms=200.0, finished_rate=2 * n / step / 100),
                    2, 60.0, NOW + 60 * i, 3600.0)
    cap = st_tokens.capacity_status(cfg, PolicyState(tokens=fit), 3, 2, WHEN)
    assert cap is not None and cap["limitedBy"] == "timePerOutputToken"
    assert cap["tokensPerMinute"] == 3 * cap["tokensPerMinutePerReplica"]
    assert cap["tokensPerMinutePerGPU"] == round(cap["tokensPerMinutePerReplica"] / 2)
    # prompt tokens count too: 4 per generated one
    assert cap["promptTokensPerSecond"] == round(4 * cap["generationTokensPerSecond"], 1)
    # the same figures the policy decides with, through decide()
    d = decide(cfg, asc.observation_window(snap(), ready=3, starting=0, current=3,
                                           tokens=tokens()), PolicyState(tokens=fit), NOW + 200)
    assert d.state.tokens is not None


def test_a_reservation_reports_what_its_gpus_buy_in_tokens() -> None:
    cr = CapacityReservation.model_validate({
        "apiVersion": "dedicap.dev/v1alpha1", "kind": "CapacityReservation",
        "metadata": {"name": "acme-h100"},
        "spec": {"namespaces": ["acme"], "pool": "h100", "gpus": 8}})
    usage = ReservationUsage(reserved_gpus=3, by_owner={"acme/chat": (2, 0), "acme/enc": (1, 0)})
    mds = {"acme/chat": {"status": {"tokenCapacity": {"tokensPerMinutePerGPU": 90_000}}},
           "acme/enc": {"status": {}}}
    assert st_tokens.reservation_capacity(cr, usage, mds) == [
        {"modelDeployment": "acme/chat", "tokensPerMinutePerGPU": 90_000,
         "tokensPerMinute": 180_000, "tokensPerMinuteReserved": 720_000}]
