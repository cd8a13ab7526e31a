"""ModelDeployments' Triton signals at one moment: :func:`observe` (one ModelDeployment) and
:func:`observe_many` (several) -> :class:`MetricsSnapshot`.

One HTTP query answers for any number of ModelDeployments (the signals of ``promql.combined``,
told apart by their ``signal`` label, and the ModelDeployments by ``namespace`` and
``modeldeployment``). It never raises for an expected outage: Prometheus unreachable, a refused
query, no pod reporting, stale or too few samples all give ``available=False`` with a short
machine-readable ``problem`` and a human-readable ``reason`` for the status condition.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from dedicap.metrics import promql
from dedicap.metrics.prometheus import PrometheusUnavailable, QueryError, Sample
from dedicap.metrics.promql import Signal

# `problem` codes (stable: the controller maps them to condition reasons and counters).
PROBLEM_UNAVAILABLE = "PrometheusUnavailable"
PROBLEM_QUERY = "QueryError"
PROBLEM_NO_PODS = "NoPodsReporting"
PROBLEM_STALE = "StaleMetrics"
PROBLEM_NO_RATE = "TooFewSamples"

REJECTED = "REJECTED"
BACKEND = "BACKEND"


class QueryClient(Protocol):
    """What :func:`observe` needs from a Prometheus client."""

    def query(self, expr: str, at: float | None = None) -> list[Sample]: ...


@dataclass(frozen=True)
class MetricsSnapshot:
    """Triton's signals for one ModelDeployment over the window ending at `queried_at`.

    Rates are per second, durations in milliseconds. NaN means "not known" (no request in the
    window, no GPU metrics); a zero is a measured zero.
    """

    available: bool
    queried_at: float
    window_s: float
    percentile: float
    problem: str = ""  # one of the PROBLEM_* codes when not available
    reason: str = ""  # why not available, in words
    timestamp: float | None = None  # unix time of the newest Triton sample
    request_rate: float = math.nan  # offered: successes + failures of every reason
    success_rate: float = math.nan
    failure_rates: Mapping[str, float] = field(default_factory=dict)  # by Triton's reason
    mean_latency_ms: float = math.nan
    latency_quantile_ms: float = math.nan  # at `percentile`: the max over pods
    pod_latency_quantile_ms: Mapping[str, float] = field(default_factory=dict)
    pod_request_rate: Mapping[str, float] = field(default_factory=dict)
    mean_queue_ms: float = math.nan
    mean_compute_ms: float = math.nan  # per request = of the batch it ran in
    mean_batch_size: float = math.nan  # rows per model execution
    mean_request_rows: float = math.nan  # rows per successful request
    queue_depth: float = math.nan  # pending requests, summed over pods
    pods_reporting: int = 0
    pods_down: int = 0  # targets whose last scrape failed
    gpu_utilization: float = math.nan
    # The fast path's signals over `short_window_s` (NaN when not asked for): the offered and
    # served rates, the mean queue time and how fast the queues grow (requests/s).
    short_window_s: float | None = None
    request_rate_short: float = math.nan
    success_rate_short: float = math.nan
    mean_queue_ms_short: float = math.nan
    queue_growth: float = math.nan
    # ... and over the last scrape interval alone: the offered rate and how many more requests
    # wait than at the scrape before; `scrape_interval_s` is the interval Prometheus was told
    request_rate_last: float = math.nan
    queue_step: float = math.nan
    scrape_interval_s: float = 15.0

    @property
    def arrivals_last(self) -> float:
        """Requests/s that arrived over the last scrape interval: those completed in it plus
        the queues' growth across it (Triton counts a request when it completes); NaN when
        not read."""
        if not (math.isfinite(self.request_rate_last) and math.isfinite(self.queue_step)):
            return math.nan
        return max(self.request_rate_last + self.queue_step / self.scrape_interval_s, 0.0)

    @property
    def rejected_rate(self) -> float:
        """Queue timeouts per second: unmet demand, a capacity problem."""
        return self.failure_rates.get(REJECTED, 0.0)

    @property
    def backend_failure_rate(self) -> float:
        """Model errors per second: more replicas will not help."""
        return self.failure_rates.get(BACKEND, 0.0)

    @property
    def failure_rate(self) -> float:
        return sum(self.failure_rates.values())

    @property
    def error_ratio(self) -> float:
        """Failed / offered requests in the window; NaN without traffic."""
        if not self.request_rate > 0:
            return math.nan
        return self.failure_rate / self.request_rate


def observe(client: QueryClient, namespace: str, modeldeployment: str, window_s: float,
            now: float, *, percentile: float = 95.0, scrape_interval_s: float = 15.0,
            stale_after_intervals: float = 3.0, pool: str | None = None,
            model: str | None = None, short_window_s: float | None = None) -> MetricsSnapshot:
    """Read one ModelDeployment's signals over ``[now - window_s, now]``.

    `window_s` should span at least four scrape intervals (a rate needs two samples). Data is
    stale when the newest Triton sample is older than ``stale_after_intervals`` scrape
    intervals. `short_window_s` (at least two scrape intervals) adds the fast path's signals.
    """
    target = promql.Target(namespace=namespace, modeldeployment=modeldeployment, pool=pool,
                           model=model)
    expr = promql.combined(target, window_s, percentile, short_window_s)
    base = MetricsSnapshot(available=False, queried_at=now, window_s=window_s,
                           percentile=percentile, short_window_s=short_window_s,
                           scrape_interval_s=scrape_interval_s)
    try:
        samples = client.query(expr, at=now)
    except PrometheusUnavailable as err:
        return _unavailable(base, PROBLEM_UNAVAILABLE, str(err))
    except QueryError as err:
        return _unavailable(base, PROBLEM_QUERY,
                            f"Prometheus rejected the query ({err.error_type}: {err.error})")
    return from_samples(samples, base, max_age_s=stale_after_intervals * scrape_interval_s)


def observe_many(client: QueryClient, keys: Iterable[tuple[str, str]], window_s: float,
                 now: float, *, percentile: float = 95.0, scrape_interval_s: float = 15.0,
                 stale_after_intervals: float = 3.0, short_window_s: float | None = None
                 ) -> dict[tuple[str, str], MetricsSnapshot]:
    """`observe` for several ModelDeployments (`(namespace, name)` pairs) in one query: each
    gets the snapshot `observe` would give it. An outage or a refused query makes every
    snapshot unavailable with the same problem."""
    wanted = sorted(set(keys))
    base = MetricsSnapshot(available=False, queried_at=now, window_s=window_s,
                           percentile=percentile, short_window_s=short_window_s,
                           scrape_interval_s=scrape_interval_s)
    if not wanted:
        return {}
    expr = promql.combined(promql.Selection(tuple(wanted)), window_s, percentile,
                           short_window_s)
    try:
        samples = client.query(expr, at=now)
    except PrometheusUnavailable as err:
        return {k: _unavailable(base, PROBLEM_UNAVAILABLE, str(err)) for k in wanted}
    except QueryError as err:
        reason = f"Prometheus rejected the query ({err.error_type}: {err.error})"
        return {k: _unavailable(base, PROBLEM_QUERY, reason) for k in wanted}
    grouped = by_modeldeployment(samples, wanted)
    max_age = stale_after_intervals * scrape_interval_s
    return {k: from_samples(v, base, max_age_s=max_age) for k, v in grouped.items()}


def by_modeldeployment(samples: Iterable[Sample], wanted: Iterable[tuple[str, str]]
                       ) -> dict[tuple[str, str], list[Sample]]:
    """The samples of each wanted `(namespace, name)` (a query's matchers may select more)."""
    grouped: dict[tuple[str, str], list[Sample]] = {k: [] for k in wanted}
    for sample in samples:
        key = (sample.labels.get(promql.LABEL_NAMESPACE, ""),
               sample.labels.get(promql.LABEL_MODELDEPLOYMENT, ""))
        if key in grouped:
            grouped[key].append(sample)
    return grouped


def _unavailable(base: MetricsSnapshot, problem: str, reason: str) -> MetricsSnapshot:
    return replace(base, available=False, problem=problem, reason=reason)


def from_samples(samples: Iterable[Sample], base: MetricsSnapshot,
                 max_age_s: float) -> MetricsSnapshot:
    """Build the snapshot from the combined query's samples, then judge its freshness."""
    scalars: dict[str, float] = {}
    failures: dict[str, float] = {}
    pod_quantiles: dict[str, float] = {}
    pod_rates: dict[str, float] = {}
    for sample in samples:
        signal = sample.labels.get(promql.LABEL_SIGNAL, "")
        if signal == Signal.FAILURE_RATE:
            failures[sample.labels.get("reason", "OTHER")] = _finite_or_zero(sample.value)
        elif signal == Signal.POD_QUANTILE_MS:
            pod_quantiles[sample.labels.get(promql.LABEL_POD, "")] = sample.value
        elif signal == Signal.POD_REQUEST_RATE:
            pod_rates[sample.labels.get(promql.LABEL_POD, "")] = sample.value
        elif signal:
            scalars[signal] = sample.value

    def get(signal: Signal) -> float:
        return scalars.get(signal, math.nan)

    newest = get(Signal.NEWEST_SAMPLE)
    pods = get(Signal.PODS_REPORTING)
    snap = MetricsSnapshot(
        available=True,
        queried_at=base.queried_at,
        window_s=base.window_s,
        percentile=base.percentile,
        timestamp=newest if math.isfinite(newest) else None,
        request_rate=get(Signal.REQUEST_RATE),
        success_rate=get(Signal.SUCCESS_RATE),
        failure_rates=failures,
        mean_latency_ms=get(Signal.MEAN_LATENCY_MS),
        latency_quantile_ms=get(Signal.QUANTILE_MS),
        pod_latency_quantile_ms=pod_quantiles,
        pod_request_rate=pod_rates,
        mean_queue_ms=get(Signal.MEAN_QUEUE_MS),
        mean_compute_ms=get(Signal.MEAN_COMPUTE_MS),
        mean_batch_size=get(Signal.MEAN_BATCH_SIZE),
        mean_request_rows=get(Signal.MEAN_REQUEST_ROWS),
        queue_depth=get(Signal.QUEUE_DEPTH),
        pods_reporting=int(pods) if math.isfinite(pods) else 0,
        # count() of nothing is an empty result: no target down.
        pods_down=int(_finite_or_zero(get(Signal.PODS_DOWN))),
        gpu_utilization=get(Signal.GPU_UTILIZATION),
        short_window_s=base.short_window_s,
        request_rate_short=get(Signal.REQUEST_RATE_SHORT),
        success_rate_short=get(Signal.SUCCESS_RATE_SHORT),
        mean_queue_ms_short=get(Signal.MEAN_QUEUE_MS_SHORT),
        queue_growth=get(Signal.QUEUE_GROWTH),
        request_rate_last=get(Signal.REQUEST_RATE_LAST),
        queue_step=get(Signal.QUEUE_STEP),
        scrape_interval_s=base.scrape_interval_s,
    )
    problem, reason = _judge(snap, max_age_s)
    if problem:
        # Keep what was read (useful in status and logs), but say it must not be acted on.
        return replace(snap, available=False, problem=problem, reason=reason)
    return snap


def _judge(snap: MetricsSnapshot, max_age_s: float) -> tuple[str, str]:
    if snap.pods_reporting == 0 or snap.timestamp is None:
        down = f" ({snap.pods_down} target(s) failing their scrape)" if snap.pods_down else ""
        return PROBLEM_NO_PODS, f"no Triton pod of this ModelDeployment is reporting{down}"
    age = snap.queried_at - snap.timestamp
    if age > max_age_s:
        return (PROBLEM_STALE,
                f"newest Triton sample is {age:.0f}s old (stale after {max_age_s:.0f}s)")
    if not math.isfinite(snap.request_rate):
        return (PROBLEM_NO_RATE,
                f"fewer than two samples in the {snap.window_s:g}s window: no rate yet")
    return "", ""


def _finite_or_zero(value: float) -> float:
    return value if math.isfinite(value) else 0.0
