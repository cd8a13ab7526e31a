"""Live token-level autoscaling of a streaming LLM on the real local stack: streaming load ->
the streaming Triton model (continuous batching on a KV budget, vLLM's metric families) ->
Prometheus -> operator (token queries, the token policy) -> Deployment -> pods -> Triton.

The replicas are the data plane's streaming LLM model (the ModelDeployment's metrics profile
`vllm` selects it), slowed to a CPU's pace: an engine step of 50 ms + 5 ms per running
sequence, 0.05 ms per prompt token, requests of 200 prompt tokens and 20 generated ones. The
operator evaluates every 5 s over a 20-s window and assumes replicas start in 10 s, as the
request-level live tests do.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from test_autoscaling import (
    condition,
    events,
    md,
    md_columns,
    metrics_fresh,
    serving,
    set_sim,
    spec_replicas,
)

from dedicap_local import loadgen
from dedicap_local.loadgen_stream import run_stream
from testkit import OperatorProcess, live_autoscaler, release_operator_state, wait_for

pytestmark = pytest.mark.integration

EVAL_S = 5
SHAPE = (200, 20)  # prompt tokens, generated tokens
# a KV cache of 6,000 tokens holds about 27 such sequences
REPLICA = {"step_ms": 50, "per_seq_ms": 5, "prefill_ms_per_token": 0.05, "kv_tokens": 6000,
           "max_num_seqs": 32, "chunk_tokens": 512}
TTFT_MS = 1000.0
TPOT_MS = 200.0


@pytest.fixture(scope="module")
def operator(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    op = live_autoscaler(stack, tmp_path_factory.mktemp("autoscaling-llm"), "dcp-llm-*",
                         f"dedicap-llm-{uuid.uuid4().hex[:6]}", EVAL_S)
    op.start()
    yield op
    op.stop()
    print(f"operator log: {op.log}")
    release_operator_state(stack, op.peering)


@pytest.fixture
def namespace(stack: Any, operator: OperatorProcess) -> Iterator[str]:
    name = f"dcp-llm-{uuid.uuid4().hex[:6]}"
    stack.kubectl("create", "namespace", name)
    yield name
    set_sim(stack, name, "bot", None)
    stack.kubectl("delete", "namespace", name, "--wait=false", check=False)


def apply_llm(stack: Any, namespace: str, slo: dict[str, Any], *, max_replicas: int = 4,
              stabilization_s: int = 20) -> None:
    stack.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "dedicap.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "bot", "namespace": namespace},
        "spec": {
            "model": {"name": "bot", "repository": "s3://models/llm", "backend": "vllm",
                      "metricsProfile": "vllm"},
            "resources": {"gpusPerReplica": 1, "gpuMemoryGiB": 40},
            "placement": {"pools": ["h100"]},
            "autoscaling": {
                "minReplicas": 1, "maxReplicas": max_replicas, "slo": slo,
                "behavior": {"evaluationIntervalSeconds": EVAL_S,
                             "scaleDown": {"stabilizationWindowSeconds": stabilization_s,
                                           "maxStepReplicas": max_replicas}}},
        }}))


def stream(stack: Any, namespace: str, profile: list[loadgen.Step], seed: int
           ) -> loadgen.Background:
    return loadgen.Background(loadgen.endpoints_for(namespace, "bot", stack.run_dir), profile,
                              runner=run_stream, shapes=[SHAPE], seed=seed, timeout_s=60,
                              max_in_flight=400)


def observed(stack: Any, namespace: str) -> dict[str, Any]:
    return dict(md(stack, namespace).get("status", {}).get("observed") or {})


def test_rising_token_load_scales_up_ttft_returns_within_slo_then_scales_down(
        stack: Any, namespace: str, operator: OperatorProcess) -> None:
    set_sim(stack, namespace, "bot", REPLICA)
    apply_llm(stack, namespace, {"timeToFirstToken": {"percentile": 95, "targetMs": TTFT_MS},
                                 "timePerOutputToken": {"percentile": 95, "targetMs": TPOT_MS},
                                 "errorRate": {"max": 0.01}})
    wait_for(lambda: serving(stack, namespace, 1), "one serving replica", timeout=90)
    # a light load to learn from (a replica serves about 7 requests/s within the SLO), then
    # about twice what one replica serves
    load = stream(stack, namespace, [loadgen.Step(25, 3), loadgen.Step(150, 13)], seed=1)
    t0 = time.monotonic()
    try:
        wait_for(lambda: metrics_fresh(stack, namespace), "MetricsAvailable=True", timeout=60)
        wait_for(lambda: spec_replicas(stack, namespace) >= 2, "a scale-up under token load",
                 timeout=100, interval=1)
        t_up = time.monotonic() - t0
        scaled = md(stack, namespace)["status"].get("lastScale") or {}
        ups = events(stack, namespace, "ScaledUp")
        assert ups and "tok/s" in ups[0]["message"], ups
        wanted = wait_for(lambda: (n := spec_replicas(stack, namespace)) >= 2 and serving(
            stack, namespace, n) and n, "every wanted replica serving", timeout=60)
        # TTFT back within the objective, judged by the operator from vLLM's histograms
        recovered = wait_for(lambda: (o := observed(stack, namespace)).get("ttftMs") is not None
                             and o["ttftMs"] < TTFT_MS and condition(
                                 md(stack, namespace), "SLOMet").get("status") == "True" and o,
                             "TTFT p95 within the SLO again", timeout=90, interval=2)
        t_recovered = time.monotonic() - t0
        cols = md_columns(stack, namespace)
        assert float(cols["TTFT"]) < TTFT_MS and cols["SLO"] == "True", cols
        capacity = wait_for(lambda: md(stack, namespace)["status"].get("tokenCapacity"),
                            "status.tokenCapacity", timeout=30)
        assert capacity["tokensPerMinute"] > 0 and capacity["limitedBy"], capacity
    finally:
        overload = load.stop().summary()
    # the same load against the scaled fleet, as the clients see it
    after = run_stream(loadgen.endpoints_for(namespace, "bot", stack.run_dir),
                       [loadgen.Step(20, 13)], shapes=[SHAPE], seed=2, timeout_s=60).summary()
    assert after["failed"] == 0 and after["ttft_p95_ms"] is not None
    assert after["ttft_p95_ms"] < TTFT_MS, after
    # and down again once the load falls away
    trickle = stream(stack, namespace, [loadgen.Step(120, 1)], seed=3)
    try:
        wait_for(lambda: spec_replicas(stack, namespace) == 1, "the scale-down to one replica",
                 timeout=110, interval=1)
    finally:
        trickle.stop()
    down = md(stack, namespace)["status"]["lastScale"]
    assert down["reason"] == "DemandFalling", down
    print(json.dumps({
        "scale_up_s": round(t_up, 1), "recovered_s": round(t_recovered, 1),
        "first_scale": scaled.get("reason"), "replicas_wanted": wanted,
        "ttft_p95_ms_recovered": recovered["ttftMs"], "tpot_p95_ms": recovered.get("tpotMs"),
        "client_ttft_p95_overload_ms": overload["ttft_p95_ms"],
        "client_ttft_p95_after_ms": after["ttft_p95_ms"],
        "client_tpot_p95_after_ms": after["tpot_p95_ms"],
        "tokens_per_minute": capacity["tokensPerMinute"], "limited_by": capacity["limitedBy"]}))


def test_backend_errors_do_not_scale_but_a_full_kv_cache_does(
        stack: Any, namespace: str, operator: OperatorProcess) -> None:
    # a per-token objective only: a full KV cache keeps every token fast while requests wait
    set_sim(stack, namespace, "bot", {**REPLICA, "fail_ratio": 0.5})
    apply_llm(stack, namespace, {"timePerOutputToken": {"percentile": 95, "targetMs": 300},
                                 "errorRate": {"max": 0.01}}, max_replicas=3)
    wait_for(lambda: serving(stack, namespace, 1), "one serving replica", timeout=90)
    failing = stream(stack, namespace, [loadgen.Step(60, 3)], seed=4)
    try:
        degraded = wait_for(lambda: (o := md(stack, namespace)) and condition(
            o, "Degraded").get("reason") == "BackendErrors" and o, "Degraded=BackendErrors",
            timeout=45)
        assert "BACKEND" in condition(degraded, "Degraded")["message"]
        held = []
        for _ in range(3 * EVAL_S):
            held.append(spec_replicas(stack, namespace))
            time.sleep(1)
        assert set(held) == {1}, held
        assert not events(stack, namespace, "ScaledUp")
    finally:
        report = failing.stop().summary()
    assert report["failures"].get("backend", 0) > 0, report
    # A healthy model whose cache holds about six of these sequences, offered more than that
    # serves: requests wait for room, every token stays fast
    set_sim(stack, namespace, "bot", {**REPLICA, "kv_tokens": 1500})
    full = stream(stack, namespace, [loadgen.Step(90, 5)], seed=5)
    try:
        wait_for(lambda: spec_replicas(stack, namespace) >= 2, "a scale-up for the KV cache",
                 timeout=75, interval=1)
        obj = md(stack, namespace)
        scaled = wait_for(lambda: (o := md(stack, namespace))["status"].get("lastScale", {}).get(
            "toReplicas", 0) >= 2 and o["status"]["lastScale"], "status.lastScale", timeout=20)
        seen = obj["status"].get("observed") or {}
    finally:
        kv_report = full.stop().summary()
    # requests waiting in a full cache, or a demand beyond what the learned cache holds
    assert scaled["reason"] == "KVCacheSaturated", scaled
    assert "KV cache" in scaled["message"] or "limited by kvCache" in scaled["message"], scaled
    assert seen.get("tpotMs") is not None and seen["tpotMs"] < 300, seen
    print(json.dumps({"backend_failures": report["failures"].get("backend"),
                      "kv_scale": scaled["message"][:300], "observed": seen,
                      "client_ttft_p95_ms": kv_report["ttft_p95_ms"],
                      "client_tpot_p95_ms": kv_report["tpot_p95_ms"]}))
