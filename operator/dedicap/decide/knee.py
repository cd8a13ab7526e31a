"""How close to saturation a replica whose max batch binds keeps its latency percentile.

The capacity rule (:mod:`dedicap.decide.policy_capacity`) takes a request's latency as
``delay + 2*S(b)``: it waits for the batch in flight, then rides in the next. That holds while
batches can grow to absorb the queue. Once the max batch binds, random arrivals queue for
whole batches before saturation, and the percentile crosses the target earlier the smaller the
max batch and the less slack the target leaves beyond two full batches: on a max batch of 4
and a target of two and a half full batches, at three quarters of saturation.

``knee_share`` reads that crossing from a table measured with the simulator's exact batcher
under Poisson arrivals (:mod:`dedicap.sim.knee`, which generates :mod:`dedicap.decide.knee_table`),
in full-batch times, so one table serves every replica: the policy plans no more per replica
than the load at which its percentile meets the target. Where the table's shape is between
grid points it errs low: the max batch is taken at the grid's value at or below it (a larger
max batch crosses later), the percentile at the table's value at or above it.
Traffic burstier than Poisson over a batch's time crosses earlier still, which the policy's
latency feedback learns.
"""

from __future__ import annotations

import bisect
import math

from dedicap.decide import knee_table


def _crossing(curve: list[float], target: float) -> float | None:
    """The load at which a latency curve (over ``RHOS``) passes ``target``: None when it is
    over at the lowest load measured, 1.0 when it never is."""
    rhos = knee_table.RHOS
    for i, q in enumerate(curve):
        if q > target:
            if i == 0:
                return None
            lo = curve[i - 1]
            f = (target - lo) / (q - lo) if q > lo else 0.0
            return rhos[i - 1] + f * (rhos[i] - rhos[i - 1])
    return 1.0


def knee_share(s0: float, s1: float, max_batch: int | None, target_s: float, delay_s: float,
               percentile: float) -> float | None:
    """The share of saturation (full batches back to back) at which the ``percentile`` of a
    replica with batch time ``S(b) = s0 + s1*b`` and max batch ``max_batch`` reaches
    ``target_s`` under Poisson arrivals. None where the table says nothing: no max batch known,
    or a target not met even at the lowest load measured."""
    if not max_batch or max_batch < 1:
        return None
    full = s0 + s1 * max_batch
    if not (full > 0.0 and math.isfinite(full) and s0 >= 0.0 and s1 >= 0.0):
        return None
    # the target in full batches, beyond the queue delay. Under two full batches the capacity
    # rule plans a smaller batch, but random arrivals still fill batches up to the max: the
    # crossing goes on smoothly there (a fresh bisection: 0.71 of saturation at 2.03 full
    # batches, 0.70 at 1.93), and the caller converts the share to its smaller batch's.
    budget = (target_s - delay_s) / full
    b = knee_table.BATCHES[max(bisect.bisect_right(knee_table.BATCHES, max_batch) - 1, 0)]
    pcts = knee_table.PERCENTILES
    p = pcts[min(bisect.bisect_left(pcts, percentile - 1e-9), len(pcts) - 1)]
    k = pcts.index(p)
    share = min(max(s0 / full, 0.0), 1.0)
    shares = knee_table.SHARES
    j = min(max(bisect.bisect_right(shares, share) - 1, 0), len(shares) - 2)
    w = (share - shares[j]) / (shares[j + 1] - shares[j])
    lo = knee_table.CURVES[(b, shares[j])][k]
    hi = knee_table.CURVES[(b, shares[j + 1])][k]
    curve = [(1.0 - w) * x + w * y for x, y in zip(lo, hi, strict=True)]
    return _crossing(curve, budget)
