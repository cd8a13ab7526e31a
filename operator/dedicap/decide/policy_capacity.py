"""What one replica can serve within the latency SLO, learned from what Triton reports.

A Triton replica with a dynamic batcher spends ``S(b) ~ s0 + s1*b`` seconds on a batch of ``b``
requests (measured: the compute time per batch grows sub-linearly with ``b``, so batching is a
replica's main lever). Triton reports, per replica, the mean batch size (``nv_inference_count /
nv_inference_exec_count``) and the compute time per request (``nv_inference_compute_infer_
duration_us / nv_inference_count``, which is the batch's compute time). Each evaluation adds the
point ``(b, S)`` to an exponentially-forgotten least-squares fit of ``s0`` and ``s1``.

Triton's compute time per request weights each batch by its size, so it measures
``S`` at the size-biased batch ``E[b^2]/E[b]``, not at the mean batch ``E[b]`` that
``count / exec_count`` gives. A dynamic batcher's batch is the request that opens it plus a
count of those that arrived meanwhile, cut at the model's max batch. Under load that count is
the arrivals during the previous batch, whose length grows with its size, so batch sizes
chain: with ``rho = s1*b / S(b)`` (the share of a batch's time that grows with it), the count
has ``1/(1 - rho^2)`` times the variance of a Poisson count of the same mean (a branching
process with immigration). So the fit takes the size-biased batch of ``min(1 + N, max)`` with
``N`` a negative-binomial count of that variance, ``rho`` from the fit so far: far from the
cap and at low load that is the Poisson ``b + 1 - 1/b``; at the cap, the cap itself. Against
Triton's own per-batch-size statistics (``benchmarks/batch_fit.py``) and the simulator's
exact batcher (which matches them within 0.03 request), it is within 0.1-0.4 request over
the whole load range, where ``b + 1 - 1/b`` is off by up to 0.7-3 (over near a small max
batch, under where the batch time is mostly per request). Without the correction the slope,
hence the capacity, would be off by several percent.

From the fit, the capacity at the SLO follows from queueing behaviour rather than a fixed ratio:

- a request that arrives at a busy replica waits for the batch in flight and then rides in the
  next one, so its latency is about ``max_queue_delay + 2*S(b)``. The largest batch ``b_slo``
  that keeps this within the latency target (and within the model's max batch) bounds the
  useful batch size;
- a replica that runs such batches back to back serves ``b_slo / S(b_slo)`` requests/s: the
  saturated throughput at the SLO. Past it the queue grows without bound (the hockey stick);
- the policy plans for a fraction ``utilization`` of it (the knee of the latency curve under
  random arrivals), scaled by a feedback ``gain`` that latency breaches lower and healthy
  high-load periods raise.

Pure functions and frozen data, so the state can be stored in a resource's status.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# The spread of batch sizes (variance, requests^2) from which the least-squares slope is
# trusted: a standard deviation of half a request. A window's mean batch carries sampling noise
# of about 0.05 request (hundreds of batches), which at this spread flattens the slope by about
# 1%. A model with a small max batch never spreads much more: with max batch 4, batches from 1
# to 4 have a variance under 2.25, and a load from idle to full spreads them by about 0.6 (a
# threshold of 1 left such a model on the "half fixed" prior, its capacity 7-19% low).
IDENTIFIED_BATCH_VARIANCE = 0.25


@dataclass(frozen=True)
class BatchFit:
    """Decayed sufficient statistics of the points (batch size, seconds per batch)."""

    w: float = 0.0
    wb: float = 0.0
    wbb: float = 0.0
    wy: float = 0.0
    wby: float = 0.0
    max_batch_seen: float = 0.0
    t: float | None = None

    def add(
        self, batch: float, seconds: float, weight: float, t: float, half_life: float
    ) -> BatchFit:
        decay = 1.0 if self.t is None else 0.5 ** (max(t - self.t, 0.0) / half_life)
        return BatchFit(
            w=self.w * decay + weight,
            wb=self.wb * decay + weight * batch,
            wbb=self.wbb * decay + weight * batch * batch,
            wy=self.wy * decay + weight * seconds,
            wby=self.wby * decay + weight * batch * seconds,
            max_batch_seen=max(self.max_batch_seen, batch),
            t=t,
        )

    def coefficients(self) -> tuple[float, float] | None:
        """(s0, s1) with ``S(b) = s0 + s1*b``, or None before any point.

        When the batch sizes seen so far are too alike to identify a slope, assume half of
        the batch time is fixed cost: between "no batching gain" and "free batching".
        """
        if self.w <= 0.0:
            return None
        mb = self.wb / self.w
        my = self.wy / self.w
        var_b = self.wbb / self.w - mb * mb
        if var_b > IDENTIFIED_BATCH_VARIANCE:
            s1 = (self.wby / self.w - mb * my) / var_b
            s0 = my - s1 * mb
            if s1 > 0.0 and s0 >= 0.0:
                return s0, s1
            if s1 > 0.0:  # a negative intercept: keep the slope through the origin
                return 0.0, my / max(mb, 1e-9)
        s1 = 0.5 * my / max(mb, 1.0)
        return max(my - s1 * mb, 0.0), s1


def size_biased_batch(mean_batch: float, max_batch: int | None = None,
                      per_request_share: float = 0.0) -> float:
    """The batch size at which Triton's per-request compute time is measured: ``E[b^2]/E[b]``
    of ``b = min(1 + N, max_batch)`` whose mean is ``mean_batch``, ``N`` a count with
    ``1/(1 - per_request_share^2)`` times a Poisson count's variance (see above)."""
    b = max(mean_batch, 1.0)
    if max_batch is not None and b >= max_batch:
        return float(max(max_batch, 1))  # full batches (or batching off): no size bias left
    rho = min(max(per_request_share, 0.0), 0.95)  # 0.95: at most 10x a Poisson variance
    dispersion = 1.0 / (1.0 - rho * rho)
    if (max_batch is None or b <= 1.0
            or max_batch - b > 8.0 * math.sqrt(dispersion * b) + 5.0):
        # the cut is out of the count's reach: E[b^2] = b^2 + dispersion*(b - 1)
        return b + dispersion * (b - 1.0) / b
    # Solve for the count's mean mu (the cut mean grows with it) by regula falsi, Illinois
    # variant, from the uncut solution b - 1, which is at or below the root.
    lo, f_lo = b - 1.0, _cut_moments(b - 1.0, dispersion, max_batch)[0] - b
    hi = 2.0 * b
    f_hi = _cut_moments(hi, dispersion, max_batch)[0] - b
    while f_hi < 0.0:
        lo, f_lo, hi = hi, f_hi, 2.0 * hi
        f_hi = _cut_moments(hi, dispersion, max_batch)[0] - b
    mu, side = lo, 0
    for _ in range(100):
        if f_hi - f_lo <= 0.0:
            break
        mu = hi - f_hi * (hi - lo) / (f_hi - f_lo)
        f = _cut_moments(mu, dispersion, max_batch)[0] - b
        if abs(f) < 1e-9:
            break
        if f < 0.0:
            lo, f_lo = mu, f
            if side == -1:
                f_hi *= 0.5
            side = -1
        else:
            hi, f_hi = mu, f
            if side == 1:
                f_lo *= 0.5
            side = 1
    m1, m2 = _cut_moments(mu, dispersion, max_batch)
    return m2 / m1


def _cut_moments(mu: float, dispersion: float, max_batch: int) -> tuple[float, float]:
    """E[k], E[k^2] of ``k = min(1 + N, max_batch)``, ``N`` of mean ``mu`` and variance
    ``dispersion * mu``: Poisson at dispersion 1, negative binomial above."""
    if mu <= 0.0:
        return 1.0, 1.0
    if dispersion <= 1.0 + 1e-9:
        def log_p(n: int) -> float:
            return -mu + n * math.log(mu) - math.lgamma(n + 1)
    else:
        r = mu / (dispersion - 1.0)
        log_keep, log_q = -math.log(dispersion), math.log1p(-1.0 / dispersion)
        base = r * log_keep - math.lgamma(r)

        def log_p(n: int) -> float:
            return base + math.lgamma(n + r) - math.lgamma(n + 1) + n * log_q
    m1 = m2 = 0.0
    below = 0.0
    for n in range(max_batch - 1):
        p = math.exp(log_p(n))  # in logs: a large mean's P(N = 0) alone would underflow
        k = n + 1.0
        m1 += k * p
        m2 += k * k * p
        below += p
        if p < 1e-16 and n > mu:  # the rest is negligible
            break
    tail = max(1.0 - below, 0.0)
    return m1 + max_batch * tail, m2 + max_batch * max_batch * tail


def learn_batch_time(
    fit: BatchFit, mean_batch: float, mean_compute_ms: float, served_rps: float,
    window_s: float, t: float, half_life: float, max_batch: int | None = None,
) -> BatchFit:
    """``fit`` with one window's point (mean batch in requests, compute ms per request), as the
    live policy learns it; a window without a usable point leaves the fit as it is.

    The point weighs by the requests behind it, up to 1,000: a window of a few requests is a
    noisy point. ``dedicap plan`` learns a deployment's replica from its Prometheus history
    through this same function.
    """
    if not (math.isfinite(mean_batch) and math.isfinite(mean_compute_ms)
            and math.isfinite(served_rps)):
        return fit
    if mean_batch < 1.0 or mean_compute_ms <= 0.0 or served_rps <= 0.0:
        return fit
    weight = min(1.0, served_rps * window_s / 1000.0)
    # the batches' chaining, from the fit so far (none yet: Poisson); the fit's slope and the
    # size bias pull against each other (a steeper slope spreads batches, which flattens it)
    coef = fit.coefficients()
    share = (coef[1] * mean_batch / (coef[0] + coef[1] * mean_batch)
             if coef is not None and coef[0] + coef[1] * mean_batch > 0.0 else 0.0)
    batch = size_biased_batch(mean_batch, max_batch, share)
    return fit.add(batch, mean_compute_ms / 1000.0, weight, t, half_life)


def slo_batch_capacity(
    s0: float, s1: float, max_batch: int | None, target_s: float, max_queue_delay: float,
    max_batch_seen: float,
) -> float:
    """Saturated requests/s of one replica using the largest batch that keeps the SLO."""
    # latency ~ delay + 2*S(b) <= target  =>  b <= ((target - delay)/2 - s0) / s1
    budget = (target_s - max_queue_delay) / 2.0
    b_slo = (budget - s0) / s1 if s1 > 0 else math.inf
    b_cap = float(max_batch) if max_batch else max(4.0 * max_batch_seen, 1.0)
    b = max(min(b_slo, b_cap), 1.0)
    return b / (s0 + s1 * b)
