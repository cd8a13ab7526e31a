"""`dedicap report`: one ModelDeployment's timeline (PNG) and summary, from Prometheus alone.

    dedicap report --namespace acme --name support-bot --since 1h --out support-bot.png
    dedicap report -n acme -m support-bot --start 1700000000 --end 1700003600 --json

The picture has what the ModelDeployment dashboard shows, for users without Grafana: request
rate; replicas desired / ready; latency at the SLO percentile (slowest pod) against the target;
GPUs held (and the reservation's, with `--reservation`); every scale event marked. The summary
(printed, and written beside the PNG as JSON) gives SLO-minute attainment, GPU-hours, cost, scale
events and requests for the same window. Every figure is Prometheus' own answer (query_range or
an instant query over the window): nothing is counted twice.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from dedicap.metrics import promql
from dedicap.metrics.prometheus import PrometheusClient, Series, resolve_url
from dedicap.monitoring.rules import parse_duration, prom_duration

SLICE_S = 60  # the summary's SLO slices: minutes
MD_LABELS = f"{promql.LABEL_NAMESPACE}, {promql.LABEL_MODELDEPLOYMENT}"
BY_MD = f"by ({MD_LABELS})"


@dataclass(frozen=True)
class Window:
    start: float
    end: float
    step_s: float

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def range(self) -> str:
        return prom_duration(max(round(self.seconds), 1))


def window(start: float, end: float, points: int = 600) -> Window:
    """The window with a step giving about `points` points (at least 2 s, whole seconds). Its
    start moves back to a whole number of steps before `end`, so that a range query's last
    point is `end` itself (range queries evaluate at start + k x step)."""
    if end <= start:
        raise ValueError(f"the window must end after it starts ({start} .. {end})")
    step = float(max(2, math.ceil((end - start) / points)))
    return Window(end - math.ceil((end - start) / step) * step, end, step)


@dataclass(frozen=True)
class Queries:
    """Every expression the report asks, for one ModelDeployment (pure)."""

    target: promql.Target
    percentile: float
    rate_window_s: float = 60.0

    def _md(self, metric: str) -> str:
        return self.target.selector(metric)

    def request_rate(self) -> str:
        return promql.request_rate(self.target, self.rate_window_s)

    def success_rate(self) -> str:
        return promql.success_rate(self.target, self.rate_window_s)

    # One series per ModelDeployment, labelled like the Triton signals of metrics.promql, so
    # that any two of them compare or divide one to one.
    def desired(self) -> str:
        return f"max {BY_MD} ({self._md('dedicap_modeldeployment_desired_replicas')})"

    def ready(self) -> str:
        return f"max {BY_MD} ({self._md('dedicap_modeldeployment_ready_replicas')})"

    def serving(self) -> str:
        return promql.pods_reporting(self.target)

    def latency_ms(self) -> str:
        return promql.quantile_ms(self.target, self.percentile)

    def target_ms(self) -> str:
        return (f"max {BY_MD} ({self._md('dedicap_modeldeployment_latency_target_seconds')})"
                " * 1000")

    def gpus(self) -> str:
        return f"sum {BY_MD} ({self._md('dedicap_modeldeployment_gpus')})"

    def hourly_cost(self) -> str:
        return f"sum {BY_MD} ({self._md('dedicap_modeldeployment_hourly_cost')})"

    def reservation_gpus(self, reservation: str) -> str:
        return (f'max(dedicap_reservation_gpus{{reservation="{promql.escape(reservation)}",'
                f'state="committed"}})')

    # -- the summary: one instant query each, at the window's end, over the window
    def slo_minutes(self, w: Window) -> str:
        """Share of the window's minutes (with traffic) whose slowest pod met the target."""
        return (f"avg_over_time(({self.latency_ms()} <= bool on ({MD_LABELS}) "
                f"({self.target_ms()}))[{w.range}:{SLICE_S}s])")

    def integral_hours(self, expr: str, w: Window) -> str:
        """The time integral of `expr` over the window, in hours (rectangles of one step)."""
        return (f"sum_over_time(({expr})[{w.range}:{prom_duration(w.step_s)}]) * "
                f"{w.step_s:g} / 3600")

    def counted(self, metric: str, w: Window) -> str:
        """What a Triton counter counted over the window, summed over its series.

        A series that first appears inside the window is a replica started during it, whose
        Triton process began counting at zero: everything it served before Prometheus' first
        scrape of it is in its first sample, which increase() leaves out (it extrapolates toward
        zero by half a scrape interval at most). After a scale-up the new replicas take their
        share of the load before they are discovered and scraped, so that share is counted from
        their last value (or their increase, where a restart inside the window made that the
        larger). A series already there at the window's start counts its increase alone."""
        sel, r = self._md(metric), w.range
        inc, last = f"increase({sel}[{r}])", f"last_over_time({sel}[{r}])"
        before = f"{sel} offset {r}"
        born = f"({last} > {inc} or {inc} or {last}) unless {before}"
        return f"(sum(({inc} and {before}) or ({born})) or vector(0))"

    def requests(self, w: Window) -> str:
        return f"{self.counted(promql.SUCCESS, w)} + {self.counted(promql.FAILURE, w)}"

    def failed(self, w: Window) -> str:
        return self.counted(promql.FAILURE, w)


@dataclass(frozen=True)
class Summary:
    namespace: str
    modeldeployment: str
    start: float
    end: float
    percentile: float
    target_ms: float
    slo_minute_attainment: float  # 0..1, NaN without traffic
    gpu_hours: float
    cost: float
    scale_ups: int  # increases of the desired count in its range query
    scale_downs: int
    requests: float
    failed: float
    peak_replicas: float

    def lines(self) -> list[str]:
        span = prom_duration(max(round(self.end - self.start), 1))
        return [
            f"{self.namespace}/{self.modeldeployment}, {span} ending "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.end))}",
            f"  SLO minutes met (p{self.percentile:g} <= {self.target_ms:g} ms): "
            f"{_pct(self.slo_minute_attainment)}",
            f"  GPU-hours: {self.gpu_hours:.3f}   cost: {self.cost:.2f}",
            f"  scale events: {self.scale_ups} up, {self.scale_downs} down, peak "
            f"{self.peak_replicas:g} replicas",
            f"  requests: {self.requests:.0f}, failed {self.failed:.0f}",
        ]


def _pct(x: float) -> str:
    return "n/a (no traffic)" if math.isnan(x) else f"{x:.1%}"


def _points(series: list[Series]) -> Sequence[tuple[float, float]]:
    return series[0].points if series else ()


def steps(points: Sequence[tuple[float, float]]) -> list[tuple[float, float, float]]:
    """(time, from, to) of every change of a step series."""
    out = []
    for (_, a), (t, b) in itertools.pairwise(points):
        if a != b and not (math.isnan(a) or math.isnan(b)):
            out.append((t, a, b))
    return out


def _percentile(client: PrometheusClient, target: promql.Target, at: float) -> float:
    samples = client.query(target.selector("dedicap_modeldeployment_latency_target_seconds"),
                           at)
    for s in samples:
        try:
            return float(s.labels.get("percentile", "95"))
        except ValueError:
            continue
    return 95.0


def collect(client: PrometheusClient, namespace: str, name: str, w: Window,
            reservation: str | None = None) -> tuple[Summary, dict[str, list[Series]]]:
    """Ask Prometheus everything the picture and the summary need."""
    target = promql.Target(namespace, name)
    q = Queries(target, _percentile(client, target, w.end))
    exprs = {"offered": q.request_rate(), "succeeded": q.success_rate(),
             "desired": q.desired(), "ready": q.ready(), "serving": q.serving(),
             "latency": q.latency_ms(), "target": q.target_ms(), "gpus": q.gpus()}
    if reservation:
        exprs["reserved"] = q.reservation_gpus(reservation)
    data = {key: client.query_range(expr, w.start, w.end, w.step_s)
            for key, expr in exprs.items()}
    changes = steps(_points(data["desired"]))

    def scalar(expr: str) -> float:
        return client.query_scalar(expr, w.end)

    target_ms = scalar(f"max_over_time(({q.target_ms()})[{w.range}:{prom_duration(w.step_s)}])")
    summary = Summary(
        namespace=namespace, modeldeployment=name, start=w.start, end=w.end,
        percentile=q.percentile, target_ms=target_ms,
        slo_minute_attainment=scalar(q.slo_minutes(w)),
        gpu_hours=_zero(scalar(q.integral_hours(q.gpus(), w))),
        cost=_zero(scalar(q.integral_hours(q.hourly_cost(), w))),
        scale_ups=sum(1 for _, a, b in changes if b > a),
        scale_downs=sum(1 for _, a, b in changes if b < a),
        requests=_zero(scalar(q.requests(w))), failed=_zero(scalar(q.failed(w))),
        peak_replicas=max((v for _, v in _points(data["desired"]) if not math.isnan(v)),
                          default=math.nan))
    return summary, data


def _zero(x: float) -> float:
    return 0.0 if math.isnan(x) else x


def draw(summary: Summary, data: dict[str, list[Series]], out: Path) -> Path:
    """The timeline PNG: five panels sharing the time axis, scale events marked on each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = summary.start

    def xy(key: str) -> tuple[list[float], list[float]]:
        pts = _points(data.get(key, []))
        return [(t - t0) / 60 for t, _ in pts], [v for _, v in pts]

    fig, axes = plt.subplots(4, 1, figsize=(11, 10), sharex=True)
    ax = axes[0]
    ax.plot(*xy("offered"), label="offered")
    ax.plot(*xy("succeeded"), label="succeeded", alpha=0.7)
    ax.set_ylabel("requests / s")
    ax = axes[1]
    ax.step(*xy("desired"), where="post", label="desired")
    ax.step(*xy("ready"), where="post", label="ready")
    ax.step(*xy("serving"), where="post", label="pods reporting", linestyle=":")
    ax.set_ylabel("replicas")
    ax = axes[2]
    ax.plot(*xy("latency"), label=f"p{summary.percentile:g}, slowest pod")
    ax.plot(*xy("target"), label="target", color="red", linestyle="--")
    ax.set_ylabel("latency (ms)")
    ax = axes[3]
    ax.step(*xy("gpus"), where="post", label="GPUs held")
    if "reserved" in data:
        ax.step(*xy("reserved"), where="post", label="GPUs reserved", linestyle="--")
    ax.set_ylabel("GPUs")
    ax.set_xlabel("minutes")
    for t, a, b in steps(_points(data["desired"])):
        for each in axes:
            each.axvline((t - t0) / 60, color="green" if b > a else "orange", alpha=0.5,
                         linewidth=1)
    for each in axes:
        each.legend(loc="upper left", fontsize=8)
        each.grid(alpha=0.3)
    fig.suptitle("\n".join(summary.lines()), fontsize=9, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def report(client: PrometheusClient, namespace: str, name: str, w: Window, out: Path,
           reservation: str | None = None) -> Summary:
    """Draw the PNG and write the summary beside it (`<out>.json`); return the summary."""
    summary, data = collect(client, namespace, name, w, reservation)
    draw(summary, data, out)
    out.with_suffix(".json").write_text(json.dumps(asdict(summary), indent=1) + "\n")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dedicap report", description=__doc__.splitlines()[0]
                                if __doc__ else None)
    p.add_argument("-n", "--namespace", required=True)
    p.add_argument("-m", "--name", required=True, help="the ModelDeployment")
    p.add_argument("--prometheus-url", default=None,
                   help="default: $DEDICAP_PROMETHEUS_URL")
    p.add_argument("--since", default="1h", help="window ending now, e.g. 30m, 1h, 1d")
    p.add_argument("--start", type=float, default=None, help="unix time (instead of --since)")
    p.add_argument("--end", type=float, default=None, help="unix time (default: now)")
    p.add_argument("--reservation", default=None,
                   help="also draw this CapacityReservation's committed GPUs")
    p.add_argument("--out", type=Path, default=None, help="PNG to write (default: <name>.png)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = p.parse_args(list(argv or []))
    url = resolve_url(args.prometheus_url)
    if url is None:
        p.error("no Prometheus: pass --prometheus-url or set DEDICAP_PROMETHEUS_URL")
    end = args.end if args.end is not None else time.time()
    try:
        start = args.start if args.start is not None else end - parse_duration(args.since)
        w = window(start, end)
    except ValueError as err:
        p.error(str(err))
    out = args.out or Path(f"{args.name}.png")
    with PrometheusClient(url, timeout_s=30, retries=1) as client:
        summary = report(client, args.namespace, args.name, w, out, args.reservation)
    if args.json:
        print(json.dumps(asdict(summary), indent=1))
    else:
        print("\n".join(summary.lines()))
        print(f"timeline: {out}   summary: {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
