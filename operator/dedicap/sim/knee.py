"""The latency knee of a batching replica under random arrivals, measured with the exact batcher.

A replica whose max batch binds serves full batches back to back at saturation, and random
arrivals queue for whole batches well before it: on a max batch of 4 the p95 crosses a target
of two and a half full batches at three quarters of saturation (``benchmarks/knee.py``), while
the capacity rule (``delay + 2*S(b)``) plans nine tenths of it. How far below saturation the
crossing lies follows from the shape of the replica alone, once times are counted in full
batches: the max batch ``B``, the fixed share of a full batch's time ``s0 / S(B)``, the load
as a share of saturation ``rho``. This module measures, for a grid of shapes, the latency
percentiles (in full batches) against ``rho`` with Poisson arrivals through the simulator's own
batcher (``run_batcher``, which reproduces Triton's batches), and writes them as the table the
policy reads (``dedicap/decide/knee_table.json``): measured once, looked up in microseconds.

    python -m dedicap.sim.knee            # rewrite the table (about two minutes)
    python -m dedicap.sim.knee --check    # compare two rows with a fresh measurement
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from dedicap.sim.dataplane import INF, TickStats, _Replica, run_batcher
from dedicap.sim.service import ServiceModel

# The grid. Max batches as Triton models set them; the fixed share from "batching is free"
# (1) to "no batching gain" (0); loads dense where targets of two to a few batches cross.
BATCHES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)
SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)
RHOS = tuple(round(x, 3) for x in [*np.arange(0.05, 0.5, 0.05), *np.arange(0.5, 0.995, 0.02),
                                     0.99])
PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)
REQUESTS = 200_000
TABLE_PATH = Path(__file__).resolve().parent.parent / "decide" / "knee_table.json"


def shape(max_batch: int, share: float, delay: float = 0.0) -> ServiceModel:
    """A replica whose full batch takes one time unit."""
    return ServiceModel(name="knee", t0=share, t1=(1.0 - share) / max_batch,
                        max_batch=max_batch, max_queue_delay=delay, queue_timeout=None)


def latency_percentiles(model: ServiceModel, rho: float, percentiles: tuple[float, ...],
                        requests: int = REQUESTS, seed: int = 1) -> np.ndarray:
    """The latency percentiles (in the model's time unit) of one replica fed Poisson arrivals
    at ``rho`` of its saturated throughput; the first tenth of requests warm it up. The same
    seed at every load (common random numbers) keeps a curve smooth in ``rho``."""
    gaps = np.random.default_rng(seed).exponential(1.0, size=requests)
    times = np.cumsum(gaps) / (rho * model.capacity())
    rep = _Replica()
    rep.q = times.tolist()
    fins: list[float] = []
    starts: list[int] = []
    ends: list[int] = []
    used = run_batcher(rep, INF, model, TickStats(), fins, starts, ends)
    sizes = np.asarray(ends) - np.asarray(starts)
    lat = np.repeat(np.asarray(fins), sizes) - times[:used]
    return np.percentile(lat[requests // 10:], percentiles)


def curves(max_batch: int, share: float, delay: float = 0.0,
           rhos: tuple[float, ...] = RHOS, requests: int = REQUESTS) -> np.ndarray:
    """[percentile][rho] latency in full batches for one shape."""
    model = shape(max_batch, share, delay)
    rows = [latency_percentiles(model, r, PERCENTILES, requests) for r in rhos]
    return np.asarray(rows).T


def measured_crossing(model: ServiceModel, target: float, percentile: float,
                      requests: int = REQUESTS) -> float | None:
    """The load (share of saturation) at which the percentile passes ``target`` (in the
    model's time unit), by bisection on the exact batcher; None when it passes at 1% load,
    1.0 when it never does below 99.5%."""
    def over(rho: float) -> bool:
        return bool(latency_percentiles(model, rho, (percentile,), requests)[0] > target)

    lo, hi = 0.01, 0.995
    if over(lo):
        return None
    if not over(hi):
        return 1.0
    for _ in range(12):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if over(mid) else (mid, hi)
    return 0.5 * (lo + hi)


def render(table: dict[tuple[int, float], np.ndarray]) -> str:
    """The table as knee_table.json (four significant digits: below the measurement's noise)."""
    head = {
        "about": "Latency percentiles (in full-batch times) of one batching replica under "
                 "Poisson arrivals at loads `rhos` (shares of saturation), measured with the "
                 "exact batcher without queue delay; written by `python -m dedicap.sim.knee`.",
        "batches": list(BATCHES), "shares": list(SHARES), "rhos": list(RHOS),
        "percentiles": list(PERCENTILES),
    }
    lines = ["{"] + [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    lines.append(' "curves": [')
    rows = []
    for (b, s), arr in sorted(table.items()):
        latency = ",\n   ".join(json.dumps([float(f"{v:.4g}") for v in row]) for row in arr)
        rows.append(f'  {{"max_batch": {b}, "fixed_share": {s}, "latency": [\n   {latency}]}}')
    lines.append(",\n".join(rows))
    lines.append(" ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="measure a few shapes again and compare with the table")
    args = ap.parse_args(argv)
    if args.check:
        from dedicap.decide import knee_table

        worst = 0.0
        for b, s in ((4, 0.5), (16, 0.25)):
            fresh = curves(b, s)
            stored = np.asarray(knee_table.CURVES[(b, s)])
            worst = max(worst, float(np.max(np.abs(fresh - stored) / stored)))
        print(f"largest relative difference: {worst:.2e}")
        return 0 if worst < 1e-3 else 1
    table: dict[tuple[int, float], np.ndarray] = {}
    for b in BATCHES:
        for s in SHARES:
            table[(b, s)] = curves(b, s)
            print(f"B={b} share={s}: p95 at rho 0.9 = "
                  f"{table[(b, s)][PERCENTILES.index(95.0)][RHOS.index(0.9)]:.3f}",
                  file=sys.stderr)
    TABLE_PATH.write_text(render(table))
    print(f"wrote {TABLE_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())



