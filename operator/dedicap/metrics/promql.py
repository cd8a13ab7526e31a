"""PromQL for one ModelDeployment's Triton metrics (pure: strings in, strings out).

Every Triton series carries the labels the scrape configuration attaches to the replica's target:
``namespace`` (the tenant), ``pod``, ``modeldeployment`` and, where the pool is known, ``pool``.
Triton adds ``model`` and ``version`` itself. A :class:`Target` names the series of one
ModelDeployment; the builders below turn it into one instant-query expression per signal.

What Triton 2.51's counters mean (checked against a real server, see docs/metrics.md):

- ``nv_inference_request_success`` / ``nv_inference_request_failure{reason}`` count *requests*
  (one HTTP/gRPC call, whatever its batch dimension);
- ``nv_inference_count`` counts *inferences* (rows of the batch dimension) and
  ``nv_inference_exec_count`` counts model *executions* (batches the dynamic batcher formed), so
  their ratio is the mean batch size in rows;
- the duration counters (``*_duration_us``) are summed over *successful requests* only, so a mean
  per request divides by the success counter, never by ``nv_inference_count``; a request's
  compute time is the time of the batch it ran in;
- ``nv_inference_request_summary_us{quantile}`` is a per-process summary over Triton's own
  sliding window (not the query window); it reads NaN while the model is idle.

Every aggregation keeps the ModelDeployment's labels (``by (namespace, modeldeployment)``), so the
same expressions answer for one ModelDeployment (a :class:`Target`) or for many at once (a
:class:`Selection`): the autoscaler asks once per signal for every ModelDeployment due, and tells
the answers apart by those labels.

Summaries cannot be averaged across pods. The combined quantile is the *maximum* over pods,
which is an upper bound of the quantile of all requests together: if every pod serves at most
(1-q) of its requests slower than x, so do all pods together.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum

# The labels the scrape configuration attaches to every Triton target.
LABEL_NAMESPACE = "namespace"
LABEL_MODELDEPLOYMENT = "modeldeployment"
LABEL_POD = "pod"
LABEL_POOL = "pool"
LABEL_MODEL = "model"  # Triton's own
# The label the combined query adds to tell its signals apart.
LABEL_SIGNAL = "signal"

SUCCESS = "nv_inference_request_success"
FAILURE = "nv_inference_request_failure"
INFERENCE_COUNT = "nv_inference_count"
EXEC_COUNT = "nv_inference_exec_count"
REQUEST_DURATION = "nv_inference_request_duration_us"
QUEUE_DURATION = "nv_inference_queue_duration_us"
COMPUTE_INFER_DURATION = "nv_inference_compute_infer_duration_us"
PENDING = "nv_inference_pending_request_count"
REQUEST_SUMMARY = "nv_inference_request_summary_us"
GPU_UTILIZATION = "nv_gpu_utilization"
# The operator's own export of the model's batching as its spec declares it (Triton's metrics
# do not carry it).
SPEC_MAX_BATCH_SIZE = "dedicap_modeldeployment_max_batch_size"
SPEC_MAX_QUEUE_DELAY = "dedicap_modeldeployment_max_queue_delay_seconds"


class Signal(StrEnum):
    """One signal of the combined query; the value of its ``signal`` label."""

    REQUEST_RATE = "request_rate"
    SUCCESS_RATE = "success_rate"
    FAILURE_RATE = "failure_rate"  # by reason
    MEAN_LATENCY_MS = "mean_latency_ms"
    MEAN_QUEUE_MS = "mean_queue_ms"
    MEAN_COMPUTE_MS = "mean_compute_ms"
    MEAN_BATCH_SIZE = "mean_batch_size"
    MEAN_REQUEST_ROWS = "mean_request_rows"
    QUEUE_DEPTH = "queue_depth"
    POD_QUANTILE_MS = "pod_quantile_ms"  # by pod
    QUANTILE_MS = "quantile_ms"
    POD_REQUEST_RATE = "pod_request_rate"  # by pod
    PODS_REPORTING = "pods_reporting"
    PODS_DOWN = "pods_down"
    NEWEST_SAMPLE = "newest_sample"
    GPU_UTILIZATION = "gpu_utilization"
    # Over the short window (a few scrapes): what the fast path reads.
    REQUEST_RATE_SHORT = "request_rate_short"
    SUCCESS_RATE_SHORT = "success_rate_short"
    MEAN_QUEUE_MS_SHORT = "mean_queue_ms_short"
    QUEUE_GROWTH = "queue_growth"
    # Over the last two samples alone (a step's first full view).
    REQUEST_RATE_LAST = "request_rate_last"
    QUEUE_STEP = "queue_step"


def escape(value: str) -> str:
    """A PromQL double-quoted string literal's body for `value`."""
    return (value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
            .replace("\r", "\\r").replace("\t", "\\t"))


def duration(seconds: float) -> str:
    """A PromQL range duration: whole seconds as ``60s``, anything finer in milliseconds."""
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a range must be a positive number of seconds, got {seconds!r}")
    ms = round(seconds * 1000)
    if ms < 1:
        raise ValueError(f"a range must be at least 1ms, got {seconds!r}s")
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def quantile_label(percentile: float) -> str:
    """The ``quantile`` label value Triton writes for `percentile` (95 -> ``0.95``)."""
    if not 0 < percentile < 100:
        raise ValueError(f"a percentile must lie strictly between 0 and 100, got {percentile!r}")
    return f"{percentile / 100:g}"


def quantile_regex(percentile: float) -> str:
    """A regular expression matching the quantile label however it is formatted.

    Triton 2.51 writes ``0.95``; other exporters write ``0.950000``. PromQL anchors regular
    expressions, so ``0[.]950*`` matches exactly those spellings of the same number.
    """
    return quantile_label(percentile).replace(".", "[.]") + "0*"


@dataclass(frozen=True)
class Target:
    """The series of one ModelDeployment, optionally narrowed to one pool, pod or model."""

    namespace: str
    modeldeployment: str
    pool: str | None = None
    pod: str | None = None
    model: str | None = None

    def __post_init__(self) -> None:
        if not self.namespace or not self.modeldeployment:
            raise ValueError("a Target needs a namespace and a modeldeployment")

    def matchers(self, *extra: str) -> str:
        """The label matchers, without braces: ``namespace="acme",modeldeployment="bot"``."""
        pairs = [(LABEL_NAMESPACE, self.namespace), (LABEL_MODELDEPLOYMENT, self.modeldeployment)]
        for name, value in ((LABEL_POOL, self.pool), (LABEL_POD, self.pod),
                            (LABEL_MODEL, self.model)):
            if value is not None:
                pairs.append((name, value))
        return ",".join([*(f'{name}="{escape(value)}"' for name, value in pairs), *extra])

    def selector(self, metric: str, *extra: str) -> str:
        """An instant vector selector: ``metric{<matchers>}``."""
        return f"{metric}{{{self.matchers(*extra)}}}"


def _regex(values: list[str]) -> str:
    """An anchored PromQL regular expression matching exactly `values`."""
    return "|".join(re.escape(v) for v in values)


@dataclass(frozen=True)
class Selection:
    """The series of several ModelDeployments (`(namespace, name)` pairs). The matchers select
    every pair's series and possibly others (namespaces x names): readers keep the pairs they
    asked for."""

    pairs: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        if not self.pairs:
            raise ValueError("a Selection needs at least one ModelDeployment")

    def matchers(self, *extra: str) -> str:
        parts = []
        for label, values in ((LABEL_NAMESPACE, sorted({ns for ns, _ in self.pairs})),
                              (LABEL_MODELDEPLOYMENT, sorted({n for _, n in self.pairs}))):
            if len(values) == 1:
                parts.append(f'{label}="{escape(values[0])}"')
            else:
                parts.append(f'{label}=~"{escape(_regex(values))}"')
        return ",".join([*parts, *extra])

    def selector(self, metric: str, *extra: str) -> str:
        return f"{metric}{{{self.matchers(*extra)}}}"


Scope = Target | Selection
# Every aggregation keeps these: one answer per ModelDeployment.
BY_MD = f"{LABEL_NAMESPACE}, {LABEL_MODELDEPLOYMENT}"
BY_POD = f"{BY_MD}, {LABEL_POD}"


def _rate(target: Scope, metric: str, window: str, *extra: str) -> str:
    return f"rate({target.selector(metric, *extra)}[{window}])"


def _per_success_ms(target: Scope, duration_metric: str, window: str) -> str:
    # Duration counters sum over successful requests only: divide by the success counter.
    # 0/0 (no request in the window) is NaN, which the reader maps to "unknown".
    return (f"sum by ({BY_MD}) ({_rate(target, duration_metric, window)}) / "
            f"sum by ({BY_MD}) ({_rate(target, SUCCESS, window)}) / 1000")


def _requests(target: Scope, function: str, window_s: float) -> str:
    """`function` (rate, irate) of successes and failures of every reason, per ModelDeployment."""
    names = f'__name__=~"{SUCCESS}|{FAILURE}"'
    return f"sum by ({BY_MD}) ({function}({{{target.matchers(names)}}}[{duration(window_s)}]))"


def request_rate(target: Scope, window_s: float) -> str:
    """Offered requests per second: successes and failures of every reason."""
    return _requests(target, "rate", window_s)


def success_rate(target: Scope, window_s: float) -> str:
    return f"sum by ({BY_MD}) ({_rate(target, SUCCESS, duration(window_s))})"


def failure_rate_by_reason(target: Scope, window_s: float) -> str:
    """Failed requests per second by ``reason`` (REJECTED, BACKEND, CANCELED, OTHER)."""
    return f"sum by ({BY_MD}, reason) ({_rate(target, FAILURE, duration(window_s))})"


def mean_latency_ms(target: Scope, window_s: float) -> str:
    """Mean end-to-end time of a successful request inside Triton, in milliseconds."""
    return _per_success_ms(target, REQUEST_DURATION, duration(window_s))


def mean_queue_ms(target: Scope, window_s: float) -> str:
    """Mean time a successful request waited in Triton's queue, in milliseconds."""
    return _per_success_ms(target, QUEUE_DURATION, duration(window_s))


def mean_compute_ms(target: Scope, window_s: float) -> str:
    """Mean compute time per successful request (= of the batch it ran in), in milliseconds."""
    return _per_success_ms(target, COMPUTE_INFER_DURATION, duration(window_s))


def mean_batch_size(target: Scope, window_s: float) -> str:
    """Mean rows per model execution: inferences / executions."""
    window = duration(window_s)
    return (f"sum by ({BY_MD}) ({_rate(target, INFERENCE_COUNT, window)}) / "
            f"sum by ({BY_MD}) ({_rate(target, EXEC_COUNT, window)})")


def mean_request_rows(target: Scope, window_s: float) -> str:
    """Mean rows per successful request: inferences / successes (1 for unbatched clients).

    A batch of ``mean_batch_size`` rows holds ``mean_batch_size / mean_request_rows`` requests.
    """
    window = duration(window_s)
    return (f"sum by ({BY_MD}) ({_rate(target, INFERENCE_COUNT, window)}) / "
            f"sum by ({BY_MD}) ({_rate(target, SUCCESS, window)})")


def queue_depth(target: Scope) -> str:
    """Requests waiting in Triton's queues now, summed over pods."""
    return f"sum by ({BY_MD}) ({target.selector(PENDING)})"


def queue_growth(target: Scope, window_s: float) -> str:
    """How fast the queues grow, requests per second (``deriv`` of the pending-request gauge:
    its least-squares slope over the window's samples, summed over pods).

    Triton counts a request when it completes, so while a queue builds the request rate is the
    rate served, not the rate offered: arrivals = completions + the queue's growth (the
    conservation of requests that Little's law rests on)."""
    return f"sum by ({BY_MD}) (deriv({target.selector(PENDING)}[{duration(window_s)}]))"


def request_rate_last(target: Scope, window_s: float) -> str:
    """Offered requests per second between each pod's last two samples (``irate``; the window
    only has to hold two)."""
    return _requests(target, "irate", window_s)


def queue_step(target: Scope, window_s: float) -> str:
    """How many more requests wait than at the scrape before (``idelta`` of the pending gauge,
    summed over pods): over the scrape interval, the queues' growth across the last one, which
    with `request_rate_last` makes the arrivals of that interval alone."""
    return f"sum by ({BY_MD}) (idelta({target.selector(PENDING)}[{duration(window_s)}]))"


def pod_quantile_ms(target: Scope, percentile: float) -> str:
    """Each pod's request latency at `percentile`, in ms; idle pods (NaN) are left out.

    ``>= 0`` drops NaN (every comparison with NaN is false) and keeps every real duration. A pod
    serving several models reports its slowest.
    """
    quantile = f'quantile=~"{quantile_regex(percentile)}"'
    return f"max by ({BY_POD}) ({target.selector(REQUEST_SUMMARY, quantile)} >= 0) / 1000"


def quantile_ms(target: Scope, percentile: float) -> str:
    """The combined latency at `percentile`, in ms: the maximum of the pods' quantiles."""
    return f"max by ({BY_MD}) ({pod_quantile_ms(target, percentile)})"


def pod_request_rate(target: Scope, window_s: float) -> str:
    """Offered requests per second by pod (to see imbalance and which pods carry the load)."""
    names = f'__name__=~"{SUCCESS}|{FAILURE}"'
    return f"sum by ({BY_POD}) (rate({{{target.matchers(names)}}}[{duration(window_s)}]))"


def pods_reporting(target: Scope) -> str:
    """Pods with a current (not stale) Triton sample."""
    return f"count by ({BY_MD}) (count by ({BY_POD}) ({target.selector(SUCCESS)}))"


def pods_down(target: Scope) -> str:
    """Targets whose last scrape failed (``up == 0``); empty when there are none."""
    return f"count by ({BY_MD}) ({target.selector('up')} == 0)"


def newest_sample(target: Scope) -> str:
    """Unix time of the newest Triton sample of the ModelDeployment (for the staleness check)."""
    return f"max by ({BY_MD}) (timestamp({target.selector(SUCCESS)}))"


def newest_value(target: Scope, metric: str, lookback_s: float) -> str:
    """The newest value of a per-ModelDeployment gauge within `lookback_s` (one per
    ModelDeployment: an operator restarted or scraped twice exports the same spec)."""
    return (f"max by ({BY_MD}) (last_over_time({target.selector(metric)}"
            f"[{duration(lookback_s)}]))")


def gpu_utilization(target: Scope) -> str:
    """Mean GPU utilization (0..1) over the pods' GPUs; absent on CPU-only replicas."""
    return f"avg by ({BY_MD}) ({target.selector(GPU_UTILIZATION)})"


def signals(target: Scope, window_s: float, percentile: float,
            short_window_s: float | None = None) -> dict[Signal, str]:
    """Every signal's expression for one ModelDeployment; with `short_window_s`, also the
    fast path's rates over that short window (a few scrapes)."""
    out = {
        Signal.REQUEST_RATE: request_rate(target, window_s),
        Signal.SUCCESS_RATE: success_rate(target, window_s),
        Signal.FAILURE_RATE: failure_rate_by_reason(target, window_s),
        Signal.MEAN_LATENCY_MS: mean_latency_ms(target, window_s),
        Signal.MEAN_QUEUE_MS: mean_queue_ms(target, window_s),
        Signal.MEAN_COMPUTE_MS: mean_compute_ms(target, window_s),
        Signal.MEAN_BATCH_SIZE: mean_batch_size(target, window_s),
        Signal.MEAN_REQUEST_ROWS: mean_request_rows(target, window_s),
        Signal.QUEUE_DEPTH: queue_depth(target),
        Signal.POD_QUANTILE_MS: pod_quantile_ms(target, percentile),
        Signal.QUANTILE_MS: quantile_ms(target, percentile),
        Signal.POD_REQUEST_RATE: pod_request_rate(target, window_s),
        Signal.PODS_REPORTING: pods_reporting(target),
        Signal.PODS_DOWN: pods_down(target),
        Signal.NEWEST_SAMPLE: newest_sample(target),
        Signal.GPU_UTILIZATION: gpu_utilization(target),
    }
    if short_window_s is not None:
        out.update({
            Signal.REQUEST_RATE_SHORT: request_rate(target, short_window_s),
            Signal.SUCCESS_RATE_SHORT: success_rate(target, short_window_s),
            Signal.MEAN_QUEUE_MS_SHORT: mean_queue_ms(target, short_window_s),
            Signal.QUEUE_GROWTH: queue_growth(target, short_window_s),
            Signal.REQUEST_RATE_LAST: request_rate_last(target, short_window_s),
            Signal.QUEUE_STEP: queue_step(target, short_window_s),
        })
    return out


def tagged(expr: str, signal: Signal | str) -> str:
    """`expr` with every series labelled ``signal="<signal>"``."""
    return f'label_replace({expr}, "{LABEL_SIGNAL}", "{escape(str(signal))}", "", "")'


def combined(target: Scope, window_s: float, percentile: float,
             short_window_s: float | None = None) -> str:
    """All signals in one expression, so a snapshot costs one HTTP query.

    Each signal is tagged with its own ``signal`` label, so ``or`` keeps every series of every
    signal (``or`` only drops right-hand series whose label set already occurs on the left).
    A signal with no data (no traffic, no GPU, no target down) is simply absent.
    """
    return " or ".join(tagged(expr, signal) for signal, expr in
                       signals(target, window_s, percentile, short_window_s).items())
