"""The reservation trade-off curve: what each size of commitment buys.

For a pool, every reservation size ``r`` (GPUs) on the curve is replayed with the reservation as
a hard limit (the policy never gets more than ``r`` replicas), giving its SLO-minute attainment,
the GPU-hours it uses and its reserved cost (``r`` GPUs for the whole span, used or not). Beside
it, from the unlimited autoscaled replay: the GPU-hours that *burst* capacity (borrowed beyond
the reservation) would have had to supply for the autoscaler's own attainment, and the cost of
reserving ``r`` and buying those from burst. A customer weighs exactly these: a bigger
commitment costs more and needs less burst.

The recommendation is the smallest ``r`` whose limited replay reaches the attainment goal.
Every point is one simulation; the sweep covers every size from what the mean rate needs to the
autoscaled peak, or ``max_points`` sizes spread over that range plus a bisection for the
recommendation when the range is wider.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dedicap.sim.simulator import SimResult


@dataclass(frozen=True)
class TradeoffPoint:
    replicas: int
    gpus: int
    attainment: float  # with the reservation as a hard limit, no burst
    gpu_hours_used: float
    reserved_cost: float
    burst_gpu_hours: float  # beyond the reservation, for the autoscaled attainment
    cost_with_burst: float

    def to_dict(self) -> dict[str, float | int]:
        return {"replicas": self.replicas, "reserved_gpus": self.gpus,
                "attainment": self.attainment, "gpu_hours_used": self.gpu_hours_used,
                "reserved_cost": self.reserved_cost, "burst_gpu_hours": self.burst_gpu_hours,
                "cost_with_burst": self.cost_with_burst}


@dataclass(frozen=True)
class Tradeoff:
    points: tuple[TradeoffPoint, ...]
    recommended: int | None  # replicas; None when even the unlimited replay misses the goal
    runs: int  # simulations spent
    autoscaled_attainment: float

    def point(self, replicas: int) -> TradeoffPoint | None:
        return next((p for p in self.points if p.replicas == replicas), None)


def burst_gpu_hours(held_per_minute: np.ndarray, replicas: int, gpus_per_replica: int) -> float:
    """GPU-hours held beyond ``replicas`` (from the minute means of replicas held)."""
    over = np.clip(np.nan_to_num(held_per_minute) - replicas, 0.0, None)
    return float(over.sum()) * 60.0 / 3600.0 * gpus_per_replica


def peak_desired(res: SimResult) -> int:
    """The most replicas the replay ever asked for (its warm start included)."""
    first = round(float(res.minute_ready[0])) if res.minutes else 1
    return max([first, 1, *(e.new for e in res.scale_events)])


def sweep(run: Callable[[int], SimResult], unconstrained: SimResult, lowest: int, goal: float,
          hours: float, price: float, burst_price: float, gpus_per_replica: int,
          max_points: int = 8) -> Tradeoff:
    """The curve from ``lowest`` replicas to the unlimited replay's peak (module docstring)."""
    peak = peak_desired(unconstrained)
    lo = max(1, min(lowest, peak))
    # a limit the unlimited replay never reached changes nothing: that replay is its result
    cache: dict[int, SimResult] = {peak: unconstrained}

    def at(r: int) -> SimResult:
        if r not in cache:
            cache[r] = run(r)
        return cache[r]

    if peak - lo + 1 <= max_points:
        sizes = list(range(lo, peak + 1))
    else:
        sizes = sorted({round(x) for x in np.linspace(lo, peak, max_points)})
    for r in sizes:
        at(r)
    recommended: int | None = None
    if unconstrained.attainment >= goal:
        # smallest size reaching the goal, assuming more never hurts (bisection between sizes)
        ok = [r for r in sizes if cache[r].attainment >= goal]
        best = min(ok) if ok else peak
        below = [r for r in sizes if r < best]
        low = max(below) + 1 if below else lo
        while low < best:
            mid = (low + best) // 2
            if at(mid).attainment >= goal:
                best = mid
            else:
                low = mid + 1
        if at(best).attainment >= goal:
            recommended = best
    points = []
    for r in sorted(cache):
        res = cache[r]
        gpus = r * gpus_per_replica
        reserved = gpus * hours * price
        burst = burst_gpu_hours(unconstrained.minute_held, r, gpus_per_replica)
        points.append(TradeoffPoint(
            replicas=r, gpus=gpus, attainment=res.attainment, gpu_hours_used=res.gpu_hours,
            reserved_cost=reserved, burst_gpu_hours=burst,
            cost_with_burst=reserved + burst * burst_price))
    return Tradeoff(points=tuple(points), recommended=recommended, runs=len(cache) - 1,
                    autoscaled_attainment=unconstrained.attainment)


def plot(curves: dict[str, Tradeoff], path: str, goal: float, title: str) -> None:
    """Attainment, cost and burst GPU-hours against reserved GPUs, one colour per pool."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    for i, (pool, tr) in enumerate(curves.items()):
        g = [p.gpus for p in tr.points]
        color = f"C{i}"
        axes[0].plot(g, [100 * p.attainment for p in tr.points], "o-", color=color, label=pool)
        axes[1].plot(g, [p.reserved_cost for p in tr.points], "o-", color=color,
                     label=f"{pool}: reserved")
        axes[1].plot(g, [p.cost_with_burst for p in tr.points], "s--", color=color,
                     label=f"{pool}: reserved + burst")
        axes[2].plot(g, [p.burst_gpu_hours for p in tr.points], "o-", color=color, label=pool)
        if tr.recommended is not None and (rec := tr.point(tr.recommended)) is not None:
            axes[0].scatter([rec.gpus], [100 * rec.attainment], s=120, facecolors="none",
                            edgecolors=color, zorder=3)
    axes[0].axhline(100 * goal, color="k", ls="--", lw=1, label="goal")
    axes[0].set_ylabel("SLO-minutes met, %\n(reservation as a limit)")
    axes[1].set_ylabel("cost, $")
    axes[2].set_ylabel("burst GPU-hours\n(for the autoscaled run)")
    axes[2].set_xlabel("reserved GPUs")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    axes[0].set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
