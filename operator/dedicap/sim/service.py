"""The service model of one Triton replica, calibrated from real measurements.

A replica runs Triton's dynamic batcher in front of one model instance:

- when the instance is free and requests wait, it dispatches a batch at
  ``max(free_at, min(oldest_arrival + max_queue_delay, arrival of the max_batch-th request))``
  and takes every request that has arrived by then, up to ``max_batch``;
- a batch whose requests carry ``work`` units in total (1 unit = one request of the calibrated
  shape) keeps the instance busy for ``S(work) = t0 + t1 * work`` seconds;
- a request that waited longer than ``queue_timeout`` is rejected (Triton's ``REJECTED``).

``t0`` and ``t1`` are fitted to the two points that matter most for autoscaling, measured with
Triton 2.51 on an H200 (closed-loop gRPC load, ``max_queue_delay_microseconds=2000``):

- the compute time of a batch of one (low-load latency), and
- the batch period at saturation, ``max_batch / saturated_throughput`` (a replica's capacity).

The intermediate measured points are kept in :data:`MEASURED` so the fit's residuals can be
checked (``fit_residuals``); they stay within a few milliseconds (see docs/autoscaling.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Calibration:
    """What was measured for one model: (mean batch, server compute ms per batch) points and
    the saturated point (mean batch, req/s)."""

    max_batch: int
    compute_ms: tuple[tuple[float, float], ...]
    saturation: tuple[float, float]


MEASURED: dict[str, Calibration] = {
    "encoder-1b": Calibration(
        max_batch=32,
        compute_ms=((1.0, 9.09), (2.0, 8.4), (8.0, 15.4), (15.9, 28.6), (31.8, 40.3)),
        saturation=(31.8, 768.0),
    ),
    "encoder-base": Calibration(
        max_batch=64,
        compute_ms=((1.0, 5.70), (2.0, 6.46), (4.0, 6.32), (8.0, 7.80), (15.9, 9.79),
                    (31.0, 15.48), (63.5, 19.49)),
        saturation=(63.6, 2779.5),
    ),
}


@dataclass(frozen=True)
class ServiceModel:
    """Parameters of one replica's batching server (all times in seconds)."""

    name: str
    t0: float  # fixed cost of a batch
    t1: float  # cost per unit of work in a batch
    max_batch: int
    max_queue_delay: float = 0.002
    queue_timeout: float | None = 1.0  # seconds a request may wait in the queue; None = forever

    def batch_time(self, work: float) -> float:
        return self.t0 + self.t1 * work

    def capacity(self, mean_work: float = 1.0) -> float:
        """Saturated throughput (req/s) of one replica: full batches back to back."""
        return self.max_batch / self.batch_time(self.max_batch * mean_work)

    def with_timeout(self, queue_timeout: float | None) -> ServiceModel:
        return replace(self, queue_timeout=queue_timeout)


def calibrated(name: str = "encoder-1b", queue_timeout: float | None = 1.0) -> ServiceModel:
    """The fitted model of a calibrated replica (see the module docstring)."""
    if name not in MEASURED:
        raise ValueError(f"unknown calibrated model {name!r}; known: {sorted(MEASURED)}")
    m = MEASURED[name]
    b1, c1 = m.compute_ms[0]
    sat_batch, sat_rps = m.saturation
    period_ms = 1000.0 * sat_batch / sat_rps
    t1_ms = (period_ms - c1) / (sat_batch - b1)
    t0_ms = c1 - t1_ms * b1
    return ServiceModel(name=name, t0=t0_ms / 1000.0, t1=t1_ms / 1000.0, max_batch=m.max_batch,
                        queue_timeout=queue_timeout)


def fit_residuals(model: ServiceModel) -> list[tuple[float, float, float]]:
    """(batch, measured compute ms, modelled batch ms) for every measured point."""
    return [(b, c, 1000.0 * model.batch_time(b)) for b, c in MEASURED[model.name].compute_ms]
