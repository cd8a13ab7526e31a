"""The PromQL builders: strings that parse (promtool check rules) and mean what they say
(promtool test rules evaluates them with Prometheus' own engine over synthetic Triton series,
no server needed)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dedicap.metrics import promql
from dedicap.metrics.promql import Signal, Target
from promkit import (
    EVAL_AT_S,
    INTERVAL_S,
    STEPS,
    check_rules,
    constant,
    counter,
    needs_promtool,
    run_promtool_tests,
    series,
)

TARGET = Target(namespace="acme", modeldeployment="bot")
WINDOW_S = 60.0
SHORT_S = 37.5  # the fast path's window: 2.5 scrapes of 15 s


def test_duration_formats_seconds_and_milliseconds() -> None:
    assert promql.duration(60) == "60s"
    assert promql.duration(90.0) == "90s"
    assert promql.duration(1.5) == "1500ms"
    for bad in (0, -1, math.nan, math.inf, 0.0001):
        with pytest.raises(ValueError):
            promql.duration(bad)


def test_quantile_labels_match_how_triton_writes_them() -> None:
    assert promql.quantile_label(95) == "0.95"
    assert promql.quantile_label(50) == "0.5"
    assert promql.quantile_label(99.9) == "0.999"
    # PromQL anchors regular expressions: fullmatch is the same test.
    pattern = re.compile(promql.quantile_regex(95))
    assert pattern.fullmatch("0.95") and pattern.fullmatch("0.950000")
    for other in ("0.9", "0.5", "0.959", "0x95", "10.95"):
        assert not pattern.fullmatch(other), other
    assert re.fullmatch(promql.quantile_regex(50), "0.5")
    assert not re.fullmatch(promql.quantile_regex(50), "0.55")
    for bad in (0, 100, -5, 120):
        with pytest.raises(ValueError):
            promql.quantile_label(bad)


def test_selector_names_the_modeldeployment_and_optional_narrowings() -> None:
    assert TARGET.selector("up") == 'up{namespace="acme",modeldeployment="bot"}'
    narrow = Target("acme", "bot", pool="h100", pod="bot-0", model="m")
    assert narrow.selector("up", 'quantile="0.5"') == (
        'up{namespace="acme",modeldeployment="bot",pool="h100",pod="bot-0",model="m",'
        'quantile="0.5"}')
    with pytest.raises(ValueError):
        Target("", "bot")


def test_label_values_are_escaped() -> None:
    t = Target(namespace='a"b', modeldeployment="c\\d")
    assert t.matchers() == 'namespace="a\\"b",modeldeployment="c\\\\d"'


def test_combined_query_tags_every_signal_once() -> None:
    expr = promql.combined(TARGET, WINDOW_S, 95, SHORT_S)
    for signal in Signal:
        assert expr.count(f'"signal", "{signal}", "", ""') == 1, signal
    # without a short window, the fast path's signals are not asked for
    plain = promql.combined(TARGET, WINDOW_S, 95)
    assert "[37500ms]" in expr and "[37500ms]" not in plain
    assert Signal.QUEUE_GROWTH not in promql.signals(TARGET, WINDOW_S, 95)


@needs_promtool
def test_every_expression_parses(tmp_path: Path) -> None:
    exprs = [*promql.signals(TARGET, WINDOW_S, 95, SHORT_S).values(),
             *promql.signals(Target("acme", "bot", pool="p", pod="x", model="m"), 1.5, 99.9,
                             0.5).values(),
             promql.combined(TARGET, WINDOW_S, 95, SHORT_S)]
    result = check_rules(tmp_path, exprs)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


@needs_promtool
def test_a_broken_expression_is_caught(tmp_path: Path) -> None:
    # The parse check above can fail: promtool rejects what Prometheus would.
    result = check_rules(tmp_path, [promql.success_rate(TARGET, WINDOW_S)[:-1]])
    assert result.returncode != 0


# Printable ASCII (quotes and backslashes included), escapes, and characters beyond ASCII.
label_values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)
                       | st.sampled_from(["\n", "\t", "\r", "é", "✓", "𐀀"]),
                       min_size=1, max_size=12)


@needs_promtool
@settings(max_examples=10, deadline=None)
@given(namespace=label_values, name=label_values)
def test_any_label_value_gives_a_valid_query(tmp_path_factory: pytest.TempPathFactory,
                                             namespace: str, name: str) -> None:
    target = Target(namespace=namespace, modeldeployment=name)
    result = check_rules(tmp_path_factory.mktemp("rules"),
                         [promql.combined(target, WINDOW_S, 95)])
    assert result.returncode == 0, (namespace, name, result.stdout + result.stderr)


# --- Semantics: synthetic Triton series, evaluated by promtool's PromQL engine --------------

def labels(pod: str, namespace: str = "acme", md: str = "bot", **extra: str) -> dict[str, str]:
    return {"namespace": namespace, "modeldeployment": md, "pod": pod, "model": "bot",
            "version": "1", **extra}


def triton_pod(pod: str, *, success: float, rejected: float, backend: float, latency_ms: float,
               queue_ms: float, compute_ms: float, rows: float, execs: float, pending: float,
               p95: float | str, quantile_spelling: str = "0.95", gpu: float | None = None,
               namespace: str = "acme", md: str = "bot") -> list[dict[str, str]]:
    """One pod's Triton series as promtool input (rates per second, durations in ms)."""
    lb = labels(pod, namespace, md)
    out = [
        {"series": series("nv_inference_request_success", lb), "values": counter(success)},
        {"series": series("nv_inference_request_duration_us", lb),
         "values": counter(success * latency_ms * 1000)},
        {"series": series("nv_inference_queue_duration_us", lb),
         "values": counter(success * queue_ms * 1000)},
        {"series": series("nv_inference_compute_infer_duration_us", lb),
         "values": counter(success * compute_ms * 1000)},
        {"series": series("nv_inference_count", lb), "values": counter(rows)},
        {"series": series("nv_inference_exec_count", lb), "values": counter(execs)},
        {"series": series("nv_inference_pending_request_count", lb), "values": constant(pending)},
        {"series": series("nv_inference_request_summary_us", {**lb, "quantile": "0.5"}),
         "values": constant(1.0)},
        {"series": series("nv_inference_request_summary_us",
                          {**lb, "quantile": quantile_spelling}),
         "values": constant(p95 if isinstance(p95, str) else p95 * 1000)},
        {"series": series("up", {k: lb[k] for k in ("namespace", "modeldeployment", "pod")}),
         "values": constant(1)},
    ]
    for reason, rate in (("REJECTED", rejected), ("BACKEND", backend), ("OTHER", 0.0),
                         ("CANCELED", 0.0)):
        out.append({"series": series("nv_inference_request_failure", {**lb, "reason": reason}),
                    "values": counter(rate)})
    if gpu is not None:
        out.append({"series": series("nv_gpu_utilization",
                                     {k: lb[k] for k in ("namespace", "modeldeployment", "pod")}
                                     | {"gpu_uuid": f"GPU-{pod}"}),
                    "values": constant(gpu)})
    return out


INPUT = [
    *triton_pod("a", success=2, rejected=0.5, backend=0, latency_ms=50, queue_ms=10,
                compute_ms=30, rows=4, execs=1, pending=3, p95=80, gpu=0.5),
    # Another exporter's spelling of the quantile label must match too.
    *triton_pod("b", success=1, rejected=0, backend=0.25, latency_ms=110, queue_ms=40,
                compute_ms=30, rows=2, execs=1, pending=1, p95=120,
                quantile_spelling="0.950000", gpu=0.25),
    # Idle: its quantiles read NaN and must not poison the max.
    *triton_pod("c", success=0, rejected=0, backend=0, latency_ms=0, queue_ms=0, compute_ms=0,
                rows=0, execs=0, pending=0, p95="NaN"),
    # Other ModelDeployments (same name in another tenant, another name here) must not leak in.
    *triton_pod("x", success=100, rejected=9, backend=9, latency_ms=999, queue_ms=999,
                compute_ms=999, rows=900, execs=1, pending=99, p95=9999, md="other"),
    *triton_pod("y", success=100, rejected=9, backend=9, latency_ms=999, queue_ms=999,
                compute_ms=999, rows=900, execs=1, pending=99, p95=9999, namespace="evil"),
    # A target of this ModelDeployment whose scrapes fail: no Triton series, up == 0.
    {"series": series("up", {"namespace": "acme", "modeldeployment": "bot", "pod": "d"}),
     "values": constant(0)},
]

EXPECTED: dict[Signal, list[tuple[dict[str, str], float]]] = {
    Signal.REQUEST_RATE: [({}, 3.75)],
    Signal.SUCCESS_RATE: [({}, 3.0)],
    Signal.FAILURE_RATE: [({"reason": "REJECTED"}, 0.5), ({"reason": "BACKEND"}, 0.25),
                          ({"reason": "OTHER"}, 0.0), ({"reason": "CANCELED"}, 0.0)],
    Signal.MEAN_LATENCY_MS: [({}, 70.0)],  # (2*50 + 1*110) / 3: weighted by requests
    Signal.MEAN_QUEUE_MS: [({}, 20.0)],  # (2*10 + 1*40) / 3
    Signal.MEAN_COMPUTE_MS: [({}, 30.0)],
    Signal.MEAN_BATCH_SIZE: [({}, 3.0)],  # (4 + 2) rows / (1 + 1) executions
    Signal.MEAN_REQUEST_ROWS: [({}, 2.0)],  # (4 + 2) rows / (2 + 1) successful requests
    Signal.QUEUE_DEPTH: [({}, 4.0)],
    Signal.POD_QUANTILE_MS: [({"pod": "a"}, 80.0), ({"pod": "b"}, 120.0)],
    Signal.QUANTILE_MS: [({}, 120.0)],
    Signal.POD_REQUEST_RATE: [({"pod": "a"}, 2.5), ({"pod": "b"}, 1.25), ({"pod": "c"}, 0.0)],
    Signal.PODS_REPORTING: [({}, 3.0)],
    Signal.PODS_DOWN: [({}, 1.0)],
    Signal.NEWEST_SAMPLE: [({}, float(EVAL_AT_S))],
    Signal.GPU_UTILIZATION: [({}, 0.375)],
    # steady counters: the short window reads what the long one does; constant queues
    Signal.REQUEST_RATE_SHORT: [({}, 3.75)],
    Signal.SUCCESS_RATE_SHORT: [({}, 3.0)],
    Signal.MEAN_QUEUE_MS_SHORT: [({}, 20.0)],
    Signal.QUEUE_GROWTH: [({}, 0.0)],
    Signal.REQUEST_RATE_LAST: [({}, 3.75)],
    Signal.QUEUE_STEP: [({}, 0.0)],
}


# Every answer keeps the ModelDeployment's labels (so one query can serve many).
BOT = {"namespace": "acme", "modeldeployment": "bot"}


def expr_test(expr: str, samples: list[tuple[dict[str, str], float]],
              md: dict[str, str] | None = None) -> dict[str, object]:
    md = BOT if md is None else md
    return {
        "expr": expr,
        "eval_time": f"{EVAL_AT_S}s",
        "exp_samples": [{"labels": "{" + ",".join(f'{k}="{v}"' for k, v in {**md, **lb}.items())
                                   + "}", "value": value} for lb, value in samples],
    }


@needs_promtool
def test_each_signal_evaluates_to_what_it_means(tmp_path: Path) -> None:
    exprs = promql.signals(TARGET, WINDOW_S, 95, SHORT_S)
    assert set(exprs) == set(EXPECTED)
    tests = [expr_test(exprs[signal], EXPECTED[signal]) for signal in Signal]
    result = run_promtool_tests(tmp_path, tests, INPUT)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_combined_query_returns_every_signal_tagged(tmp_path: Path) -> None:
    samples = [({**lb, "signal": str(signal)}, value)
               for signal, expected in EXPECTED.items() for lb, value in expected]
    result = run_promtool_tests(
        tmp_path, [expr_test(promql.combined(TARGET, WINDOW_S, 95, SHORT_S), samples)], INPUT)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_a_selection_answers_for_each_modeldeployment_apart(tmp_path: Path) -> None:
    both = promql.Selection((("acme", "bot"), ("acme", "other")))
    rate = promql.request_rate(both, WINDOW_S)
    # bot: 3.75 (above); other: 100 successes + 9 REJECTED + 9 BACKEND per second. The same
    # name in another namespace (evil/bot) is not selected.
    tests = [{"expr": rate, "eval_time": f"{EVAL_AT_S}s", "exp_samples": [
        {"labels": '{namespace="acme",modeldeployment="bot"}', "value": 3.75},
        {"labels": '{namespace="acme",modeldeployment="other"}', "value": 118.0}]}]
    result = run_promtool_tests(tmp_path, tests, INPUT)
    assert result.returncode == 0, result.stdout + result.stderr


def step_from_10_to_40(at_s: int, queue_per_sample: float, queue_grows: bool = True
                       ) -> list[dict[str, str]]:
    """One pod served 10 req/s until `at_s`, 40 after; its queue empty until then, and
    `queue_per_sample` more at each later sample (or at the first alone)."""
    lb = labels("a")
    step = at_s // INTERVAL_S  # samples 0..step at the old rate
    later = STEPS - step - 1
    served = (f"0+{10 * INTERVAL_S}x{step} "
              f"{10 * at_s + 40 * INTERVAL_S}+{40 * INTERVAL_S}x{later}")
    pending = f"0x{step} {queue_per_sample:g}+{queue_per_sample if queue_grows else 0:g}x{later}"
    return [{"series": series("nv_inference_request_success", lb), "values": served},
            {"series": series("nv_inference_pending_request_count", lb), "values": pending}]


@needs_promtool
def test_the_fast_path_sees_a_step_the_long_window_averages(tmp_path: Path) -> None:
    # 10 req/s until 570 s, then 40 req/s served while the queue grows by 2 per second: 30 s
    # later the short window (samples at 570, 585, 600 s) reads the new level, the 60-s window
    # a blend, and the queue's growth is the arrivals Triton has not counted yet.
    data = step_from_10_to_40(570, queue_per_sample=2 * INTERVAL_S)
    tests = [expr_test(promql.request_rate(TARGET, SHORT_S), [({}, 40.0)]),
             expr_test(promql.queue_growth(TARGET, SHORT_S), [({}, 2.0)]),
             expr_test(promql.request_rate(TARGET, WINDOW_S), [({}, 25.0)])]
    result = run_promtool_tests(tmp_path, tests, data)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_the_last_interval_sees_a_step_whole_where_the_short_window_blends(tmp_path: Path
                                                                          ) -> None:
    # 10 req/s until 585 s, then 40 req/s served while 30 more requests queue up by the last
    # sample (600 s): the short window (570, 585, 600 s) averages the two levels and its
    # least-squares growth spreads the queue over 30 s; the last two samples hold the new
    # level alone, and their queue step over the 15-s scrape makes the arrivals 40 + 2 = 42.
    data = step_from_10_to_40(585, queue_per_sample=30, queue_grows=False)
    tests = [expr_test(promql.request_rate(TARGET, SHORT_S), [({}, 25.0)]),
             expr_test(promql.queue_growth(TARGET, SHORT_S), [({}, 1.0)]),
             expr_test(promql.request_rate_last(TARGET, SHORT_S), [({}, 40.0)]),
             expr_test(promql.queue_step(TARGET, SHORT_S), [({}, 30.0)])]
    result = run_promtool_tests(tmp_path, tests, data)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_the_spec_batching_reads_the_newest_export_within_the_window(tmp_path: Path) -> None:
    # The operator exported max batch 16 until it was restarted at 150 s (a new instance),
    # then 32 after the spec changed at 450 s and nothing after 540 s (the ModelDeployment
    # lost its autoscaling): the newest value within the window is 32, one answer; a window
    # that ends before the change reads 16, one that starts after the last export nothing.
    first = " ".join(["16"] * 11 + ["_"] * 30)
    second = " ".join(["_"] * 10 + ["16"] * 20 + ["32"] * 7 + ["_"] * 4)
    data = [{"series": series(promql.SPEC_MAX_BATCH_SIZE, {**BOT, "instance": "op-a"}),
             "values": first},
            {"series": series(promql.SPEC_MAX_BATCH_SIZE, {**BOT, "instance": "op-b"}),
             "values": second}]

    def newest(lookback_s: float) -> str:
        return promql.newest_value(TARGET, promql.SPEC_MAX_BATCH_SIZE, lookback_s)

    tests: list[dict[str, object]] = [
        expr_test(newest(600.0), [({}, 32.0)]),
        {**expr_test(newest(400.0), [({}, 16.0)]), "eval_time": "400s"},
        expr_test(newest(30.0), [])]
    result = run_promtool_tests(tmp_path, tests, data)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_semantic_check_can_fail(tmp_path: Path) -> None:
    # Guard against a harness that passes whatever it is given.
    tests = [expr_test(promql.quantile_ms(TARGET, 95), [({}, 80.0)])]
    result = run_promtool_tests(tmp_path, tests, INPUT)
    assert result.returncode != 0
