"""`dedicap report`'s pure parts: its queries parse (and the request count means what it says,
evaluated by promtool), the window's step, scale events found in a step series."""

from __future__ import annotations

import math
from pathlib import Path

import promql_parser
import pytest

from dedicap.metrics.promql import Target
from dedicap.monitoring import report
from promkit import EVAL_AT_S, INTERVAL_S, STEPS, needs_promtool, run_promtool_tests, series


def test_every_query_parses() -> None:
    q = report.Queries(Target("acme", "bot"), 95)
    w = report.window(1_000_000.0, 1_003_600.0)
    exprs = [q.request_rate(), q.success_rate(), q.desired(), q.ready(), q.serving(),
             q.latency_ms(), q.target_ms(), q.gpus(), q.hourly_cost(),
             q.reservation_gpus("acme-h100"), q.slo_minutes(w), q.integral_hours(q.gpus(), w),
             q.requests(w), q.failed(w)]
    for expr in exprs:
        promql_parser.parse(expr)
    assert "[1h:60s]" in q.slo_minutes(w)


def _counter(pod: str, values: str, metric: str = "nv_inference_request_success",
             **extra: str) -> dict[str, str]:
    lbls = {"namespace": "acme", "modeldeployment": "bot", "pod": pod, "model": "bot", **extra}
    return {"series": series(metric, lbls), "values": values}


@needs_promtool
def test_requests_count_what_a_replica_served_before_its_first_scrape(tmp_path: Path) -> None:
    # Over the whole range: `old` serves 10 req/s throughout; `new` starts at 240 s and serves
    # 5 req/s, but Prometheus first scrapes it at 300 s (discovery takes a while), when it has
    # counted 300 already; `late` has one sample, 30, at the range's end; `gone` served 4 req/s
    # until 450 s and was scaled down. One failure counter, of `old`, as Triton labels it.
    born = STEPS // 2
    data = [_counter("old", f"0+{10 * INTERVAL_S}x{STEPS}"),
            _counter("new", f"_x{born} 300+{5 * INTERVAL_S}x{STEPS - born}"),
            _counter("late", f"_x{STEPS} 30"),
            _counter("gone", f"0+{4 * INTERVAL_S}x30"),
            _counter("old", f"0+{INTERVAL_S}x{STEPS}", "nv_inference_request_failure",
                     reason="REJECTED")]
    # (increase() extrapolates a series that ends inside the range by half a scrape interval:
    # it may have served until the next scrape would have come.)
    served = {"old": 10 * EVAL_AT_S, "new": 300 + 5 * INTERVAL_S * (STEPS - born), "late": 30,
              "gone": 4 * (450 + INTERVAL_S / 2)}
    w = report.Window(0.0, float(EVAL_AT_S), 2.0)
    q = report.Queries(Target("acme", "bot"), 95)
    tests = [{"expr": expr, "eval_time": f"{EVAL_AT_S}s", "exp_samples": [{"labels": "{}",
                                                                           "value": value}]}
             for expr, value in ((q.requests(w), sum(served.values()) + EVAL_AT_S),
                                 (q.failed(w), EVAL_AT_S))]
    result = run_promtool_tests(tmp_path, tests, data)
    assert result.returncode == 0, result.stdout + result.stderr


def test_window_step_gives_about_600_points_and_at_least_2s() -> None:
    assert report.window(0, 3600).step_s == 6
    w = report.window(0.5, 61)
    assert w.step_s == 2 and w.end == 61 and w.start == -1  # the last point is the end
    with pytest.raises(ValueError, match="must end after"):
        report.window(10, 10)


def test_steps_finds_every_change_and_ignores_gaps() -> None:
    points = [(0.0, 2.0), (1.0, 2.0), (2.0, 3.0), (3.0, math.nan), (4.0, 3.0), (5.0, 2.0)]
    assert report.steps(points) == [(2.0, 2.0, 3.0), (5.0, 3.0, 2.0)]
