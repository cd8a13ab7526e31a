"""``dedicap plan``: how many GPUs to reserve, and what it costs, for the user's own traffic.

    dedicap plan --trace requests.jsonl --slo p95=200ms [--replica perf.csv] [--pool h100=2.5]
    dedicap plan --prometheus URL --modeldeployment NS/NAME --since 7d --slo p95=200ms

Traffic: a trace file (CSV with or without a header, or JSON lines; ``traces.load_trace`` infers
the timestamp unit and refuses implausible or ambiguous readings, naming the option to fix
them), or a ModelDeployment's own request history from Prometheus (``history.py``). What was
read is printed before anything is replayed.

The replica: measured from the user's own Triton (``replica_models.py``): learned from the
deployment's metrics with the live policy's own capacity fit, or fitted to a perf_analyzer CSV
or a YAML batch-time curve (``--replica``); without either, the calibrated example encoder,
named as such.

It replays the traffic with the operator's own policy (``dedicap.decide.policy``) against
simulated replicas and reports SLO-minute attainment, GPU-hours, cost and scale events. Then,
for each pool, the trade-off curve (``tradeoff.py``): reserved GPUs against SLO-minute
attainment, reserved cost and the GPU-hours burst would have to supply, and the smallest
reservation that reaches the attainment goal; it recommends the pool of least reserved cost.
``--json`` prints all of it; ``--plot`` writes the replay's timeline and, beside it, the
trade-off curves.

A pool is ``NAME=PRICE`` (per GPU-hour) or ``NAME=PRICE@SPEED`` where ``SPEED`` is the
replica's throughput relative to the GPU the replica model was measured on (0.5 = half as fast).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from dedicap.decide.policy import PolicyConfig
from dedicap.decide.policy_capacity import max_batch_in_requests
from dedicap.sim import tradeoff
from dedicap.sim.baselines import PolicyScaler
from dedicap.sim.replica_models import (
    DEFAULT_QUEUE_DELAY_S,
    ReplicaModel,
    calibrated_example,
    from_file_text,
    from_history,
)
from dedicap.sim.service import MEASURED, ServiceModel
from dedicap.sim.simulator import SimConfig, SimResult, simulate
from dedicap.sim.trace_inference import TIME_UNITS, TraceReading, human_span
from dedicap.sim.traces import (
    Trace,
    load_trace,
    rate_trace_from_windows,
    read_window_rates,
    scale_arrivals,
)

# Requests above which the fluid engine replays by default: a trade-off curve is several
# replays, and at a million requests the exact engine's per-request loop takes seconds per
# replay where the fluid one takes a fraction of one (the engines agree within the tolerances
# of tests/unit/test_sim_engines.py; --engine exact forces the exact one).
EXACT_LIMIT = 1_000_000


@dataclass(frozen=True)
class Pool:
    name: str
    price: float
    speed: float = 1.0


def parse_slo(text: str) -> tuple[float, float]:
    """``p95=200ms`` -> (95.0, 200.0); units ms or s."""
    m = re.fullmatch(r"\s*p(\d+(?:\.\d+)?)\s*=\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"SLO {text!r}: expected e.g. p95=200ms")
    pct, value, unit = float(m.group(1)), float(m.group(2)), m.group(3) or "ms"
    if not 0 < pct < 100:
        raise argparse.ArgumentTypeError(f"SLO percentile {pct} must be within (0, 100)")
    return pct, value * (1000.0 if unit == "s" else 1.0)


class SLOAction(argparse.Action):
    """``--slo`` (repeatable): a request-level objective (``p95=200ms``) sets ``args.slo``; a
    streaming LLM's (``ttft.p95=500ms``, ``tpot.p95=50ms``) goes to ``args.token_slo``, and
    then the plan replays tokens (llm_plan.py)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        from dedicap.sim.llm_plan import parse_token_slo

        text = str(values)
        try:
            token = parse_token_slo(text)
            if token is None:
                namespace.slo = parse_slo(text)
            else:
                objectives = dict(getattr(namespace, "token_slo", None) or {})
                objectives[token[0]] = (token[1], token[2])
                namespace.token_slo = objectives
        except argparse.ArgumentTypeError as err:
            raise argparse.ArgumentError(self, str(err)) from None


def parse_pool(text: str) -> Pool:
    m = re.fullmatch(r"([A-Za-z0-9][-A-Za-z0-9_.]*)=(\d+(?:\.\d+)?)(?:@(\d+(?:\.\d+)?))?", text)
    if not m:
        raise argparse.ArgumentTypeError(f"pool {text!r}: expected NAME=PRICE or NAME=PRICE@SPEED")
    speed = float(m.group(3)) if m.group(3) else 1.0
    if speed <= 0:
        raise argparse.ArgumentTypeError(f"pool {text!r}: speed must be > 0")
    return Pool(m.group(1), float(m.group(2)), speed)


def _service_for(base: ServiceModel, pool: Pool) -> ServiceModel:
    return replace(base, t0=base.t0 / pool.speed, t1=base.t1 / pool.speed)


@dataclass
class Traffic:
    """What is replayed, and how it was read (shown before the replay)."""

    trace: Trace
    reading: TraceReading | None = None  # a trace file's
    history: Any = None  # history.History from Prometheus
    notes: list[str] = field(default_factory=list)


def load_traffic(args: argparse.Namespace) -> Traffic:
    if args.prometheus:
        from dedicap.sim import history as hist

        h = _fetch_history(args)
        traffic = Traffic(hist.history_trace(h), history=h)
    elif args.window_rates:
        starts, widths, rates = read_window_rates(
            args.trace, args.window_start_column, args.window_width_column, args.rate_column)
        count = None if args.minutes is None else math.ceil(args.minutes * 60.0 / widths[0])
        return Traffic(rate_trace_from_windows(starts, widths, rates, Path(args.trace).stem,
                                               count=count, scale=args.scale))
    else:
        tr, reading = load_trace(args.trace, time_column=args.time_column,
                                 time_unit=args.time_unit, work_column=args.work_column,
                                 work_per_unit=args.work_per_unit)
        traffic = Traffic(tr, reading=reading)
    tr = traffic.trace
    if args.scale != 1.0:
        tr = scale_arrivals(tr, args.scale) if tr.times is not None else replace(
            tr, rate=None if tr.rate is None else tr.rate * args.scale)
        traffic.notes.append(f"scaled x{args.scale:g}: {tr.requests:.0f} requests")
    if args.minutes is not None and args.minutes * 60.0 < tr.duration:
        d = args.minutes * 60.0
        if tr.times is not None:
            keep = tr.times < d
            tr = replace(tr, times=tr.times[keep], duration=d,
                         work=None if tr.work is None else tr.work[keep])
        else:
            assert tr.rate_t is not None and tr.rate is not None
            t = np.append(tr.rate_t[tr.rate_t < d], d)
            tr = replace(tr, rate_t=t, rate=np.interp(t, tr.rate_t, tr.rate), duration=d)
        if tr.gaps is not None:
            tr = replace(tr, gaps=tr.gaps[: math.ceil(d / 60.0)])
        traffic.notes.append(f"replaying the first {args.minutes:g} minutes")
    traffic.trace = tr
    return traffic


def _fetch_history(args: argparse.Namespace) -> Any:
    """The ModelDeployment's history from Prometheus (the only network I/O of the planner)."""
    import time

    from dedicap.metrics.prometheus import PrometheusClient, resolve_url
    from dedicap.sim import history as hist

    url = resolve_url(args.prometheus)
    assert url is not None
    ns, name = hist.parse_modeldeployment(args.modeldeployment)
    since = hist.parse_duration(args.since)
    step = hist.parse_duration(args.step)
    with PrometheusClient(url, timeout_s=30.0) as client:
        return hist.fetch_history(client, ns, name, end=args.until or time.time(),
                                  since_s=since, step_s=step)


def replica_model(args: argparse.Namespace, traffic: Traffic) -> ReplicaModel:
    timeout = args.queue_timeout
    given_delay = args.max_queue_delay_ms
    delay = given_delay / 1000.0 if given_delay is not None else DEFAULT_QUEUE_DELAY_S
    if args.replica:
        p = Path(args.replica)
        return from_file_text(p.read_text(encoding="utf-8"), p.name, args.max_batch, delay,
                              timeout)
    if traffic.history is not None:
        from dedicap.sim import history as hist

        h = traffic.history
        # what the flags do not say, the deployment's spec does (the operator exports it)
        notes: list[str] = []
        max_batch = args.max_batch
        if max_batch is None and h.max_batch_size is not None:
            max_batch = h.max_batch_size
            notes.append(f"max batch {max_batch} from the ModelDeployment's spec")
        if given_delay is None and h.max_queue_delay_s is not None:
            delay = h.max_queue_delay_s
            notes.append(f"queue delay {1000 * delay:g} ms from the ModelDeployment's spec")
        if max_batch is not None:
            # the history's batches count requests, as the live policy counts them
            max_batch = max_batch_in_requests(max_batch, hist.rows_per_request(h))
        model = from_history(hist.history_points(h), f"{h.namespace}/{h.name}", h.step_s,
                             PolicyConfig.capacity_half_life_s, max_batch, delay, timeout)
        return replace(model, notes=(*notes, *model.notes))
    return calibrated_example(args.model, timeout)


def _run(trace: Trace, args: argparse.Namespace, service: ServiceModel, limit: int | None,
         price: float, progress: bool) -> SimResult:
    pct, target = args.slo
    engine = args.engine
    if engine == "auto":
        engine = "exact" if trace.requests <= EXACT_LIMIT else "fluid"
    mr = trace.minute_rates()
    initial = max(args.min_replicas, 1)
    if len(mr):
        # start warm: the fleet a steady policy would hold for the first minutes
        first = float(mr[:2].max())
        initial = max(initial, math.ceil(first / (0.9 * service.capacity(trace.mean_work))))
    if limit is not None:
        initial = min(initial, limit)
    cfg = SimConfig(
        service=service, slo_percentile=pct, slo_target_ms=target, slo_error_max=args.error_rate,
        startup_delay_s=args.startup, engine=engine, initial_replicas=initial,
        max_replicas=limit if limit is not None else 10_000, gpus_per_replica=args.gpus_per_replica,
        price_per_gpu_hour=price, seed=args.seed, progress=progress,
    )
    policy = PolicyConfig(
        min_replicas=args.min_replicas, max_replicas=args.max_replicas, latency_percentile=pct,
        latency_target_ms=target, error_rate_max=args.error_rate, startup_delay_s=args.startup,
        max_batch_size=service.max_batch, max_queue_delay_ms=1000.0 * service.max_queue_delay,
    )
    cfg = replace(cfg, initial_replicas=settled_start(trace, policy, cfg, limit))
    return score_gaps(simulate(trace, PolicyScaler(policy, replica_limit=limit), cfg),
                      trace.gaps)


WARM_UP_S = 180.0


def settled_start(trace: Trace, policy: PolicyConfig, cfg: SimConfig, limit: int | None) -> int:
    """The fleet to start the scored run with: where the policy settles on the trace's first
    minutes, starting from `cfg.initial_replicas`. A history is a window of a service that was
    already running; a fleet sized by the policy's first belief about a replica (the knee of a
    capacity learned from a few minutes of metrics) can be short for the first minutes, which
    would then be scored as a miss of the plan rather than of a cold start."""
    head = replace(trace, duration=min(trace.duration, WARM_UP_S), gaps=None)
    res = simulate(head, PolicyScaler(policy, replica_limit=limit), replace(cfg, progress=False))
    settled = res.scale_events[-1].new if res.scale_events else cfg.initial_replicas
    return max(settled, 1)  # the replay's max_replicas already holds it within the limit


def score_gaps(res: SimResult, gaps: np.ndarray | None) -> SimResult:
    """``res`` with the minutes the source had no data for left out of the scoring."""
    if gaps is None or not gaps.any():
        return res
    mask = np.zeros(res.minutes, dtype=bool)
    n = min(len(gaps), res.minutes)
    mask[:n] = gaps[:n]
    minute_met = np.where(mask, -1, res.minute_met)
    return replace(res, minute_met=minute_met, scored=int((minute_met >= 0).sum()),
                   met=int((minute_met == 1).sum()))


def _limited(trace: Trace, args: argparse.Namespace, service: ServiceModel, price: float,
             limit: int) -> SimResult:
    return _run(trace, args, service, limit, price, progress=False)


def _describe(res: SimResult) -> dict[str, Any]:
    s = res.summary()
    s["scale_event_log"] = [
        {"t": e.t, "from": e.old, "to": e.new, "reason": e.reason} for e in res.scale_events[:200]
    ]
    return s


def plot(res: SimResult, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = np.arange(res.minutes)
    fig, axes = plt.subplots(3, 1, figsize=(10, 7), sharex=True)
    axes[0].plot(minutes, res.minute_rate, color="C0")
    axes[0].set_ylabel("requests/s")
    axes[1].step(minutes, res.minute_held, where="post", color="C3", label="held (billed)")
    axes[1].step(minutes, res.minute_ready, where="post", color="C2", label="ready")
    axes[1].set_ylabel("replicas")
    axes[1].legend(fontsize=8)
    axes[2].plot(minutes, res.minute_latency_ms, color="C1",
                 label=f"p{res.slo_percentile:g} per minute")
    axes[2].axhline(res.slo_target_ms, color="k", ls="--", lw=1, label="SLO target")
    missed = res.minute_met == 0
    axes[2].scatter(minutes[missed], np.nan_to_num(res.minute_latency_ms[missed]), color="r",
                    s=12, zorder=3, label="missed minute")
    axes[2].set_yscale("log")
    axes[2].set_ylabel("latency ms")
    axes[2].set_xlabel("minute")
    axes[2].legend(fontsize=8)
    axes[0].set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dedicap plan", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_argument_group("traffic: a trace file, or a ModelDeployment's history")
    src.add_argument("--trace", help="CSV (with or without a header) or JSON lines of requests, "
                     "or per-window rates with --window-rates")
    src.add_argument("--time-column", help="timestamp column, by name or (no header) position "
                     "(default: guessed)")
    src.add_argument("--time-unit", default="auto", choices=list(TIME_UNITS),
                     help="unit of numeric timestamps (default: inferred from the column name, "
                     "epoch magnitude or the only plausible span and rate)")
    src.add_argument("--work-column", help="per-request work column (e.g. tokens)")
    src.add_argument("--work-per-unit", type=float, default=1.0,
                     help="work column value of one modelled request (e.g. 256 tokens)")
    src.add_argument("--window-rates", action="store_true",
                     help="the file holds per-window rates (ServeGen style), not requests")
    src.add_argument("--window-start-column", default="window_start_s")
    src.add_argument("--window-width-column", default="window_s")
    src.add_argument("--rate-column", default="sum_rate_rps_over_clients")
    src.add_argument("--prometheus", metavar="URL",
                     help="replay a ModelDeployment's own request history from this Prometheus")
    src.add_argument("--modeldeployment", metavar="NS/NAME", help="with --prometheus")
    src.add_argument("--since", default="7d", help="history to read (e.g. 7d, 12h, 30m)")
    src.add_argument("--step", default="60s", help="resolution of the history (default 60s)")
    src.add_argument("--until", type=float, help="end of the history, unix time (default now)")
    src.add_argument("--scale", type=float, default=1.0, help="multiply the traffic's rate")
    src.add_argument("--minutes", type=float, help="replay only the first N minutes")
    rep = ap.add_argument_group("the replica (default: the calibrated example encoder)")
    rep.add_argument("--replica", metavar="FILE", help="perf_analyzer CSV (-f) or a YAML "
                     "batch-time curve of your model (docs/autoscaling.md)")
    rep.add_argument("--max-batch", type=int, help="the model's max_batch_size (default: "
                     "with --prometheus the ModelDeployment's spec as the operator exports it, "
                     "else the largest batch measured)")
    rep.add_argument("--max-queue-delay-ms", type=float, default=None,
                     help="the dynamic batcher's max_queue_delay (default: with --prometheus "
                     f"the spec's, else {1000 * DEFAULT_QUEUE_DELAY_S:g})")
    rep.add_argument("--model", default="encoder-1b", choices=sorted(MEASURED),
                     help="the calibrated example when no measurement of yours is given")
    rep.add_argument("--queue-timeout", type=float, default=1.0, help="seconds; 0 = none")
    ap.add_argument("--slo", action=SLOAction, default=(95.0, 200.0),
                    help="e.g. p95=200ms; for a streaming LLM ttft.p95=500ms and/or "
                    "tpot.p95=50ms (repeatable): then the trace's token counts are replayed "
                    "through continuous-batching replicas")
    llm = ap.add_argument_group("streaming LLMs (with ttft/tpot objectives)")
    llm.add_argument("--prompt-column", help="prompt tokens per request (default: guessed, "
                     "e.g. ContextTokens)")
    llm.add_argument("--output-column", help="generated tokens per request (default: guessed, "
                     "e.g. GeneratedTokens)")
    llm.add_argument("--llm-model", default="llama-8b", choices=["llama-8b"],
                     help="the replica's model (constants per GPU, not measured here)")
    ap.add_argument("--error-rate", type=float, default=0.001, help="max error ratio per minute")
    ap.add_argument("--attainment", type=float, default=0.99,
                    help="SLO-minute attainment the reservation must reach")
    ap.add_argument("--startup", type=float, default=60.0, help="replica start-up delay (s)")
    ap.add_argument("--pool", dest="pools", type=parse_pool, action="append",
                    help="NAME=PRICE[@SPEED], repeatable (default h200=2.5)")
    ap.add_argument("--burst-price-factor", type=float, default=1.0,
                    help="price of a burst GPU-hour relative to the pool's (default 1)")
    ap.add_argument("--tradeoff-points", type=int, default=8,
                    help="most reservation sizes replayed per pool (default 8)")
    ap.add_argument("--gpus-per-replica", type=int, default=1)
    ap.add_argument("--min-replicas", type=int, default=1)
    ap.add_argument("--max-replicas", type=int, default=1000)
    ap.add_argument("--engine", default="auto", choices=["auto", "exact", "fluid"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", help="write a PNG of rate, replicas and latency vs the SLO, and "
                    "the trade-off curves beside it (NAME-tradeoff.png)")
    ap.add_argument("--json", action="store_true", help="print a JSON summary only")
    ap.add_argument("--no-search", action="store_true", help="skip the trade-off curve")
    return ap


def _check_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if bool(args.trace) == bool(args.prometheus):
        ap.error("give either --trace FILE or --prometheus URL --modeldeployment NS/NAME")
    if args.prometheus and not args.modeldeployment:
        ap.error("--prometheus needs --modeldeployment NS/NAME")
    if args.queue_timeout == 0:
        args.queue_timeout = None


def tradeoff_plot_path(path: str) -> str:
    p = Path(path)
    return str(p.with_name(f"{p.stem}-tradeoff{p.suffix or '.png'}"))


def main(argv: list[str]) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    _check_args(ap, args)
    if getattr(args, "token_slo", None):
        from dedicap.sim import llm_plan

        return llm_plan.run(args, args.token_slo)
    source = args.trace or args.modeldeployment
    try:
        traffic = load_traffic(args)
        source = args.replica or f"the replica model of {source}"
        model = replica_model(args, traffic)
    except (OSError, ValueError, KeyError) as e:
        print(f"dedicap plan: cannot read {source}: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # Prometheus unreachable or refusing: say so, no traceback
        from dedicap.metrics.prometheus import PrometheusError

        if isinstance(e, PrometheusError):
            print(f"dedicap plan: {e}", file=sys.stderr)
            return 2
        raise
    trace = traffic.trace
    # what was read, before the replay (on stderr with --json, so the JSON stays clean)
    out = sys.stderr if args.json else sys.stdout
    print(_describe_input(traffic, model), file=out, flush=True)
    summary = plan(args, traffic, model, progress=not args.json and sys.stderr.isatty())
    if args.plot and summary.get("_first") is not None:
        first: SimResult = summary["_first"]
        plot(first, args.plot, f"{trace.name}: p{args.slo[0]:g} <= {args.slo[1]:g} ms, "
             f"start-up {args.startup:g} s, {first.attainment:.1%} of {first.scored} minutes")
        summary["plot"] = args.plot
        curves = summary.get("_curves") or {}
        if curves:
            tp = tradeoff_plot_path(args.plot)
            tradeoff.plot(curves, tp, args.attainment,
                          f"{trace.name}: reserved GPUs vs SLO-minutes and cost "
                          f"({human_span(trace.duration)})")
            summary["tradeoff_plot"] = tp
    summary.pop("_first", None)
    summary.pop("_curves", None)
    if args.json:
        print(json.dumps(summary, indent=1, default=float))
        return 0
    _print_text(summary)
    return 0


def _describe_input(traffic: Traffic, model: ReplicaModel) -> str:
    lines = []
    if traffic.reading is not None:
        lines.append(traffic.reading.describe())
    if traffic.history is not None:
        lines.append(_describe_history(traffic))
    lines += [f"  {n}" for n in traffic.notes]
    lines.append(model.describe())
    return "\n".join(lines)


def _describe_history(traffic: Traffic) -> str:
    h = traffic.history
    tr = traffic.trace
    gaps = int(tr.gaps.sum()) if tr.gaps is not None else 0
    rates = h.request_rate[np.isfinite(h.request_rate)]
    pods = h.pods[np.isfinite(h.pods)]
    fleet = (f"; the fleet that ran: mean {pods.mean():.1f}, last {pods[-1]:.0f} pods reporting"
             if len(pods) else "")
    return (f"read {h.namespace}/{h.name} from Prometheus: {human_span(h.steps * h.step_s)} in "
            f"{h.steps} steps of {h.step_s:g} s, {gaps} minute(s) without data (bridged, not "
            f"scored)\n  mean {rates.mean():.4g} req/s, peak step {rates.max():.4g} req/s"
            f"{fleet}")


def plan(args: argparse.Namespace, traffic: Traffic, model: ReplicaModel,
         progress: bool = False) -> dict[str, Any]:
    """Replay, trade-off curves and recommendation (pure apart from the progress bar)."""
    trace = traffic.trace
    base = model.service
    pools = args.pools or [Pool("h200", 2.5)]
    hours = trace.duration / 3600.0
    mr = trace.minute_rates()
    summary: dict[str, Any] = {
        "trace": {"name": trace.name, "minutes": trace.duration / 60.0,
                  "requests": trace.requests, "scale": args.scale,
                  "mean_rps": float(mr.mean()) if len(mr) else 0.0,
                  "peak_rps_1min": float(mr.max()) if len(mr) else 0.0,
                  "gap_minutes": int(trace.gaps.sum()) if trace.gaps is not None else 0,
                  "reading": traffic.reading.to_dict() if traffic.reading else None},
        "replica_model": model.to_dict(),
        "slo": {"percentile": args.slo[0], "target_ms": args.slo[1], "error_rate": args.error_rate,
                "attainment_goal": args.attainment},
        "startup_delay_s": args.startup, "model": base.name, "pools": [],
    }
    if traffic.history is not None:
        h = traffic.history
        pods = h.pods[np.isfinite(h.pods)]
        summary["history"] = {
            "modeldeployment": f"{h.namespace}/{h.name}", "end": h.end, "step_s": h.step_s,
            "steps": h.steps, "pods_mean": float(pods.mean()) if len(pods) else None,
            "pods_last": float(pods[-1]) if len(pods) else None}
    best: tuple[float, str, int] | None = None
    first: SimResult | None = None
    curves: dict[str, tradeoff.Tradeoff] = {}
    for pool in pools:
        service = _service_for(base, pool)
        res = _run(trace, args, service, None, pool.price, progress=progress)
        first = first or res
        entry: dict[str, Any] = {"pool": pool.name, "price_per_gpu_hour": pool.price,
                                 "speed": pool.speed, "autoscaled": _describe(res)}
        if not args.no_search:
            mean_rps = float(mr.mean()) if len(mr) else 0.0
            lowest = max(math.ceil(mean_rps / service.capacity(trace.mean_work) - 1e-9), 1)
            curve = tradeoff.sweep(
                functools.partial(_limited, trace, args, service, pool.price), res, lowest,
                args.attainment, hours, pool.price,
                pool.price * args.burst_price_factor, args.gpus_per_replica,
                max_points=max(args.tradeoff_points, 2))
            curves[pool.name] = curve
            entry["tradeoff"] = [p.to_dict() for p in curve.points]
            rec = None if curve.recommended is None else curve.point(curve.recommended)
            if rec is None:
                entry["reservation"] = None
                entry["note"] = (f"the policy reaches {res.attainment:.1%} < goal "
                                 f"{args.attainment:.1%} even without a limit")
            else:
                entry["reservation"] = {
                    "gpus": rec.gpus, "replicas": rec.replicas, "attainment": rec.attainment,
                    "gpu_hours_used": rec.gpu_hours_used, "used_cost": rec.gpu_hours_used
                    * pool.price, "reserved_cost": rec.reserved_cost,
                    "reserved_cost_per_30_days": rec.gpus * 24 * 30 * pool.price,
                    "burst_gpu_hours": rec.burst_gpu_hours,
                    "utilization": rec.gpu_hours_used / max(rec.gpus * hours, 1e-9),
                    "searched_runs": curve.runs,
                }
                if best is None or rec.reserved_cost < best[0]:
                    best = (rec.reserved_cost, pool.name, rec.gpus)
        summary["pools"].append(entry)
    summary["recommendation"] = None if best is None else {
        "pool": best[1], "gpus": best[2], "reserved_cost": best[0],
        "replica_model": model.source}
    summary["_first"] = first
    summary["_curves"] = curves
    return summary


def _print_text(summary: dict[str, Any]) -> None:
    t = summary["trace"]
    slo = summary["slo"]
    print(f"\nreplaying {t['name']}: {t['minutes']:.0f} min, {t['requests']:.0f} requests, "
          f"mean {t['mean_rps']:.1f} req/s, peak minute {t['peak_rps_1min']:.1f} req/s")
    print(f"SLO p{slo['percentile']:g} <= {slo['target_ms']:g} ms, "
          f"errors <= {slo['error_rate']:.2%}; "
          f"start-up {summary['startup_delay_s']:g} s; model {summary['model']}"
          + (" (the calibrated example)" if summary["replica_model"]["example"] else ""))
    for p in summary["pools"]:
        a = p["autoscaled"]
        print(f"\npool {p['pool']} (${p['price_per_gpu_hour']:g}/GPU-h, speed {p['speed']:g}):")
        print(f"  autoscaled: {a['minutes_met']}/{a['minutes_scored']} SLO-minutes "
              f"({a['attainment']:.1%}), {a['gpu_hours']:.2f} GPU-h, ${a['cost']:.2f}, "
              f"{a['scale_events']} scale events, peak {a['peak_replicas']} replicas")
        if p.get("tradeoff"):
            print("  trade-off (the reservation as a hard limit; burst = GPU-hours the "
                  "autoscaled run held beyond it):")
            print("    reserved GPUs  SLO-minutes  GPU-h used  reserved $  burst GPU-h  "
                  "reserved+burst $")
            for q in p["tradeoff"]:
                print(f"    {q['reserved_gpus']:>13d}  {q['attainment']:>11.1%}  "
                      f"{q['gpu_hours_used']:>10.2f}  {q['reserved_cost']:>10.2f}  "
                      f"{q['burst_gpu_hours']:>11.2f}  {q['cost_with_burst']:>16.2f}")
        r = p.get("reservation")
        if r:
            print(f"  reservation: {r['gpus']} GPUs reaches {r['attainment']:.1%} "
                  f"(uses {r['gpu_hours_used']:.2f} GPU-h = {r['utilization']:.0%} of it); "
                  f"reserved cost ${r['reserved_cost']:.2f} for the span "
                  f"(${r['reserved_cost_per_30_days']:,.0f} per 30 days), "
                  f"used ${r['used_cost']:.2f}")
        elif "note" in p:
            print(f"  reservation: none ({p['note']})")
    rec = summary["recommendation"]
    if rec:
        print(f"\nrecommendation: reserve {rec['gpus']} GPUs in pool {rec['pool']} "
              f"(${rec['reserved_cost']:.2f} for the span); replica model: "
              f"{rec['replica_model']}")
    else:
        print(f"\nrecommendation: none reaches {slo['attainment_goal']:.1%}")
    for key in ("plot", "tradeoff_plot"):
        if key in summary:
            print(f"{key.replace('_', ' ')}: {summary[key]}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
