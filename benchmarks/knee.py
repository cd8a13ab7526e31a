"""Where a replica's latency percentile crosses its target, against what the policy plans.

For each replica model: Poisson load at a grid of rates through the simulator's exact batcher
(which reproduces Triton's batches, `benchmarks/batch_fit.py`), the p95 latency at each rate,
the load (share of saturation) at which it crosses the target, and the share the policy plans
per replica (`utilization` x its capacity at the SLO, from the replica's true batch times and
max batch). Where the plan is above the crossing, a fleet at the planned load misses the SLO
until the latency gain learns it. A second or so per replica; no stack.

    python benchmarks/knee.py
"""

from __future__ import annotations

import argparse

import numpy as np

from dedicap.decide.knee import knee_share
from dedicap.decide.policy import PolicyConfig
from dedicap.decide.policy_capacity import slo_batch_capacity
from dedicap.sim import knee as sim_knee
from dedicap.sim.dataplane import LEVELS, stationary_table
from dedicap.sim.service import ServiceModel, calibrated


def replicas() -> list[tuple[ServiceModel, float]]:
    """(replica, latency target in seconds): the demo's, a max-8 Triton replica measured by
    batch_fit.py, and the two calibrated H200 models at the benchmark's target."""
    return [
        (ServiceModel(name="demo replica (40 + 10 ms, max 4)", t0=0.040, t1=0.010, max_batch=4,
                      max_queue_delay=0.005, queue_timeout=None), 0.200),
        # the demo's replica as the operator learned it live (Triton's compute durations):
        # a full batch of 101 ms, the target under two of them
        (ServiceModel(name="demo as learned live (27.9 + 18.3 ms, max 4)", t0=0.0279,
                      t1=0.0183, max_batch=4, max_queue_delay=0.005, queue_timeout=None), 0.200),
        (ServiceModel(name="20 + 5 ms, max 8", t0=0.020, t1=0.005, max_batch=8,
                      max_queue_delay=0.002, queue_timeout=None), 0.200),
        (calibrated("encoder-1b", queue_timeout=None), 0.100),
        (calibrated("encoder-base", queue_timeout=None), 0.100),
    ]


def crossing(model: ServiceModel, target_s: float, level: float) -> float:
    """The load (share of saturation) at which the `level` latency quantile passes the target
    (interpolated between the table's rates; 1.0 when it never does below saturation)."""
    table = stationary_table(model)
    k = int(np.argmin(np.abs(LEVELS - level)))
    q = table.latency_q[:, k]
    frac = table.rates / table.capacity
    above = np.nonzero(q > target_s)[0]
    if len(above) == 0:
        return 1.0
    i = int(above[0])
    if i == 0:
        return float(frac[0])
    f = (target_s - q[i - 1]) / (q[i] - q[i - 1])
    return float(frac[i - 1] + f * (frac[i] - frac[i - 1]))


def grid(quantile: float) -> None:
    """The crossing over replica shapes whose SLO batch is capped by the max batch: max batch
    B, the fixed share of a full batch's time, and the target in full batch times (80 ms)."""
    print("| max batch | fixed share | target / full batch | slack after 2 batches, in "
          "batches | crosses the target at |")
    print("|---|---|---|---|---|")
    full_s, delay_s = 0.080, 0.002
    for b in (2, 4, 8, 16, 32):
        for share in (0.2, 0.5, 0.8):
            for ratio in (2.2, 2.5, 3.0, 4.0):
                model = ServiceModel(name="grid", t0=share * full_s, t1=(1 - share) * full_s / b,
                                     max_batch=b, max_queue_delay=delay_s, queue_timeout=None)
                target = ratio * full_s
                slack = (target - delay_s - 2 * full_s) / full_s
                print(f"| {b} | {share:g} | {ratio:g} | {slack:.2f} | "
                      f"{crossing(model, target, quantile):.3f} |")


def holdout(count: int, seed: int, targets: tuple[float, float] = (1.0, 6.0)) -> None:
    """The table's crossing against a fresh bisection on the exact batcher, for random shapes
    off the table's grid: any max batch, fixed share, a real queue delay, targets of
    `targets` full batches (one to six), the usual percentiles. Negative errors plan low
    (safe); positive ones plan over the knee."""
    rng = np.random.default_rng(seed)
    errs = []
    print("| max batch | fixed share | delay / full batch | target / full batch | percentile "
          "| measured | table | table - measured |")
    print("|---|---|---|---|---|---|---|---|")
    while len(errs) < count:
        b = int(np.exp(rng.uniform(0.0, np.log(200.0))))
        share = float(rng.uniform(0.0, 1.0))
        delay = float(rng.uniform(0.0, 0.15))
        ratio = float(rng.uniform(*targets))
        pct = float(rng.choice([90.0, 95.0, 99.0]))
        model = sim_knee.shape(b, share, delay)
        measured = sim_knee.measured_crossing(model, ratio, pct)
        table = knee_share(model.t0, model.t1, b, ratio, delay, pct)
        if measured is None or table is None:
            continue
        errs.append(table - measured)
        print(f"| {b} | {share:.2f} | {delay:.3f} | {ratio:.2f} | {pct:g} | {measured:.3f} "
              f"| {table:.3f} | {table - measured:+.3f} |")
    e = np.asarray(errs)
    print()
    print(f"{len(e)} shapes: table - measured median {np.median(e):+.3f}, "
          f"most over {e.max():+.3f}, most under {e.min():+.3f}, "
          f"over by more than 0.02 in {int((e > 0.02).sum())}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quantile", type=float, default=0.95)
    ap.add_argument("--utilization", type=float, default=PolicyConfig.utilization)
    ap.add_argument("--grid", action="store_true",
                    help="the crossing over 60 replica shapes instead (about a minute)")
    ap.add_argument("--holdout", type=int, default=0, metavar="N",
                    help="the policy's knee table against the batcher on N random shapes")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--targets", type=float, nargs=2, default=(1.0, 6.0), metavar=("LO", "HI"),
                    help="with --holdout: targets drawn from LO to HI full batches")
    args = ap.parse_args()
    if args.grid:
        grid(args.quantile)
        return
    if args.holdout:
        holdout(args.holdout, args.seed, tuple(args.targets))
        return
    level = float(LEVELS[int(np.argmin(np.abs(LEVELS - args.quantile)))])
    print(f"the latency's {100 * level:g}th percentile (the simulator's level nearest "
          f"{100 * args.quantile:g}) against the target, Poisson arrivals, exact batcher; the "
          f"policy plans utilization {args.utilization:g} x its capacity at the SLO")
    print()
    print("| replica | target | full batch ms | saturated req/s | crosses the target at "
          "| the capacity rule plans | the knee table says | the policy plans "
          "| plan / crossing |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model, target in replicas():
        full_ms = 1000.0 * model.batch_time(model.max_batch)
        plan = (args.utilization * slo_batch_capacity(
            model.t0, model.t1, model.max_batch, target, model.max_queue_delay,
            float(model.max_batch)) / model.capacity())
        cross = crossing(model, target, args.quantile)
        knee = knee_share(model.t0, model.t1, model.max_batch, target, model.max_queue_delay,
                          100.0 * args.quantile)
        planned = plan if knee is None else min(plan, knee)
        print(f"| {model.name} | {1000 * target:g} ms | {full_ms:.1f} | {model.capacity():.1f} "
              f"| {cross:.2f} of saturation | {plan:.2f} | "
              f"{'-' if knee is None else f'{knee:.2f}'} | {planned:.2f} "
              f"| {planned / cross:.2f} |")


if __name__ == "__main__":
    main()
