"""The token-level queries, evaluated by promtool's PromQL engine over series with the LLM
backends' real names and types: vLLM's histograms (``_bucket{le}``, ``_sum``, ``_count``),
counters and gauges (both names of its KV-cache gauge), TensorRT-LLM's gauges and Triton's
first-response histogram."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from dedicap.metrics import promql, promql_tokens
from dedicap.metrics.prometheus import Sample
from dedicap.metrics.promql import Target
from dedicap.metrics.promql_tokens import TokenSignal
from dedicap.metrics.snapshot_tokens import token_snapshot
from promkit import (
    EVAL_AT_S,
    check_rules,
    constant,
    counter,
    needs_promtool,
    run_promtool_tests,
    series,
)

CHAT = Target("acme", "chat")
TRT = Target("acme", "trt")
WINDOW_S = 60.0


def labels(pod: str, md: str = "chat", namespace: str = "acme", **extra: str) -> dict[str, str]:
    return {"namespace": namespace, "modeldeployment": md, "pod": pod, "model": md,
            "version": "1", **extra}


def histogram(name: str, lb: dict[str, str], per_second: dict[str, float],
              sum_per_second: float) -> list[dict[str, str]]:
    """A histogram's series: `per_second` observations per bucket (not cumulative; keys are
    the buckets' upper bounds, "+Inf" last), their sum's rate."""
    out = []
    cumulative = 0.0
    for le, rate in per_second.items():
        cumulative += rate
        out.append({"series": series(f"{name}_bucket", {**lb, "le": le}),
                    "values": counter(cumulative)})
    out.append({"series": series(f"{name}_count", lb), "values": counter(cumulative)})
    out.append({"series": series(f"{name}_sum", lb), "values": counter(sum_per_second)})
    return out


def vllm_pod(pod: str, *, ttft: dict[str, float], ttft_sum: float, tpot: dict[str, float],
             tpot_sum: float, e2e: dict[str, float], prompt: float, running: float,
             waiting: float, kv: float, kv_name: str = "vllm:gpu_cache_usage_perc",
             preemptions: float = 0.0, md: str = "chat", namespace: str = "acme"
             ) -> list[dict[str, str]]:
    lb = labels(pod, md, namespace)
    generated = sum(tpot.values()) + sum(ttft.values())  # first tokens and the rest
    return [
        *histogram("vllm:time_to_first_token_seconds", lb, ttft, ttft_sum),
        *histogram("vllm:time_per_output_token_seconds", lb, tpot, tpot_sum),
        *histogram("vllm:e2e_request_latency_seconds", lb, e2e, 0.0),
        {"series": series("vllm:prompt_tokens_total", lb), "values": counter(prompt)},
        {"series": series("vllm:generation_tokens_total", lb), "values": counter(generated)},
        {"series": series("vllm:num_preemptions_total", lb), "values": counter(preemptions)},
        {"series": series("vllm:num_requests_running", lb), "values": constant(running)},
        {"series": series("vllm:num_requests_waiting", lb), "values": constant(waiting)},
        {"series": series(kv_name, lb), "values": constant(kv)},
    ]


def trt_pod(pod: str, *, first: dict[str, float], first_sum_ms: float, scheduled: float,
            waiting: float, used: float, paused: float) -> list[dict[str, str]]:
    lb = labels(pod, "trt")
    out = histogram("nv_inference_first_response_histogram_ms", lb, first, first_sum_ms)
    for kind, value in (("active", scheduled + waiting), ("max", 64), ("scheduled", scheduled),
                        ("context", 1), ("waiting", waiting)):
        out.append({"series": series("nv_trt_llm_request_metrics", {**lb, "request_type": kind}),
                    "values": constant(value)})
    for kind, value in (("max", 100), ("used", used), ("free", 100 - used), ("tokens_per", 64)):
        out.append({"series": series("nv_trt_llm_kv_cache_block_metrics",
                                     {**lb, "kv_cache_block_type": kind}),
                    "values": constant(value)})
    out.append({"series": series("nv_trt_llm_inflight_batcher_metrics",
                                 {**lb, "inflight_batcher_specific_metric": "paused_requests"}),
                "values": constant(paused)})
    return out


TTFT_LE = ("0.1", "0.25", "0.5", "1", "+Inf")
TPOT_LE = ("0.025", "0.05", "0.1", "+Inf")
E2E_LE = ("1", "2", "5", "+Inf")


def buckets(bounds: tuple[str, ...], **rates: float) -> dict[str, float]:
    """Observations per second per bucket, by its bound's position: b0=2 is 2/s in the first."""
    return {le: rates.get(f"b{i}", 0.0) for i, le in enumerate(bounds)}


INPUT = [
    # a: fast; b: slower, and publishing the V1 engine's name of the KV-cache gauge
    *vllm_pod("a", ttft=buckets(TTFT_LE, b0=2), ttft_sum=2 * 0.05,
              tpot=buckets(TPOT_LE, b0=30), tpot_sum=30 * 0.02, e2e=buckets(E2E_LE, b0=2),
              prompt=400, running=6, waiting=0, kv=0.5),
    *vllm_pod("b", ttft=buckets(TTFT_LE, b2=2), ttft_sum=2 * 0.4,
              tpot=buckets(TPOT_LE, b2=10), tpot_sum=10 * 0.08, e2e=buckets(E2E_LE, b2=2),
              prompt=600, running=4, waiting=3, kv=0.8, kv_name="vllm:kv_cache_usage_perc",
              preemptions=0.5),
    # others' series must not leak in
    *vllm_pod("x", ttft=buckets(TTFT_LE, b4=50), ttft_sum=500.0, tpot=buckets(TPOT_LE, b3=9),
              tpot_sum=99.0, e2e=buckets(E2E_LE, b3=9), prompt=9e6, running=99, waiting=99,
              kv=1.0, md="other"),
    *vllm_pod("y", ttft=buckets(TTFT_LE, b4=50), ttft_sum=500.0, tpot=buckets(TPOT_LE, b3=9),
              tpot_sum=99.0, e2e=buckets(E2E_LE, b3=9), prompt=9e6, running=99, waiting=99,
              kv=1.0, namespace="evil"),
    *trt_pod("t1", first=buckets(("100", "250", "500", "+Inf"), b0=1), first_sum_ms=50,
             scheduled=3, waiting=0, used=10, paused=0),
    *trt_pod("t2", first=buckets(("100", "250", "500", "+Inf"), b2=1), first_sum_ms=400,
             scheduled=5, waiting=2, used=90, paused=1),
]

VLLM_EXPECTED: dict[TokenSignal, float] = {
    # 4 requests/s: 2 under 100 ms (a), 2 in (250, 500] (b). The 95th percentile of all of
    # them is 250 + 250 * (3.8 - 2) / 2 = 475 ms: the event-based SLI over both pods, neither
    # pod's own p95 (95 ms and 487.5 ms) nor their mean
    TokenSignal.TTFT_MS: 475.0,
    # 40 tokens/s: 30 under 25 ms, 10 in (50, 100]: rank 38 -> 50 + 50 * 8/10 = 90 ms
    TokenSignal.TPOT_MS: 90.0,
    TokenSignal.E2E_MS: 4700.0,  # 2 + 3 * 1.8/2 s
    TokenSignal.MEAN_TTFT_MS: 225.0,  # (0.1 + 0.8) / 4 s
    TokenSignal.MEAN_TPOT_MS: 35.0,  # (0.6 + 0.8) / 40 s
    TokenSignal.FINISHED_RATE: 4.0,
    TokenSignal.PROMPT_TOKEN_RATE: 1000.0,
    TokenSignal.GENERATION_TOKEN_RATE: 44.0,  # 40 later tokens + 4 first ones
    TokenSignal.RUNNING: 10.0,
    TokenSignal.RUNNING_NOW: 10.0,
    TokenSignal.WAITING: 3.0,
    TokenSignal.WAITING_MAX: 3.0,
    TokenSignal.WAITING_GROWTH: 0.0,  # constant queues
    TokenSignal.KV_USAGE: 0.8,  # the fullest pod, whichever name its engine uses
    TokenSignal.PREEMPTION_RATE: 0.5,
}
TRT_EXPECTED: dict[TokenSignal, float] = {
    TokenSignal.TTFT_MS: 475.0,  # Triton's first-response histogram is in ms already
    TokenSignal.MEAN_TTFT_MS: 225.0,
    TokenSignal.RUNNING: 8.0,
    TokenSignal.RUNNING_NOW: 8.0,
    TokenSignal.WAITING: 2.0,
    TokenSignal.WAITING_MAX: 2.0,
    TokenSignal.WAITING_GROWTH: 0.0,
    TokenSignal.KV_USAGE: 0.9,  # used / max blocks of the fullest pod
    TokenSignal.PAUSED: 1.0,
}


def _test(expr: str, md: str, value: float) -> dict[str, object]:
    # promtool compares exactly: round away the last bits of floating-point arithmetic
    return {"expr": f"round({expr}, 0.0001)", "eval_time": f"{EVAL_AT_S}s", "exp_samples": [
        {"labels": f'{{namespace="acme",modeldeployment="{md}"}}', "value": value}]}


@needs_promtool
def test_every_token_expression_parses(tmp_path: Path) -> None:
    exprs = [*promql_tokens.token_signals(CHAT, "vllm", WINDOW_S, 99, 90, 50).values(),
             *promql_tokens.token_signals(TRT, "tensorrtllm", 1.5, 99.9).values(),
             promql_tokens.combined_tokens(CHAT, "vllm", WINDOW_S),
             promql_tokens.combined_tokens(promql.Selection((("a", "b"), ("c", "d"))),
                                           "tensorrtllm", WINDOW_S)]
    result = check_rules(tmp_path, exprs)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
@pytest.mark.parametrize(("target", "profile", "expected"), [
    (CHAT, "vllm", VLLM_EXPECTED), (TRT, "tensorrtllm", TRT_EXPECTED)],
    ids=["vllm", "tensorrtllm"])
def test_each_token_signal_evaluates_to_what_it_means(
        tmp_path: Path, target: Target, profile: str, expected: dict[TokenSignal, float]) -> None:
    exprs = promql_tokens.token_signals(target, profile, WINDOW_S)
    assert set(exprs) == set(expected)
    tests = [_test(exprs[s], target.modeldeployment, v) for s, v in expected.items()]
    result = run_promtool_tests(tmp_path, tests, INPUT)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_one_query_answers_for_every_modeldeployment_of_a_profile(tmp_path: Path) -> None:
    both = promql.Selection((("acme", "chat"), ("acme", "other")))
    expr = promql_tokens.combined_tokens(both, "vllm", WINDOW_S)
    samples = [{"labels": '{namespace="acme",modeldeployment="chat",signal="waiting"}',
                "value": 3.0},
               {"labels": '{namespace="acme",modeldeployment="other",signal="waiting"}',
                "value": 99.0}]
    waiting_only = f'({expr}) and on(signal) label_replace(vector(1), "signal", "waiting", "", "")'
    result = run_promtool_tests(tmp_path, [{"expr": waiting_only, "eval_time": f"{EVAL_AT_S}s",
                                            "exp_samples": samples}], INPUT)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_the_token_check_can_fail(tmp_path: Path) -> None:
    expr = promql_tokens.token_signals(CHAT, "vllm", WINDOW_S)[TokenSignal.TTFT_MS]
    result = run_promtool_tests(tmp_path, [_test(expr, "chat", 95.0)], INPUT)
    assert result.returncode != 0


def test_the_snapshot_reads_each_signal_and_leaves_the_rest_unknown() -> None:
    samples = [Sample({"signal": "ttft_ms"}, 0.0, 475.0),
               Sample({"signal": "kv_usage"}, 0.0, 0.8)]
    snap = token_snapshot(samples, "vllm")
    assert snap.ttft_ms == 475.0 and snap.kv_usage == 0.8 and snap.available
    assert math.isnan(snap.tpot_ms) and math.isnan(snap.generation_token_rate)


def test_unknown_profiles_and_percentiles_are_refused() -> None:
    with pytest.raises(ValueError, match="tgi"):
        promql_tokens.token_signals(CHAT, "tgi", WINDOW_S)
    with pytest.raises(ValueError, match="percentile"):
        promql_tokens.token_signals(CHAT, "vllm", WINDOW_S, ttft_percentile=100)


class _Client:
    def __init__(self, answer: list[Sample] | Exception) -> None:
        self.answer = answer
        self.queries: list[str] = []

    def query(self, expr: str, at: float | None = None) -> list[Sample]:
        self.queries.append(expr)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_one_query_for_many_and_an_outage_for_all() -> None:
    from dedicap.metrics.prometheus import PrometheusUnavailable
    from dedicap.metrics.snapshot_tokens import observe_tokens_many

    md = {"namespace": "acme", "modeldeployment": "chat"}
    client = _Client([Sample({**md, "signal": "waiting"}, 0.0, 3.0),
                      Sample({**md, "modeldeployment": "x", "signal": "waiting"}, 0.0, 9.0)])
    got = observe_tokens_many(client, [("acme", "chat"), ("acme", "idle")], "vllm", 60, 100.0)
    assert len(client.queries) == 1
    assert got[("acme", "chat")].waiting == 3.0 and math.isnan(got[("acme", "idle")].waiting)
    outage = _Client(PrometheusUnavailable("http://p", 2, "refused"))
    down = observe_tokens_many(outage, [("acme", "chat")], "vllm", 60, 100.0)
    assert not down[("acme", "chat")].available
    assert down[("acme", "chat")].problem == "PrometheusUnavailable"
