"""A ModelDeployment's own history as a trace: ``dedicap plan --prometheus URL --modeldeployment
NS/NAME --since 7d``.

Per step (a minute by default) it reads from Prometheus, with the operator's own selectors and
label set (``metrics.promql``), the offered request rate (successes and failures of every
reason), and the signals the live policy learns its replica from: the mean batch (rows per
execution over rows per request) and the compute time per request; plus the pods reporting, to
compare the replay with the fleet that ran. A step Prometheus has no data for is a *gap*: the
replay bridges it (so the autoscaler sees continuous traffic) and the scoring leaves it out.

``fetch_history`` is the I/O edge (one range query per signal); ``history_trace`` and
``history_points`` are pure.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

import numpy as np

from dedicap.metrics import promql
from dedicap.metrics.prometheus import PrometheusClient, Series
from dedicap.sim.replica_models import WindowPoint
from dedicap.sim.traces import Trace, rate_trace_from_windows

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parse_duration(text: str) -> float:
    """``7d``, ``12h``, ``90m``, ``30s``, ``2w`` -> seconds."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"duration {text!r}: expected a number and s, m, h, d or w (e.g. 7d)")
    return float(m.group(1)) * _SECONDS[m.group(2)]


def parse_modeldeployment(text: str) -> tuple[str, str]:
    ns, sep, name = text.partition("/")
    if not sep or not ns or not name or "/" in name:
        raise ValueError(f"--modeldeployment {text!r}: expected NAMESPACE/NAME")
    return ns, name


@dataclass(frozen=True)
class History:
    """Per-step signals on a regular grid ending at ``end`` (NaN where Prometheus had none)."""

    namespace: str
    name: str
    end: float  # unix time of the last step
    step_s: float
    request_rate: np.ndarray
    success_rate: np.ndarray
    mean_batch_rows: np.ndarray
    mean_request_rows: np.ndarray
    mean_compute_ms: np.ndarray
    pods: np.ndarray
    # the model's batching as the ModelDeployment's spec declared it at the end of the window
    # (the operator exports it; None: not given, or the operator not scraped)
    max_batch_size: int | None = None  # rows, as Triton's max_batch_size
    max_queue_delay_s: float | None = None

    @property
    def steps(self) -> int:
        return len(self.request_rate)

    def times(self) -> np.ndarray:
        """Unix time at the end of each step."""
        return self.end - self.step_s * np.arange(self.steps)[::-1]


def _on_grid(series: list[Series], start: float, step_s: float, steps: int) -> np.ndarray:
    out = np.full(steps, np.nan)
    for s in series:  # the expressions are sums: at most one series
        for t, v in s.points:
            k = round((t - start) / step_s)
            if 0 <= k < steps and math.isfinite(v):
                out[k] = v
    return out


def fetch_history(client: PrometheusClient, namespace: str, name: str, end: float,
                  since_s: float, step_s: float = 60.0) -> History:
    """The ModelDeployment's history over ``[end - since_s, end]``, one point per ``step_s``."""
    target = promql.Target(namespace=namespace, modeldeployment=name)
    steps = max(int(since_s // step_s), 1)
    start = end - (steps - 1) * step_s
    exprs = {
        "request_rate": promql.request_rate(target, step_s),
        "success_rate": promql.success_rate(target, step_s),
        "mean_batch_rows": promql.mean_batch_size(target, step_s),
        "mean_request_rows": promql.mean_request_rows(target, step_s),
        "mean_compute_ms": promql.mean_compute_ms(target, step_s),
        "pods": promql.pods_reporting(target),
    }
    data = {k: _on_grid(client.query_range(e, start, end, step_s), start, step_s, steps)
            for k, e in exprs.items()}
    batch = _newest(client, target, promql.SPEC_MAX_BATCH_SIZE, end, since_s, low=1.0)
    delay = _newest(client, target, promql.SPEC_MAX_QUEUE_DELAY, end, since_s, low=0.0)
    return History(namespace=namespace, name=name, end=end, step_s=step_s, **data,
                   max_batch_size=round(batch) if batch is not None else None,
                   max_queue_delay_s=delay)


def _newest(client: PrometheusClient, target: promql.Target, metric: str, end: float,
            since_s: float, low: float) -> float | None:
    values = [s.value for s in client.query(promql.newest_value(target, metric, since_s), end)
              if math.isfinite(s.value) and s.value >= low]
    return max(values) if values else None


def rows_per_request(h: History) -> float:
    """The history's median rows per request (NaN when Triton never said)."""
    rows = h.mean_request_rows[np.isfinite(h.mean_request_rows)]
    return float(np.median(rows)) if len(rows) else math.nan


def history_trace(h: History) -> Trace:
    """The request rate as a trace (Poisson arrivals in each step); gaps bridged and marked."""
    rates = h.request_rate.copy()
    gaps = ~np.isfinite(rates)
    if gaps.all():
        raise ValueError(
            f"{h.namespace}/{h.name}: Prometheus has no Triton request counter for it in that "
            "window (is the name right, and does Prometheus scrape its pods?)")
    starts = np.arange(h.steps) * h.step_s
    widths = np.full(h.steps, h.step_s)
    tr = rate_trace_from_windows(starts, widths, rates, f"{h.namespace}/{h.name}")
    minutes = math.ceil(tr.duration / 60.0)
    minute_of_step = (starts // 60.0).astype(int)
    gap_minutes = np.zeros(minutes, dtype=bool)
    # a minute is a gap when every step in it is one
    seen = np.zeros(minutes, dtype=bool)
    np.logical_or.at(seen, minute_of_step, ~gaps)
    gap_minutes[:] = ~seen
    return replace(tr, gaps=gap_minutes)


def history_points(h: History) -> list[WindowPoint]:
    """The windows the live policy would have learned from (batch in requests, as it counts)."""
    batch = h.mean_batch_rows / np.where(
        np.isfinite(h.mean_request_rows) & (h.mean_request_rows > 0), h.mean_request_rows, 1.0)
    return [WindowPoint(t=float(t), mean_batch=float(b), mean_compute_ms=float(c),
                        served_rps=float(s))
            for t, b, c, s in zip(h.times(), batch, h.mean_compute_ms, h.success_rate,
                                  strict=True)]
