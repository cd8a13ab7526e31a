"""How well the autoscaler's batch-time fit learns a real Triton replica.

    python benchmarks/batch_fit.py                         # the demo's replica, 8..40 req/s
    python benchmarks/batch_fit.py --base-ms 20 --per-item-ms 5 --max-batch 8 \\
        --rates 10,40,70,100,125                           # another replica (133 req/s max)

One real `tritonserver` (the local stack's simulated replica: the Python backend holds a batch
of b requests for base + per_item*b ms) under open-loop Poisson load at each rate in turn.
For each rate, from Triton's per-batch-size statistics (`v2/models/<m>/stats`): the mean batch
(what `count / exec_count` gives the policy), the size-biased batch at which Triton's compute
time per request is measured (the truth) and the policy's estimate of it from the mean batch,
and the compute time per batch size. Then the fit the policy learns from those points
(`decide.policy_capacity.learn_batch_time`, the function the operator runs), against the
batch time by size Triton measured and the replica as configured, and the capacity within the
SLO each implies.

No stack and no Kubernetes: one process, about 50 s per rate. Prints a table; `--out FILE`
also writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from dedicap.decide.policy_capacity import (
    BatchFit,
    learn_batch_time,
    size_biased_batch,
    slo_batch_capacity,
)
from dedicap_local import loadgen, triton

MODEL = "replica"


def measure(handle: triton.TritonHandle, rate: float, seconds: float, seed: int
            ) -> dict[str, Any]:
    """One rate: Poisson load for `seconds`, then what Triton measured over it."""
    before = triton.batch_stats(handle)
    endpoints = loadgen.Endpoints([{"grpc": handle.grpc_address, "model": MODEL}])
    report = loadgen.run_profile(endpoints, [loadgen.Step(seconds, rate)], seed=seed)
    after = triton.batch_stats(handle)
    runs = {b: (n - before.get(b, (0, 0))[0], ns - before.get(b, (0, 0))[1])
            for b, (n, ns) in after.items()}
    runs = {b: v for b, v in runs.items() if v[0] > 0}
    executions = sum(n for n, _ in runs.values())
    requests = sum(b * n for b, (n, _) in runs.items())
    if not requests:
        raise RuntimeError(f"no request executed at {rate} req/s: {report.summary()}")
    mean_batch = requests / executions
    return {
        "rate_rps": rate,
        "failed": report.failed,
        "mean_batch": mean_batch,
        "size_biased_true": sum(b * b * n for b, (n, _) in runs.items()) / requests,
        "size_biased_estimate": size_biased_batch(mean_batch),  # the policy's
        # per request, each batch's compute time: what Triton's counters give the policy
        "compute_ms_per_request": sum(b * ns for b, (n, ns) in runs.items()) / requests / 1e6,
        "batch_ms": {b: ns / n / 1e6 for b, (n, ns) in sorted(runs.items())},
        "batch_share": {b: n / executions for b, (n, _) in sorted(runs.items())},
        "served_rps": requests / seconds,
    }


def fit_of(rows: list[dict[str, Any]], seconds: float) -> BatchFit:
    fit = BatchFit()
    for i, row in enumerate(rows):
        fit = learn_batch_time(fit, row["mean_batch"], row["compute_ms_per_request"],
                               row["served_rps"], seconds, float(i), 1e12)
    return fit


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-ms", type=float, default=40.0)
    ap.add_argument("--per-item-ms", type=float, default=10.0)
    ap.add_argument("--max-batch", type=int, default=4)
    ap.add_argument("--max-queue-delay-us", type=int, default=5000)
    ap.add_argument("--rates", default="8,16,24,32,40", help="req/s, comma-separated")
    ap.add_argument("--seconds", type=float, default=45.0, help="per rate")
    ap.add_argument("--target-ms", type=float, default=200.0, help="the SLO's p95 target")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",") if r.strip()]

    spec = triton.ModelSpec(name=MODEL, max_batch_size=args.max_batch,
                            max_queue_delay_us=args.max_queue_delay_us, base_ms=args.base_ms,
                            per_item_ms=args.per_item_ms)
    run_dir = Path(tempfile.mkdtemp(prefix="batch-fit-"))
    handle = triton.start_triton(run_dir, "batch-fit", spec)
    try:
        rows = []
        for i, rate in enumerate(rates):
            rows.append(measure(handle, rate, args.seconds, seed=i + 1))
            time.sleep(1.0)  # let the last batch finish before the next rate's baseline
    finally:
        triton.stop_triton(run_dir, handle.name)

    learned = fit_of(rows, args.seconds)
    print(f"replica: {args.base_ms:g} + {args.per_item_ms:g} ms per request, max batch "
          f"{args.max_batch}, queue delay {args.max_queue_delay_us} us; {args.seconds:g} s "
          "per rate\n")
    print("| req/s | mean batch | size-biased (Triton) | policy's estimate | ms/request | "
          "ms per batch by size |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        by_size = ", ".join(f"{b}: {ms:.1f}" for b, ms in r["batch_ms"].items())
        print(f"| {r['rate_rps']:g} | {r['mean_batch']:.2f} | {r['size_biased_true']:.2f} | "
              f"{r['size_biased_estimate']:.2f} | {r['compute_ms_per_request']:.1f} | "
              f"{by_size} |")

    target, delay = args.target_ms / 1000.0, args.max_queue_delay_us / 1e6
    # the truth: a least-squares line through Triton's batch time by size, over all rates
    per_size: dict[int, list[float]] = {}
    for r in rows:
        for b, ms in r["batch_ms"].items():
            per_size.setdefault(b, []).append(ms)
    sizes = sorted(per_size)
    xs = np.array(sizes, dtype=float)
    ys = np.array([np.mean(per_size[b]) / 1000.0 for b in sizes])
    slope, intercept = np.polyfit(xs, ys, 1) if len(sizes) > 1 else (0.0, float(ys[0]))
    lines = {"configured": (args.base_ms / 1000.0, args.per_item_ms / 1000.0),
             "measured by batch size": (float(intercept), float(slope))}
    coef = learned.coefficients()
    if coef is not None:
        lines["learned by the policy"] = coef
    print("\n| replica | fixed ms per batch | ms per request | saturated req/s at the SLO |")
    print("|---|---|---|---|")
    result: dict[str, Any] = {"rows": rows, "fits": {}}
    for name, (s0, s1) in lines.items():
        sat = slo_batch_capacity(s0, s1, args.max_batch, target, delay, args.max_batch)
        result["fits"][name] = {"s0_ms": 1000 * s0, "s1_ms": 1000 * s1, "saturated_rps": sat}
        print(f"| {name} | {1000 * s0:.1f} | {1000 * s1:.1f} | {sat:.1f} |")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
