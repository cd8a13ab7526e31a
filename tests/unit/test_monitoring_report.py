"""`dedicap report`'s pure parts: its queries parse, the window's step, scale events found in
a step series."""

from __future__ import annotations

import math

import promql_parser
import pytest

from dedicap.metrics.promql import Target
from dedicap.monitoring import report


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


def test_window_step_gives_about_600_points_and_at_least_2s() -> None:
    assert report.window(0, 3600).step_s == 6
    w = report.window(0.5, 61)
    assert w.step_s == 2 and w.end == 61 and w.start == -1  # the last point is the end
    with pytest.raises(ValueError, match="must end after"):
        report.window(10, 10)


def test_steps_finds_every_change_and_ignores_gaps() -> None:
    points = [(0.0, 2.0), (1.0, 2.0), (2.0, 3.0), (3.0, math.nan), (4.0, 3.0), (5.0, 2.0)]
    assert report.steps(points) == [(2.0, 2.0, 3.0), (5.0, 3.0, 2.0)]
