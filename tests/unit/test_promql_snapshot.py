"""From the combined query's samples to a MetricsSnapshot, and the staleness verdicts."""

from __future__ import annotations

import math
import socket
from dataclasses import replace

import pytest

from dedicap.metrics import promql, snapshot
from dedicap.metrics.prometheus import PrometheusClient, QueryError, Sample
from dedicap.metrics.promql import Signal
from dedicap.metrics.snapshot import MetricsSnapshot, from_samples, observe

NOW = 1_700_000_000.0


def s(signal: Signal, value: float, ts: float = NOW, **labels: str) -> Sample:
    return Sample(labels={"signal": str(signal), **labels}, timestamp=ts, value=value)


def base(window_s: float = 60.0) -> MetricsSnapshot:
    return MetricsSnapshot(available=False, queried_at=NOW, window_s=window_s, percentile=95)


BUSY = [
    s(Signal.REQUEST_RATE, 3.75),
    s(Signal.SUCCESS_RATE, 3.0),
    s(Signal.FAILURE_RATE, 0.5, reason="REJECTED"),
    s(Signal.FAILURE_RATE, 0.25, reason="BACKEND"),
    s(Signal.FAILURE_RATE, 0.0, reason="CANCELED"),
    s(Signal.MEAN_LATENCY_MS, 70.0),
    s(Signal.MEAN_QUEUE_MS, 20.0),
    s(Signal.MEAN_COMPUTE_MS, 30.0),
    s(Signal.MEAN_BATCH_SIZE, 3.0),
    s(Signal.MEAN_REQUEST_ROWS, 2.0),
    s(Signal.QUEUE_DEPTH, 4.0),
    s(Signal.POD_QUANTILE_MS, 80.0, pod="a"),
    s(Signal.POD_QUANTILE_MS, 120.0, pod="b"),
    s(Signal.QUANTILE_MS, 120.0),
    s(Signal.POD_REQUEST_RATE, 2.5, pod="a"),
    s(Signal.POD_REQUEST_RATE, 1.25, pod="b"),
    s(Signal.PODS_REPORTING, 2.0),
    s(Signal.NEWEST_SAMPLE, NOW - 3),
]


def test_busy_modeldeployment() -> None:
    snap = from_samples(BUSY, base(), max_age_s=45)
    assert snap.available and snap.problem == "" and snap.reason == ""
    assert snap.timestamp == NOW - 3 and snap.queried_at == NOW
    assert (snap.request_rate, snap.success_rate) == (3.75, 3.0)
    assert snap.failure_rates == {"REJECTED": 0.5, "BACKEND": 0.25, "CANCELED": 0.0}
    assert (snap.rejected_rate, snap.backend_failure_rate, snap.failure_rate) == (0.5, 0.25, 0.75)
    assert snap.error_ratio == pytest.approx(0.2)
    assert (snap.mean_latency_ms, snap.mean_queue_ms, snap.mean_compute_ms) == (70, 20, 30)
    assert (snap.mean_batch_size, snap.mean_request_rows, snap.queue_depth) == (3, 2, 4)
    assert snap.latency_quantile_ms == 120 and snap.pod_latency_quantile_ms == {"a": 80, "b": 120}
    assert snap.pod_request_rate == {"a": 2.5, "b": 1.25}
    assert (snap.pods_reporting, snap.pods_down) == (2, 0)
    assert math.isnan(snap.gpu_utilization)
    # the fast path was not asked for
    assert snap.short_window_s is None and math.isnan(snap.request_rate_short)


def test_the_fast_path_signals_are_read_when_asked_for() -> None:
    fast = [s(Signal.REQUEST_RATE_SHORT, 9.0), s(Signal.SUCCESS_RATE_SHORT, 8.0),
            s(Signal.MEAN_QUEUE_MS_SHORT, 250.0), s(Signal.QUEUE_GROWTH, 1.5)]
    snap = from_samples([*BUSY, *fast], replace(base(), short_window_s=5.0), max_age_s=45)
    assert snap.available and snap.short_window_s == 5.0
    assert (snap.request_rate_short, snap.success_rate_short) == (9.0, 8.0)
    assert (snap.mean_queue_ms_short, snap.queue_growth) == (250.0, 1.5)


def test_the_last_intervals_arrivals_are_completions_plus_the_queues_step() -> None:
    # 12 req/s completed between the last two scrapes while 6 more requests queued up: over a
    # 2-s scrape that is 15 req/s arriving; a queue that shrank by more than was completed is
    # a backlog being served, not negative arrivals
    last = [s(Signal.REQUEST_RATE_SHORT, 9.0), s(Signal.REQUEST_RATE_LAST, 12.0),
            s(Signal.QUEUE_STEP, 6.0)]
    at = replace(base(), short_window_s=5.0, scrape_interval_s=2.0)
    assert from_samples([*BUSY, *last], at, max_age_s=6).arrivals_last == 15.0
    drained = [*last[:2], s(Signal.QUEUE_STEP, -40.0)]
    assert from_samples([*BUSY, *drained], at, max_age_s=6).arrivals_last == 0.0
    # not asked for (or no pending gauge): unknown, and the policy keeps to the short window
    assert math.isnan(from_samples([*BUSY, *last[:2]], at, max_age_s=6).arrivals_last)


def test_observe_asks_for_the_fast_path_in_the_same_query() -> None:
    client = RecordingClient([])
    snapshot.observe(client, "acme", "bot", 60.0, NOW, short_window_s=5.0)
    (expr, at), = client.calls
    assert at == NOW and "[5s]" in expr and "deriv(" in expr
    assert "irate(" in expr and "idelta(" in expr


def test_idle_modeldeployment_is_available_with_unknown_latency() -> None:
    # Pods report, nobody calls: rates are a measured zero, latencies are unknown (0/0 = NaN).
    idle = [s(Signal.REQUEST_RATE, 0.0), s(Signal.SUCCESS_RATE, 0.0),
            s(Signal.FAILURE_RATE, 0.0, reason="REJECTED"), s(Signal.MEAN_LATENCY_MS, math.nan),
            s(Signal.QUEUE_DEPTH, 0.0), s(Signal.PODS_REPORTING, 2.0),
            s(Signal.NEWEST_SAMPLE, NOW - 1)]
    snap = from_samples(idle, base(), max_age_s=45)
    assert snap.available and snap.request_rate == 0.0
    assert math.isnan(snap.mean_latency_ms) and math.isnan(snap.latency_quantile_ms)
    assert math.isnan(snap.error_ratio) and snap.pod_latency_quantile_ms == {}


def test_nothing_reporting() -> None:
    snap = from_samples([], base(), max_age_s=45)
    assert not snap.available and snap.problem == snapshot.PROBLEM_NO_PODS
    assert "no Triton pod" in snap.reason and snap.timestamp is None


def test_nothing_reporting_names_failing_scrapes() -> None:
    snap = from_samples([s(Signal.PODS_DOWN, 2.0)], base(), max_age_s=45)
    assert snap.problem == snapshot.PROBLEM_NO_PODS and snap.pods_down == 2
    assert "2 target(s) failing their scrape" in snap.reason


def test_stale_data_is_not_available_but_kept() -> None:
    old = [x for x in BUSY if x.labels["signal"] != Signal.NEWEST_SAMPLE]
    snap = from_samples([*old, s(Signal.NEWEST_SAMPLE, NOW - 46)], base(), max_age_s=45)
    assert not snap.available and snap.problem == snapshot.PROBLEM_STALE
    assert snap.reason == "newest Triton sample is 46s old (stale after 45s)"
    assert snap.request_rate == 3.75  # still there for status and logs
    fresh = from_samples([*old, s(Signal.NEWEST_SAMPLE, NOW - 44)], base(), max_age_s=45)
    assert fresh.available


def test_a_single_sample_gives_no_rate() -> None:
    just_started = [s(Signal.PODS_REPORTING, 1.0), s(Signal.NEWEST_SAMPLE, NOW - 1),
                    s(Signal.QUEUE_DEPTH, 0.0)]
    snap = from_samples(just_started, base(window_s=30), max_age_s=45)
    assert not snap.available and snap.problem == snapshot.PROBLEM_NO_RATE
    assert "30s window" in snap.reason


class RecordingClient:
    def __init__(self, answer: list[Sample] | Exception) -> None:
        self.answer = answer
        self.calls: list[tuple[str, float | None]] = []

    def query(self, expr: str, at: float | None = None) -> list[Sample]:
        self.calls.append((expr, at))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_observe_makes_one_query_at_now() -> None:
    client = RecordingClient(BUSY)
    snap = observe(client, "acme", "bot", 60, NOW, percentile=99, scrape_interval_s=15,
                   pool="h100")
    assert snap.available and snap.percentile == 99 and snap.window_s == 60
    target = promql.Target("acme", "bot", pool="h100")
    assert client.calls == [(promql.combined(target, 60, 99), NOW)]


def test_observe_staleness_threshold_is_intervals_times_scrape_interval() -> None:
    samples = [*BUSY[:-1], s(Signal.NEWEST_SAMPLE, NOW - 20)]
    assert observe(RecordingClient(samples), "acme", "bot", 60, NOW, scrape_interval_s=15,
                   stale_after_intervals=2).available
    stale = observe(RecordingClient(samples), "acme", "bot", 60, NOW, scrape_interval_s=5,
                    stale_after_intervals=2)
    assert stale.problem == snapshot.PROBLEM_STALE


def test_observe_reports_a_refused_query_without_raising() -> None:
    err = QueryError("q", "execution", "many-to-many matching not allowed", 422)
    snap = observe(RecordingClient(err), "acme", "bot", 60, NOW)
    assert not snap.available and snap.problem == snapshot.PROBLEM_QUERY
    assert "many-to-many" in snap.reason and math.isnan(snap.request_rate)


def test_observe_reports_an_unreachable_prometheus_without_raising() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = PrometheusClient(f"http://127.0.0.1:{port}", timeout_s=0.5, retries=1,
                              backoff_s=0.01)
    snap = observe(client, "acme", "bot", 60, NOW)
    assert not snap.available and snap.problem == snapshot.PROBLEM_UNAVAILABLE
    assert f"127.0.0.1:{port} unavailable after 2 attempt(s)" in snap.reason
    assert snap.timestamp is None and snap.pods_reporting == 0
