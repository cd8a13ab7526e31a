"""`spec.autoscaling` -> the policy's `PolicyConfig`. Pure: what the user wrote, plus the
operator's defaults for what the API does not say (start-up delay, scrape interval).

Mapping of `behavior` (the API) onto the policy's `Behavior`:

- `stabilizationWindowSeconds` is the policy's stabilization window of that direction.
- `maxStepReplicas` / `maxStepPercent` bound one *decision* (the API's words), so a direction
  that sets either gets a period of one evaluation interval. When both are set the larger step
  applies (the HPA's default `selectPolicy: Max`); when only one is set the other does not widen
  it. A direction that sets neither keeps the policy's own limits and periods.
- Without a latency objective the latency target is infinite (only errors and rejections can
  breach); without an error objective the policy's default error budget (0.1 %) judges
  REJECTED requests, which are unmet demand, not a failing model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from dedicap.api.models import LLM_PROFILES, AutoscalingSpec, ModelSpec, ScalingRules
from dedicap.decide.policy import Behavior, PolicyConfig
from dedicap.decide.policy_capacity import max_batch_in_requests
from dedicap.decide.policy_tokens import TokenSLO


@dataclass(frozen=True)
class AutoscalerDefaults:
    """What the operator assumes where the spec is silent (flags of `dedicap run`)."""

    evaluation_interval_s: float = 15.0
    startup_delay_s: float = 60.0  # from scale-up to a replica serving
    scrape_interval_s: float = 15.0  # Prometheus' scrape interval for Triton
    stale_after_intervals: float = 3.0
    window_s: float = 60.0  # the PromQL rate window
    # the fast path's rate window; None: 2.5 scrape intervals (two or three samples)
    short_window_s: float | None = None
    # How long capacity for a burst's peak is kept after a jump faster than replicas start
    # (the policy's burst memory; the API has no field for it).
    burst_memory_s: float = PolicyConfig.burst_memory_s
    # The share of time slices that must meet the latency target, for the SLO's alerts (the
    # API has no field for it; exported per ModelDeployment).
    latency_objective: float = 0.99

    def staleness_s(self) -> float:
        return self.scrape_interval_s * self.stale_after_intervals

    def short_window(self) -> float:
        if self.short_window_s is not None:
            return self.short_window_s
        return 2.5 * self.scrape_interval_s


def evaluation_interval(spec: AutoscalingSpec, defaults: AutoscalerDefaults) -> float:
    b = spec.behavior
    if b is not None and b.evaluation_interval_seconds is not None:
        return float(b.evaluation_interval_seconds)
    return defaults.evaluation_interval_s


def _direction(rules: ScalingRules | None, interval_s: float, *, up: bool
               ) -> dict[str, float | int]:
    prefix = "scale_up" if up else "scale_down"
    out: dict[str, float | int] = {}
    if rules is None:
        return out
    if rules.stabilization_window_seconds is not None:
        out[f"{prefix}_stabilization_s"] = float(rules.stabilization_window_seconds)
    n, pct = rules.max_step_replicas, rules.max_step_percent
    if n is not None or pct is not None:
        out[f"{prefix}_period_s"] = interval_s
        # The policy applies the larger of the two: an unset one must not widen the other.
        out[f"{prefix}_max_replicas"] = n if n is not None else 1
        out[f"{prefix}_max_percent"] = float(pct) if pct is not None else 0.0
    return out


def token_slo(spec: AutoscalingSpec, profile: str) -> TokenSLO | None:
    """A streaming LLM's objectives (None for a request-level model): TTFT and TPOT, and the
    request-latency objective, which for a stream is its whole duration."""
    if profile not in LLM_PROFILES:
        return None
    slo = spec.slo
    ttft, tpot, latency = slo.time_to_first_token, slo.time_per_output_token, slo.latency
    return TokenSLO(
        profile=profile,
        ttft_percentile=ttft.percentile if ttft else 95.0,
        ttft_target_ms=ttft.target_ms if ttft else math.inf,
        tpot_percentile=tpot.percentile if tpot else 95.0,
        tpot_target_ms=tpot.target_ms if tpot else math.inf,
        e2e_percentile=latency.percentile if latency else 95.0,
        e2e_target_ms=latency.target_ms if latency else math.inf)


def policy_config(spec: AutoscalingSpec, defaults: AutoscalerDefaults,
                  profile: str = "request", model: ModelSpec | None = None) -> PolicyConfig:
    """The PolicyConfig the operator runs for this `spec.autoscaling` (and the model's metrics
    profile: an LLM's runs in tokens; its batcher's limits, where `spec.model` gives them)."""
    interval = evaluation_interval(spec, defaults)
    changes: dict[str, float | int] = {}
    if spec.behavior is not None:
        changes.update(_direction(spec.behavior.scale_up, interval, up=True))
        changes.update(_direction(spec.behavior.scale_down, interval, up=False))
    behavior = replace(Behavior(), **changes)  # type: ignore[arg-type]
    latency = spec.slo.latency
    errors = spec.slo.error_rate
    config = PolicyConfig(
        min_replicas=spec.min_replicas,
        max_replicas=spec.max_replicas,
        latency_percentile=latency.percentile if latency else 95.0,
        latency_target_ms=latency.target_ms if latency else math.inf,
        behavior=behavior,
        evaluation_interval_s=interval,
        startup_delay_s=defaults.startup_delay_s,
        staleness_s=defaults.staleness_s(),
        burst_memory_s=defaults.burst_memory_s,
        tokens=token_slo(spec, profile),
    )
    if errors is not None:
        config = replace(config, error_rate_max=errors.maximum)
    if model is not None and model.max_batch_size is not None:
        config = replace(config, max_batch_size=model.max_batch_size)
    if model is not None and model.max_queue_delay_microseconds is not None:
        config = replace(config, max_queue_delay_ms=model.max_queue_delay_microseconds / 1000.0)
    return config


def batch_in_requests(config: PolicyConfig, rows_per_request: float) -> PolicyConfig:
    """`config` with the model's max batch counted in requests, as the policy counts batches:
    Triton's `max_batch_size` counts rows, and clients that send several rows per request
    fill a batch with fewer requests (the mean rows per request, from the same window)."""
    m = config.max_batch_size
    if m is None:
        return config
    return replace(config, max_batch_size=max_batch_in_requests(m, rows_per_request))
