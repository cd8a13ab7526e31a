"""``dedicap plan``: replay a trace through the autoscaling policy and size the reservation.

    dedicap plan --trace requests.csv --slo p95=200ms [--scale 10] [--pool h100=2.5 ...]

It replays the trace with the operator's own policy (``dedicap.decide.policy``) against
calibrated, simulated Triton replicas and reports SLO-minute attainment, GPU-hours, cost and
scale events. Then, for each pool, it searches the smallest reservation (GPUs) under which the
policy still reaches the attainment goal, and recommends the pool and size of least reserved
cost. ``--json`` prints a machine-readable summary; ``--plot`` writes a PNG of request rate,
replicas and the SLO-percentile latency against the target over time.

A pool is ``NAME=PRICE`` (per GPU-hour) or ``NAME=PRICE@SPEED`` where ``SPEED`` is the
replica's throughput relative to the calibrated GPU (an H200; 0.5 = half as fast).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from dedicap.decide.policy import PolicyConfig
from dedicap.sim.baselines import PolicyScaler
from dedicap.sim.service import MEASURED, ServiceModel, calibrated
from dedicap.sim.simulator import SimConfig, SimResult, simulate
from dedicap.sim.traces import (
    Trace,
    rate_trace_from_windows,
    read_trace,
    read_window_rates,
    scale_arrivals,
)

EXACT_LIMIT = 20_000_000  # requests above which the fluid engine is used by default


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


def load_trace(args: argparse.Namespace) -> Trace:
    if args.window_rates:
        starts, widths, rates = read_window_rates(
            args.trace, args.window_start_column, args.window_width_column, args.rate_column)
        count = None if args.minutes is None else math.ceil(args.minutes * 60.0 / widths[0])
        tr = rate_trace_from_windows(starts, widths, rates, Path(args.trace).stem,
                                     count=count, scale=args.scale)
        return tr
    tr = read_trace(args.trace, time_column=args.time_column, time_unit=args.time_unit,
                    work_column=args.work_column, work_per_unit=args.work_per_unit)
    if args.scale != 1.0:
        tr = scale_arrivals(tr, args.scale)
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
    return tr


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
    return simulate(trace, PolicyScaler(policy, replica_limit=limit), cfg)


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
    ap.add_argument("--trace", required=True, help="CSV or JSONL of requests (or window rates)")
    ap.add_argument("--time-column", help="timestamp column (default: guessed)")
    ap.add_argument("--time-unit", default="auto", choices=["auto", "s", "ms", "datetime"])
    ap.add_argument("--work-column", help="per-request work column (e.g. tokens)")
    ap.add_argument("--work-per-unit", type=float, default=1.0,
                    help="work column value of one calibrated request (e.g. 256 tokens)")
    ap.add_argument("--window-rates", action="store_true",
                    help="the file holds per-window rates (ServeGen style), not requests")
    ap.add_argument("--window-start-column", default="window_start_s")
    ap.add_argument("--window-width-column", default="window_s")
    ap.add_argument("--rate-column", default="sum_rate_rps_over_clients")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the trace's rate")
    ap.add_argument("--minutes", type=float, help="replay only the first N minutes")
    ap.add_argument("--slo", type=parse_slo, default=(95.0, 200.0), help="e.g. p95=200ms")
    ap.add_argument("--error-rate", type=float, default=0.001, help="max error ratio per minute")
    ap.add_argument("--attainment", type=float, default=0.99,
                    help="SLO-minute attainment the reservation must reach")
    ap.add_argument("--startup", type=float, default=60.0, help="replica start-up delay (s)")
    ap.add_argument("--model", default="encoder-1b", choices=sorted(MEASURED))
    ap.add_argument("--queue-timeout", type=float, default=1.0, help="seconds; 0 = none")
    ap.add_argument("--pool", dest="pools", type=parse_pool, action="append",
                    help="NAME=PRICE[@SPEED], repeatable (default h200=2.5)")
    ap.add_argument("--gpus-per-replica", type=int, default=1)
    ap.add_argument("--min-replicas", type=int, default=1)
    ap.add_argument("--max-replicas", type=int, default=1000)
    ap.add_argument("--engine", default="auto", choices=["auto", "exact", "fluid"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", help="write a PNG of rate, replicas and latency vs the SLO")
    ap.add_argument("--json", action="store_true", help="print a JSON summary only")
    ap.add_argument("--no-search", action="store_true", help="skip the reservation search")
    return ap


def search_reservation(trace: Trace, args: argparse.Namespace, service: ServiceModel,
                       pool: Pool, unconstrained: SimResult
                       ) -> tuple[int | None, SimResult | None, int]:
    """Smallest replica limit whose run reaches the attainment goal (None if even the
    unconstrained run misses it). Returns (replicas, its run, simulations spent)."""
    if unconstrained.attainment < args.attainment:
        return None, None, 0
    hi = max(int(unconstrained.minute_held.max()), 1)  # unconstrained peak: always enough
    lo = max(math.ceil(float(trace.minute_rates().max()) / service.capacity(trace.mean_work)), 1)
    lo = min(lo, hi)
    best, best_run, runs = hi, unconstrained, 0
    while lo < best:
        mid = (lo + best) // 2
        res = _run(trace, args, service, mid, pool.price, progress=False)
        runs += 1
        if res.attainment >= args.attainment:
            best, best_run = mid, res
        else:
            lo = mid + 1
    return best, best_run, runs


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.queue_timeout == 0:
        args.queue_timeout = None
    base = calibrated(args.model, queue_timeout=args.queue_timeout)
    pools = args.pools or [Pool("h200", 2.5)]
    try:
        trace = load_trace(args)
    except (OSError, ValueError, KeyError) as e:
        print(f"dedicap plan: cannot read {args.trace}: {e}", file=sys.stderr)
        return 2
    hours = trace.duration / 3600.0
    show_progress = not args.json and sys.stderr.isatty()
    summary: dict[str, Any] = {
        "trace": {"name": trace.name, "minutes": trace.duration / 60.0,
                  "requests": trace.requests, "scale": args.scale,
                  "mean_rps": float(trace.minute_rates().mean()) if trace.duration else 0.0,
                  "peak_rps_1min": float(trace.minute_rates().max()) if trace.duration else 0.0},
        "slo": {"percentile": args.slo[0], "target_ms": args.slo[1], "error_rate": args.error_rate,
                "attainment_goal": args.attainment},
        "startup_delay_s": args.startup, "model": args.model, "pools": [],
    }
    best: tuple[float, str, int] | None = None
    first: SimResult | None = None
    for pool in pools:
        service = _service_for(base, pool)
        res = _run(trace, args, service, None, pool.price, progress=show_progress)
        first = first or res
        entry: dict[str, Any] = {"pool": pool.name, "price_per_gpu_hour": pool.price,
                                 "speed": pool.speed, "autoscaled": _describe(res)}
        if not args.no_search:
            replicas, run, n_runs = search_reservation(trace, args, service, pool, res)
            if replicas is None:
                entry["reservation"] = None
                entry["note"] = (f"the policy reaches {res.attainment:.1%} < goal "
                                 f"{args.attainment:.1%} even without a limit")
            else:
                assert run is not None
                gpus = replicas * args.gpus_per_replica
                reserved_cost = gpus * hours * pool.price
                entry["reservation"] = {
                    "gpus": gpus, "replicas": replicas, "attainment": run.attainment,
                    "gpu_hours_used": run.gpu_hours, "used_cost": run.cost,
                    "reserved_cost": reserved_cost,
                    "utilization": run.gpu_hours / max(gpus * hours, 1e-9),
                    "searched_runs": n_runs,
                }
                if best is None or reserved_cost < best[0]:
                    best = (reserved_cost, pool.name, gpus)
        summary["pools"].append(entry)
    summary["recommendation"] = None if best is None else {
        "pool": best[1], "gpus": best[2], "reserved_cost": best[0]}
    if args.plot and first is not None:
        plot(first, args.plot, f"{trace.name}: p{args.slo[0]:g} <= {args.slo[1]:g} ms, "
             f"start-up {args.startup:g} s, {first.attainment:.1%} of {first.scored} minutes")
        summary["plot"] = args.plot
    if args.json:
        print(json.dumps(summary, indent=1, default=float))
        return 0
    _print_text(summary)
    return 0


def _print_text(summary: dict[str, Any]) -> None:
    t = summary["trace"]
    slo = summary["slo"]
    print(f"trace {t['name']}: {t['minutes']:.0f} min, {t['requests']:.0f} requests, "
          f"mean {t['mean_rps']:.1f} req/s, peak minute {t['peak_rps_1min']:.1f} req/s")
    print(f"SLO p{slo['percentile']:g} <= {slo['target_ms']:g} ms, "
          f"errors <= {slo['error_rate']:.2%}; "
          f"start-up {summary['startup_delay_s']:g} s; model {summary['model']}")
    for p in summary["pools"]:
        a = p["autoscaled"]
        print(f"\npool {p['pool']} (${p['price_per_gpu_hour']:g}/GPU-h, speed {p['speed']:g}):")
        print(f"  autoscaled: {a['minutes_met']}/{a['minutes_scored']} SLO-minutes "
              f"({a['attainment']:.1%}), {a['gpu_hours']:.2f} GPU-h, ${a['cost']:.2f}, "
              f"{a['scale_events']} scale events, peak {a['peak_replicas']} replicas")
        r = p.get("reservation")
        if r:
            print(f"  reservation: {r['gpus']} GPUs reaches {r['attainment']:.1%} "
                  f"(uses {r['gpu_hours_used']:.2f} GPU-h = {r['utilization']:.0%} of it); "
                  f"reserved cost ${r['reserved_cost']:.2f}, used ${r['used_cost']:.2f}")
        elif "note" in p:
            print(f"  reservation: none ({p['note']})")
    rec = summary["recommendation"]
    if rec:
        print(f"\nrecommendation: reserve {rec['gpus']} GPUs in pool {rec['pool']} "
              f"(${rec['reserved_cost']:.2f} for the trace's span)")
    else:
        print(f"\nrecommendation: none reaches {slo['attainment_goal']:.1%}")
    if "plot" in summary:
        print(f"plot: {summary['plot']}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
