"""``dedicap plan`` for streaming LLMs: token traces, token-level objectives, tokens per minute.

    dedicap plan --trace conversations.csv --slo ttft.p95=500ms --slo tpot.p95=50ms \\
        --scale 8 --pool h100=2.5 --pool h200=3.5

The trace's requests carry their token counts (``--prompt-column``, ``--output-column``, else
the columns whose names say so, e.g. the Azure LLM inference trace's ``ContextTokens`` and
``GeneratedTokens``). Each pool's replica is the continuous-batching model of an 8B-class Llama
on that GPU (``llm_replica.PRESETS``: constants derived from data sheets, not measured; a pool
named neither h100 nor h200 takes the H100's scaled by its ``@SPEED``).

For each pool it states what one replica buys within the SLO (requests per second and tokens
per minute under Poisson arrivals of the trace's token mix: the figure Azure's PTUs and
Bedrock's model units sell), replays the trace with the operator's own policy (in tokens), with
static provisioning for the peak minute and with the oracle that knows every minute's need and
asks one start-up delay ahead, and sweeps the reservation size (``tradeoff.py``): reserved
GPUs against SLO-minute attainment and cost. It recommends the pool of least reserved cost and
says what that reservation buys in tokens per minute.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import re
import sys
from dataclasses import replace
from typing import Any

import numpy as np

from dedicap.decide.policy import PolicyConfig
from dedicap.decide.policy_tokens import TokenSLO
from dedicap.sim import tradeoff
from dedicap.sim.baselines import PolicyScaler, ScheduleScaler, StaticScaler
from dedicap.sim.llm_replica import PRESETS, LLMCost
from dedicap.sim.llm_simulator import (
    LLMSimConfig,
    TokenTrace,
    minute_minimum,
    replica_tokens_per_minute,
    simulate_llm,
    token_trace,
)
from dedicap.sim.simulator import SimResult
from dedicap.sim.trace_inference import TraceReading, human_span
from dedicap.sim.traces import load_trace

DEFAULT_POOLS = (("h100", 2.5, 1.0), ("h200", 3.5, 1.0))
_PROMPT = re.compile(r"context|prompt|input", re.I)
_OUTPUT = re.compile(r"generat|output|completion", re.I)


def parse_token_slo(text: str) -> tuple[str, float, float] | None:
    """``ttft.p95=500ms`` -> ("ttft", 95.0, 500.0); ``tpot.p99=50ms`` likewise; None for
    anything else (a request-level objective)."""
    m = re.fullmatch(r"\s*(ttft|tpot)\.p(\d+(?:\.\d+)?)\s*=\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*",
                     text)
    if not m:
        return None
    pct, value = float(m.group(2)), float(m.group(3)) * (1000.0 if m.group(4) == "s" else 1.0)
    if not 0 < pct < 100:
        raise argparse.ArgumentTypeError(f"SLO {text!r}: the percentile must be within (0, 100)")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"SLO {text!r}: the target must be positive")
    return m.group(1), pct, value


def token_slo(objectives: dict[str, tuple[float, float]]) -> TokenSLO:
    ttft, tpot = objectives.get("ttft"), objectives.get("tpot")
    return TokenSLO(ttft_percentile=ttft[0] if ttft else 95.0,
                    ttft_target_ms=ttft[1] if ttft else math.inf,
                    tpot_percentile=tpot[0] if tpot else 95.0,
                    tpot_target_ms=tpot[1] if tpot else math.inf)


def _column(reading: TraceReading, given: str | None, pattern: re.Pattern[str], what: str,
            option: str) -> str:
    if given:
        return given
    found = [name for name, _ in reading.token_columns if pattern.search(name)]
    if len(found) != 1:
        seen = ", ".join(n for n, _ in reading.token_columns) or "none"
        raise ValueError(f"cannot tell which column holds the {what} tokens (token columns: "
                         f"{seen}): name it with {option}")
    return found[0]


def load_token_trace(args: argparse.Namespace) -> tuple[TokenTrace, TraceReading, str, str]:
    """The trace's requests with their token counts, and how it was read."""
    opts = {"time_column": args.time_column, "time_unit": args.time_unit}
    _, reading = load_trace(args.trace, **opts)
    prompt_col = _column(reading, args.prompt_column, _PROMPT, "prompt", "--prompt-column")
    output_col = _column(reading, args.output_column, _OUTPUT, "generated", "--output-column")
    prompt, _ = load_trace(args.trace, work_column=prompt_col, **opts)
    output, _ = load_trace(args.trace, work_column=output_col, **opts)
    assert prompt.times is not None and prompt.work is not None and output.work is not None
    trace = token_trace(prompt.times, np.round(prompt.work), np.round(output.work),
                        prompt.name, prompt.duration)
    if args.scale != 1.0:
        trace = trace.scaled(args.scale, seed=args.seed)
    if args.minutes is not None and args.minutes * 60.0 < trace.duration:
        trace = trace.window(0.0, args.minutes * 60.0)
    return trace, reading, prompt_col, output_col


def pool_cost(name: str, speed: float, model: str) -> LLMCost:
    """The replica of `model` on the pool's GPU (a preset by the pool's name, else the H100's
    scaled by `speed`)."""
    preset = PRESETS.get(f"{model}-{name}")
    if preset is not None and speed == 1.0:
        return preset
    return PRESETS[f"{model}-h100"].scaled(speed)


def _config(args: argparse.Namespace, slo: TokenSLO, cost: LLMCost, initial: int,
            limit: int | None, price: float) -> LLMSimConfig:
    return LLMSimConfig(cost=cost, slo=slo, error_max=args.error_rate,
                        startup_delay_s=args.startup, initial_replicas=initial,
                        max_replicas=limit if limit is not None else 10_000,
                        gpus_per_replica=args.gpus_per_replica, price_per_gpu_hour=price,
                        seed=args.seed)


def _policy(args: argparse.Namespace, slo: TokenSLO) -> PolicyConfig:
    return PolicyConfig(min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                        latency_target_ms=math.inf, error_rate_max=args.error_rate,
                        startup_delay_s=args.startup, tokens=slo)


def _autoscaled(trace: TokenTrace, args: argparse.Namespace, slo: TokenSLO, cost: LLMCost,
                initial: int, price: float, limit: int | None) -> SimResult:
    if limit is not None:
        initial = min(initial, limit)
    return simulate_llm(trace, PolicyScaler(_policy(args, slo), replica_limit=limit),
                        _config(args, slo, cost, initial, limit, price))


def _summary(res: SimResult) -> dict[str, Any]:
    s = res.summary()
    s["scale_event_log"] = [{"t": e.t, "from": e.old, "to": e.new, "reason": e.reason}
                            for e in res.scale_events[:100]]
    return s


def plan_tokens(args: argparse.Namespace, trace: TokenTrace, slo: TokenSLO) -> dict[str, Any]:
    """Every pool's capacity, replays and trade-off, and the recommendation (pure apart from
    its work)."""
    hours = trace.duration / 3600.0
    mr = trace.minute_rates()
    tpm = trace.minute_tokens()
    pools = [(p.name, p.price, p.speed) for p in args.pools] if args.pools else DEFAULT_POOLS
    out: dict[str, Any] = {
        "trace": {"name": trace.name, "minutes": trace.duration / 60.0,
                  "requests": trace.requests, "scale": args.scale,
                  "mean_rps": float(mr.mean()) if len(mr) else 0.0,
                  "peak_rps_1min": float(mr.max()) if len(mr) else 0.0,
                  "mean_prompt_tokens": float(trace.prompt.mean()),
                  "mean_generated_tokens": float(trace.output.mean()),
                  "mean_tokens_per_minute": float(tpm.mean()) if len(tpm) else 0.0,
                  "peak_tokens_per_minute": float(tpm.max()) if len(tpm) else 0.0},
        "slo": {"ttft": {"percentile": slo.ttft_percentile, "target_ms": slo.ttft_target_ms},
                "tpot": {"percentile": slo.tpot_percentile, "target_ms": slo.tpot_target_ms},
                "error_rate": args.error_rate, "attainment_goal": args.attainment},
        "startup_delay_s": args.startup, "pools": []}
    best: tuple[float, str, int, float] | None = None
    curves: dict[str, tradeoff.Tradeoff] = {}
    first: SimResult | None = None
    for name, price, speed in pools:
        cost = pool_cost(name, speed, args.llm_model)
        rps, per_replica_tpm = replica_tokens_per_minute(cost, slo, trace, seed=args.seed)
        initial = max(args.min_replicas, 1, math.ceil(float(mr[:2].max()) / max(0.9 * rps, 1e-9))
                      if len(mr) else 1)
        auto = _autoscaled(trace, args, slo, cost, initial, price, None)
        first = first or auto
        nstar = minute_minimum(trace, cost, slo, args.min_replicas)
        peak = int(nstar.max()) if len(nstar) else 1
        config = _config(args, slo, cost, peak, None, price)
        static = simulate_llm(trace, StaticScaler(peak, "static peak"), config)
        oracle = simulate_llm(trace, ScheduleScaler(nstar, args.startup, "oracle with start-up"),
                              replace(config, initial_replicas=int(nstar[0])))
        entry: dict[str, Any] = {
            "pool": name, "price_per_gpu_hour": price, "speed": speed,
            "replica": {"model": cost.name, "source": cost.source,
                        "requests_per_second_at_slo": rps,
                        "tokens_per_minute_at_slo": per_replica_tpm,
                        "tokens_per_minute_per_gpu": per_replica_tpm / args.gpus_per_replica},
            "autoscaled": _summary(auto), "static_peak": {**static.summary(), "replicas": peak},
            "oracle_with_startup": oracle.summary()}
        if not args.no_search:
            lowest = max(math.ceil(float(mr.mean()) / max(rps, 1e-9) - 1e-9), 1)
            curve = tradeoff.sweep(
                functools.partial(_autoscaled, trace, args, slo, cost, initial, price), auto,
                lowest, args.attainment, hours, price, price * args.burst_price_factor,
                args.gpus_per_replica, max_points=max(args.tradeoff_points, 2))
            curves[name] = curve
            entry["tradeoff"] = [p.to_dict() for p in curve.points]
            rec = None if curve.recommended is None else curve.point(curve.recommended)
            if rec is None:
                entry["reservation"] = None
                entry["note"] = (f"the policy reaches {auto.attainment:.1%} < goal "
                                 f"{args.attainment:.1%} even without a limit")
            else:
                buys = rec.replicas * per_replica_tpm
                entry["reservation"] = {
                    "gpus": rec.gpus, "replicas": rec.replicas, "attainment": rec.attainment,
                    "gpu_hours_used": rec.gpu_hours_used, "reserved_cost": rec.reserved_cost,
                    "reserved_cost_per_30_days": rec.gpus * 24 * 30 * price,
                    "burst_gpu_hours": rec.burst_gpu_hours,
                    "tokens_per_minute_at_slo": buys,
                    "peak_tokens_per_minute_of_the_trace": out["trace"]["peak_tokens_per_minute"],
                    "searched_runs": curve.runs}
                if best is None or rec.reserved_cost < best[0]:
                    best = (rec.reserved_cost, name, rec.gpus, buys)
        out["pools"].append(entry)
    out["recommendation"] = None if best is None else {
        "pool": best[1], "gpus": best[2], "reserved_cost": best[0],
        "tokens_per_minute_at_slo": best[3]}
    out["_first"], out["_curves"] = first, curves
    return out


def describe_input(trace: TokenTrace, reading: TraceReading, prompt_col: str, output_col: str,
                   args: argparse.Namespace) -> str:
    lines = [reading.describe(),
             f"  tokens: prompt from {prompt_col!r} (mean {trace.prompt.mean():.0f}), generated "
             f"from {output_col!r} (mean {trace.output.mean():.0f})"]
    if args.scale != 1.0:
        lines.append(f"  scaled x{args.scale:g}: {trace.requests} requests (each request "
                     "repeated, the copies spread over 30 s)")
    if args.minutes is not None:
        lines.append(f"  replaying the first {args.minutes:g} minutes")
    model = PRESETS[f"{args.llm_model}-h100"]
    lines.append(f"replica: continuous batching of an 8B-class Llama ({args.llm_model}); "
                 f"constants {model.source}")
    return "\n".join(lines)


def print_text(summary: dict[str, Any]) -> None:
    t, slo = summary["trace"], summary["slo"]
    print(f"\nreplaying {t['name']}: {t['minutes']:.0f} min, {t['requests']} requests, mean "
          f"{t['mean_rps']:.1f} req/s (peak minute {t['peak_rps_1min']:.1f}), "
          f"{t['mean_tokens_per_minute']:,.0f} tokens/min "
          f"(peak {t['peak_tokens_per_minute']:,.0f})")
    print(f"SLO TTFT p{slo['ttft']['percentile']:g} <= {slo['ttft']['target_ms']:g} ms, "
          f"TPOT p{slo['tpot']['percentile']:g} <= {slo['tpot']['target_ms']:g} ms, "
          f"errors <= {slo['error_rate']:.2%}; start-up {summary['startup_delay_s']:g} s")
    for p in summary["pools"]:
        r, a = p["replica"], p["autoscaled"]
        print(f"\npool {p['pool']} (${p['price_per_gpu_hour']:g}/GPU-h): one replica serves "
              f"{r['requests_per_second_at_slo']:.2f} req/s = "
              f"{r['tokens_per_minute_at_slo']:,.0f} tokens/min within the SLO")
        rows = [("autoscaled (dedicap)", a), ("static peak", p["static_peak"]),
                ("oracle with start-up", p["oracle_with_startup"])]
        orc = p["oracle_with_startup"]["gpu_hours"]
        for label, s in rows:
            ratio = s["gpu_hours"] / orc if orc else math.nan
            print(f"  {label:<22} {s['minutes_met']}/{s['minutes_scored']} SLO-minutes "
                  f"({s['attainment']:.1%}), {s['gpu_hours']:.2f} GPU-h ({ratio:.2f}x oracle), "
                  f"${s['cost']:.2f}, peak {s['peak_replicas']} replicas")
        if p.get("tradeoff"):
            print("  reserved GPUs  SLO-minutes  GPU-h used  reserved $  burst GPU-h")
            for q in p["tradeoff"]:
                print(f"  {q['reserved_gpus']:>13d}  {q['attainment']:>11.1%}  "
                      f"{q['gpu_hours_used']:>10.2f}  {q['reserved_cost']:>10.2f}  "
                      f"{q['burst_gpu_hours']:>11.2f}")
        res = p.get("reservation")
        if res:
            print(f"  reservation: {res['gpus']} GPUs reaches {res['attainment']:.1%}, buys "
                  f"{res['tokens_per_minute_at_slo']:,.0f} tokens/min within the SLO; reserved "
                  f"${res['reserved_cost']:.2f} for the span "
                  f"(${res['reserved_cost_per_30_days']:,.0f} per 30 days)")
        elif "note" in p:
            print(f"  reservation: none ({p['note']})")
    rec = summary["recommendation"]
    if rec:
        print(f"\nrecommendation: reserve {rec['gpus']} GPUs in pool {rec['pool']}: "
              f"{rec['tokens_per_minute_at_slo']:,.0f} tokens/min within the SLO "
              f"(${rec['reserved_cost']:.2f} for the span)")
    else:
        print(f"\nrecommendation: none reaches {slo['attainment_goal']:.1%}")


def run(args: argparse.Namespace, objectives: dict[str, tuple[float, float]]) -> int:
    """`dedicap plan` with token objectives (called by plan.main)."""
    if not args.trace:
        print("dedicap plan: token objectives need --trace with token counts per request",
              file=sys.stderr)
        return 2
    try:
        trace, reading, prompt_col, output_col = load_token_trace(args)
    except (OSError, ValueError, KeyError) as e:
        print(f"dedicap plan: cannot read {args.trace}: {e}", file=sys.stderr)
        return 2
    out = sys.stderr if args.json else sys.stdout
    print(describe_input(trace, reading, prompt_col, output_col, args), file=out, flush=True)
    slo = token_slo(objectives)
    summary = plan_tokens(args, trace, slo)
    first, curves = summary.pop("_first"), summary.pop("_curves")
    if args.plot and first is not None:
        from dedicap.sim.plan import plot, tradeoff_plot_path

        plot(first, args.plot, f"{trace.name}: TTFT p{slo.ttft_percentile:g} <= "
             f"{slo.ttft_target_ms:g} ms, {first.attainment:.1%} of {first.scored} minutes")
        summary["plot"] = args.plot
        if curves:
            tp = tradeoff_plot_path(args.plot)
            span = human_span(trace.duration)
            tradeoff.plot(curves, tp, args.attainment,
                          f"{trace.name}: reserved GPUs vs SLO-minutes ({span})")
            summary["tradeoff_plot"] = tp
    if args.json:
        print(json.dumps(summary, indent=1, default=float))
    else:
        print_text(summary)
    return 0
