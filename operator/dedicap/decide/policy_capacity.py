"""What one replica can serve within the latency SLO, learned from what Triton reports.

A Triton replica with a dynamic batcher spends ``S(b) ~ s0 + s1*b`` seconds on a batch of ``b``
requests (measured: the compute time per batch grows sub-linearly with ``b``, so batching is a
replica's main lever). Triton reports, per replica, the mean batch size (``nv_inference_count /
nv_inference_exec_count``) and the compute time per request (``nv_inference_compute_infer_
duration_us / nv_inference_count``, which is the batch's compute time). Each evaluation adds the
point ``(b, S)`` to an exponentially-forgotten least-squares fit of ``s0`` and ``s1``.

Triton's compute time per request weights each batch by its size, so it measures
``S`` at the size-biased batch ``E[b^2]/E[b]``, not at the mean batch ``E[b]`` that
``count / exec_count`` gives. For batch sizes spread about like a Poisson count that is
``E[b] + 1`` (and exactly 1 when every batch holds one request), so the fit uses
``size_biased_batch(b) = b + 1 - 1/b``; without it the slope, hence the capacity, would be
off by several percent.

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
        if var_b > 1.0:  # batch sizes spread over more than about +-1 request
            s1 = (self.wby / self.w - mb * my) / var_b
            s0 = my - s1 * mb
            if s1 > 0.0 and s0 >= 0.0:
                return s0, s1
            if s1 > 0.0:  # a negative intercept: keep the slope through the origin
                return 0.0, my / max(mb, 1e-9)
        s1 = 0.5 * my / max(mb, 1.0)
        return max(my - s1 * mb, 0.0), s1


def max_batch_in_requests(max_batch_rows: int, rows_per_request: float) -> int:
    """The model's max batch counted in requests, as batches are counted here: Triton's
    `max_batch_size` counts rows, and clients that send several rows per request fill a batch
    with fewer requests (`rows_per_request`: the mean, from the same window)."""
    if not math.isfinite(rows_per_request) or rows_per_request <= 1.0:
        return max_batch_rows
    return max(1, math.floor(max_batch_rows / rows_per_request + 1e-9))


def size_biased_batch(mean_batch: float) -> float:
    """The batch size at which Triton's per-request compute time is measured (see above)."""
    b = max(mean_batch, 1.0)
    return b + 1.0 - 1.0 / b


def learn_batch_time(
    fit: BatchFit, mean_batch: float, mean_compute_ms: float, served_rps: float,
    window_s: float, t: float, half_life: float,
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
    return fit.add(size_biased_batch(mean_batch), mean_compute_ms / 1000.0, weight, t, half_life)


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
