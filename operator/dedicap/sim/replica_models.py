"""Where the planner's replica comes from: the user's own Triton, or the calibrated example.

The simulator's replica (``service.ServiceModel``) is a dynamic batcher whose batch of ``b``
requests takes ``S(b) = t0 + t1*b``. This module fits ``t0`` and ``t1`` from what the user has:

- **a running ModelDeployment** (:func:`from_history`): Triton's mean batch and compute time per
  request over time, read from Prometheus, folded into the *same* decayed least-squares fit the
  live policy learns (``decide.policy_capacity.learn_batch_time``, size-biased batch and
  weights included), so the planner's replica is the one the autoscaler believes in;
- **a measurement before deploying**: Triton's ``perf_analyzer -f out.csv`` over concurrency
  levels (:func:`from_perf_analyzer_csv`), or a short YAML of the batch-time curve
  (:func:`from_curve_yaml`, format in docs/autoscaling.md);
- otherwise **the calibrated example** (:func:`calibrated_example`): encoder-1b measured on an
  H200, which is not the user's model, and every output says so.

Pure: text and numbers in, a :class:`ReplicaModel` out (``plan.py`` reads the files).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dedicap.decide.policy_capacity import BatchFit, learn_batch_time
from dedicap.sim.service import ServiceModel, calibrated

DEFAULT_QUEUE_DELAY_S = 0.002  # Triton's max_queue_delay as the calibration ran it


class ReplicaModelError(ValueError):
    """The measurement cannot give a replica model; the message says what is missing."""


@dataclass(frozen=True)
class ReplicaModel:
    service: ServiceModel
    source: str  # where the model comes from, in words
    example: bool = False  # the calibrated example, not the user's model
    points: tuple[tuple[float, float], ...] = ()  # (batch, batch ms) the fit used
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        s = self.service
        queue = "none" if s.queue_timeout is None else f"{s.queue_timeout:g} s"
        lines = [
            f"replica model: {self.source}",
            f"  batch time {1000 * s.t0:.2f} ms + {1000 * s.t1:.3f} ms x requests, max batch "
            f"{s.max_batch}, queue delay {1000 * s.max_queue_delay:g} ms, queue timeout {queue}; "
            f"saturates at {s.capacity():.1f} req/s",
        ]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        s = self.service
        return {
            "source": self.source, "example": self.example, "name": s.name,
            "batch_ms_fixed": 1000 * s.t0, "batch_ms_per_request": 1000 * s.t1,
            "max_batch": s.max_batch, "max_queue_delay_ms": 1000 * s.max_queue_delay,
            "queue_timeout_s": s.queue_timeout, "saturated_rps": s.capacity(),
            "points": [list(p) for p in self.points], "notes": list(self.notes),
        }


def calibrated_example(name: str, queue_timeout: float | None) -> ReplicaModel:
    return ReplicaModel(
        service=calibrated(name, queue_timeout=queue_timeout),
        source=(f"the calibrated example {name} (Triton 2.51 on an H200), not your model: "
                "plan with your own through --replica FILE or --prometheus"),
        example=True,
    )


def _service(name: str, fit: BatchFit, max_batch: int | None, max_queue_delay_s: float,
             queue_timeout: float | None) -> tuple[ServiceModel, tuple[str, ...]]:
    coef = fit.coefficients()
    if coef is None:
        raise ReplicaModelError("no measured batch: nothing to fit a replica to")
    s0, s1 = coef
    notes: list[str] = []
    if max_batch is None:
        # The largest batch seen is a floor of the model's max_batch_size: planning with it
        # never overstates what a replica serves.
        max_batch = max(1, math.ceil(fit.max_batch_seen - 1e-6))
        notes.append(f"max batch {max_batch} is the largest batch measured; give the model's "
                     "max_batch_size with --max-batch")
    if s1 <= 0.0:
        s1 = 1e-9
    return ServiceModel(name=name, t0=s0, t1=s1, max_batch=max_batch,
                        max_queue_delay=max_queue_delay_s, queue_timeout=queue_timeout), tuple(
        notes)


def fit_points(points: Iterable[tuple[float, float]]) -> BatchFit:
    """An undecayed fit of exact (batch size, batch seconds) points."""
    fit = BatchFit()
    for b, seconds in points:
        fit = fit.add(b, seconds, 1.0, 0.0, math.inf)
    return fit


@dataclass(frozen=True)
class WindowPoint:
    """One step of a deployment's history: what Triton reported over ``window_s`` before ``t``."""

    t: float
    mean_batch: float  # requests per execution (rows / rows per request)
    mean_compute_ms: float  # per request = of the batch it ran in
    served_rps: float


def from_history(points: Sequence[WindowPoint], name: str, window_s: float, half_life_s: float,
                 max_batch: int | None, max_queue_delay_s: float, queue_timeout: float | None,
                 ) -> ReplicaModel:
    """The replica the live policy would have learned from these windows."""
    fit = BatchFit()
    used = []
    for p in sorted(points, key=lambda p: p.t):
        after = learn_batch_time(fit, p.mean_batch, p.mean_compute_ms, p.served_rps, window_s,
                                 p.t, half_life_s)
        if after is not fit:
            used.append((p.mean_batch, p.mean_compute_ms))
        fit = after
    if not used:
        raise ReplicaModelError(
            f"{name}: no window of the history has Triton executions with a compute time "
            "(no traffic, or the model's metrics are missing); give a measurement with --replica")
    service, notes = _service(name, fit, max_batch, max_queue_delay_s, queue_timeout)
    return ReplicaModel(service=service, source=(
        f"learned from {name}'s Triton metrics ({len(used)} windows), the live policy's fit"),
        points=tuple(used), notes=notes)


# --------------------------------------------------------------------------- perf_analyzer

_THROUGHPUT = "Inferences/Second"
_COMPUTE = ("Server Compute Infer", "Server Compute")  # usec; the latter before Triton 2.x split it


def from_perf_analyzer_csv(text: str, name: str, max_batch: int | None,
                           max_queue_delay_s: float, queue_timeout: float | None
                           ) -> ReplicaModel:
    """A replica from ``perf_analyzer -f out.csv`` (rows per concurrency or request rate).

    Each row gives the throughput ``X`` and Triton's compute time per request ``S`` (the time of
    the batch it ran in). A replica busy with batches of ``b`` serves ``b / S``, so the batch
    the row ran at is ``b = X*S`` (at least 1, at most the concurrency): near saturation this
    is exact, below it a floor. ``Inferences/Second`` counts rows: run perf_analyzer with
    ``-b 1`` (one row per request) for the points to be requests.
    """
    reader = csv.DictReader(io.StringIO(text))
    cols = reader.fieldnames or []
    compute_col = next((c for c in _COMPUTE if c in cols), None)
    if _THROUGHPUT not in cols or compute_col is None:
        raise ReplicaModelError(
            f"{name}: not a perf_analyzer CSV (needs the columns {_THROUGHPUT!r} and "
            f"{' or '.join(repr(c) for c in _COMPUTE)}, which perf_analyzer writes with -f when "
            f"the server reports its statistics); columns: {cols}")
    points = []
    for i, row in enumerate(reader, start=2):
        try:
            x = float(row[_THROUGHPUT])
            s = float(row[compute_col]) / 1e6
            conc = float(row["Concurrency"]) if row.get("Concurrency") else math.inf
        except (TypeError, ValueError) as err:
            raise ReplicaModelError(f"{name}, line {i}: {err}") from err
        if x <= 0 or s <= 0:
            continue
        points.append((min(max(x * s, 1.0), conc), s))
    if not points:
        raise ReplicaModelError(f"{name}: no row with a positive throughput and compute time")
    service, notes = _service(name, fit_points(points), max_batch, max_queue_delay_s,
                              queue_timeout)
    return ReplicaModel(service=service, source=(
        f"fitted to {name} (perf_analyzer, {len(points)} load levels)"),
        points=tuple((b, 1000 * s) for b, s in points), notes=notes)


# --------------------------------------------------------------------------- YAML curve


class CurveFile(BaseModel):
    """A replica's batch-time curve, measured however the user likes (docs/autoscaling.md)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    max_batch_size: int = Field(ge=1, description="the model's max_batch_size")
    max_queue_delay_ms: float = Field(default=1000 * DEFAULT_QUEUE_DELAY_S, ge=0)
    queue_timeout_s: float | None = Field(default=None, gt=0)
    batch_ms: dict[int, float] = Field(
        min_length=1, description="compute time of one batch in ms, by batch size (requests)")

    @field_validator("batch_ms")
    @classmethod
    def _positive(cls, v: dict[int, float]) -> dict[int, float]:
        for b, ms in v.items():
            if b < 1 or not ms > 0:
                raise ValueError(f"batch {b}: {ms} ms; sizes are >= 1 and times > 0")
        return v


def from_curve_yaml(text: str, name: str, queue_timeout: float | None) -> ReplicaModel:
    try:
        raw = yaml.safe_load(text)
        curve = CurveFile.model_validate(raw)
    except yaml.YAMLError as err:
        raise ReplicaModelError(f"{name}: not YAML: {err}") from err
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or '(top)'}: {e['msg']}" for e in err.errors())
        raise ReplicaModelError(
            f"{name}: {problems} (expected max_batch_size, batch_ms {{size: ms}}, optional "
            "name, max_queue_delay_ms, queue_timeout_s)") from err
    points = sorted((float(b), ms / 1000.0) for b, ms in curve.batch_ms.items())
    timeout = curve.queue_timeout_s if curve.queue_timeout_s is not None else queue_timeout
    service, notes = _service(curve.name or name, fit_points(points), curve.max_batch_size,
                              curve.max_queue_delay_ms / 1000.0, timeout)
    return ReplicaModel(service=service, source=(
        f"fitted to the batch-time curve in {name} ({len(points)} points)"),
        points=tuple((b, 1000 * s) for b, s in points), notes=notes)


def from_file_text(text: str, name: str, max_batch: int | None, max_queue_delay_s: float,
                   queue_timeout: float | None) -> ReplicaModel:
    """A perf_analyzer CSV or a YAML curve, told apart by their content."""
    first = text.lstrip().splitlines()[0] if text.strip() else ""
    if _THROUGHPUT in first:
        return from_perf_analyzer_csv(text, name, max_batch, max_queue_delay_s, queue_timeout)
    return from_curve_yaml(text, name, queue_timeout)
