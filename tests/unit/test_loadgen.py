"""The load generator's pure parts: rate profiles, Poisson arrivals, endpoint spreading."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dedicap_local.loadgen import (
    Endpoints,
    Report,
    Step,
    arrival_times,
    classify,
    parse_profile,
    percentile,
    step_minutes,
)


def test_parse_profile() -> None:
    assert parse_profile("30:5,60:20") == [Step(30, 5), Step(60, 20)]
    assert parse_profile(" 1.5:0 ") == [Step(1.5, 0)]
    for bad in ("", "30", "30:x", "0:5", "10:-1", "inf:1"):
        with pytest.raises(ValueError):
            parse_profile(bad)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0.1, 20), st.floats(0, 50)), min_size=1, max_size=4),
       st.integers(0, 2**32))
def test_arrivals_stay_in_their_step_and_increase(steps: list[tuple[float, float]],
                                                  seed: int) -> None:
    profile = [Step(d, r) for d, r in steps]
    bounds = []
    start = 0.0
    for step in profile:
        bounds.append((start, start + step.duration_s))
        start += step.duration_s
    last = -1.0
    for t, index in arrival_times(profile, random.Random(seed)):
        assert t > last
        lo, hi = bounds[index]
        assert lo <= t < hi
        assert profile[index].rps > 0
        last = t


def test_arrival_rate_matches_the_profile() -> None:
    # 2000 s at 3/s and 1000 s at 10/s: counts within 5 standard deviations of Poisson means.
    profile = [Step(2000, 3), Step(1000, 10)]
    counts = [0, 0]
    for _, index in arrival_times(profile, random.Random(7)):
        counts[index] += 1
    for count, step in zip(counts, profile, strict=True):
        mean = step.duration_s * step.rps
        assert abs(count - mean) < 5 * math.sqrt(mean), (count, mean)


def test_arrivals_are_bounded_in_count() -> None:
    arrivals = list(arrival_times([Step(100, 100)], random.Random(1), max_requests=25))
    assert len(arrivals) == 25


def test_percentile() -> None:
    assert math.isnan(percentile([], 95))
    assert percentile([1, 2, 3, 4, 5], 50) == 3
    assert percentile([10.0] * 7, 95) == 10


def test_endpoints_round_robin_and_reread(tmp_path: Path) -> None:
    path = tmp_path / "acme.bot.json"
    now = [0.0]
    endpoints = Endpoints(path, refresh_s=1.0, clock=lambda: now[0])
    assert endpoints.pick() is None  # no file yet: no ready replica

    def publish(*pods: str) -> None:
        eps = [{"pod": p, "grpc": f"127.0.0.1:{i + 1000}", "model": "bot"}
               for i, p in enumerate(pods)]
        path.write_text(json.dumps({"endpoints": eps}))

    publish("a", "b")
    assert endpoints.pick() is None  # not re-read before the refresh period
    now[0] = 1.0
    picks = [endpoints.pick() for _ in range(6)]
    assert sorted(p["pod"] for p in picks if p) == ["a", "a", "a", "b", "b", "b"]
    publish("a", "b", "c")
    now[0] = 2.5
    picks = [endpoints.pick() for _ in range(9)]
    assert sorted(p["pod"] for p in picks if p) == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    path.write_text("{not json")
    now[0] = 4.0
    assert endpoints.pick() is None


class FakeError(Exception):
    def __init__(self, msg: str, status: str | None) -> None:
        super().__init__(msg)
        self._status = status

    def status(self) -> str | None:
        return self._status


@pytest.mark.parametrize(("msg", "status", "kind"), [
    ("[StatusCode.UNAVAILABLE] Request timeout expired", "StatusCode.UNAVAILABLE",
     "rejected_timeout"),
    ("[request id: <id_unknown>] Exceeds maximum queue size", "StatusCode.UNAVAILABLE",
     "rejected_queue_full"),
    ("Failed to process the request(s) for model 'm_0_0', message: RuntimeError: boom",
     "StatusCode.INTERNAL", "backend"),
    ("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED", "client_timeout"),
    ("failed to connect to all addresses", "StatusCode.UNAVAILABLE", "unavailable"),
    ("something else", None, "other"),
])
def test_classify(msg: str, status: str | None, kind: str) -> None:
    assert classify(FakeError(msg, status)) == kind


def test_step_minutes_count_each_request_in_the_minute_it_completed() -> None:
    profile = [Step(40, 20), Step(100, 110), Step(30, 20)]
    report = Report(timeline=[
        (10.0, 0.05),  # step 0, its only minute
        (50.0, 1.5),  # sent in step 1's first minute, answered in it
        (99.5, 1.0),  # sent in the first minute, answered in the second
        (120.0, math.nan),  # failed: counted where it was sent
        (150.0, 0.1),  # step 2
    ])
    rows = step_minutes(report, profile)
    assert [(r["step"], r["minute"], r["start_s"], r["end_s"]) for r in rows] == [
        (0, 1, 0.0, 40.0), (1, 1, 40.0, 100.0), (1, 2, 100.0, 140.0), (2, 1, 140.0, 170.0)]
    assert [r["requests"] for r in rows] == [1, 1, 2, 1]
    assert [r["failed"] for r in rows] == [0, 0, 1, 0]
    assert rows[1]["p95_ms"] == 1500.0 and rows[2]["p95_ms"] == 1000.0
