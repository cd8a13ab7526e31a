"""The autoscaler's status: the policy's answer and the metrics behind it turned into
`status.observed`, `status.lastScale`, conditions and reason codes. Pure.

Condition ownership. The reconciler owns Ready and Progressing and writes Degraded and
CapacityConstrained from what the children show (a stuck pod, an unplaceable replica). The
autoscaler owns MetricsAvailable and SLOMet, and sets two problems only it can see:

- Degraded=True, reason ``BackendErrors``: the model itself fails (Triton's BACKEND reason)
  beyond the error objective; more replicas would not help, so none are added for it;
- CapacityConstrained=True, reason ``ReplicaLimitReached``: the SLO is breached and the
  reservation (or the pools) allow no more replicas.

Each side leaves the other's True alone: the autoscaler clears only its own reasons, and the
reconciler does not overwrite them with its "nothing wrong" False (`keep_autoscaler_conditions`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from dedicap.api import conditions as c
from dedicap.api.models import AutoscalingSpec
from dedicap.decide import policy, policy_tokens
from dedicap.decide.policy import Decision, ObservationWindow, PolicyConfig, PolicyState
from dedicap.metrics.snapshot import MetricsSnapshot

BACKEND_ERRORS = "BackendErrors"
REPLICA_LIMIT = "ReplicaLimitReached"
AUTOSCALER_REASONS: Mapping[str, frozenset[str]] = {
    c.DEGRADED: frozenset({BACKEND_ERRORS}),
    c.CAPACITY_CONSTRAINED: frozenset({REPLICA_LIMIT}),
}
NO_PROMETHEUS = "NoPrometheusConfigured"
EVALUATION_FAILED = "EvaluationFailed"

# Reason codes of decisions (metric label, status.lastScale.reason, Event reason suffix): a
# fixed set, never free text.
CODE_METRICS_UNAVAILABLE = "MetricsUnavailable"
CODE_LATENCY = "LatencyAboveSLO"
CODE_TOKEN_LATENCY = "TokenLatencyAboveSLO"  # a streaming LLM's TTFT or TPOT
CODE_KV_CACHE = "KVCacheSaturated"  # the replicas' KV caches are (or would be) full
CODE_REJECTED = "RequestsRejected"
CODE_DEMAND_UP = "DemandRising"
CODE_DEMAND_DOWN = "DemandFalling"
CODE_BELOW_MIN = "BelowMinReplicas"
CODE_ABOVE_LIMIT = "AboveReplicaLimit"
CODE_LIMIT = "ReplicaLimitReached"
CODE_STABILIZING = "Stabilizing"
CODE_STEADY = "Steady"


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _or_none(x: float, digits: int) -> float | None:
    return round(max(x, 0.0), digits) if _finite(x) else None


# ----------------------------------------------------------------------------- status fields


def observed_status(snap: MetricsSnapshot, now: datetime) -> dict[str, Any]:
    """`status.observed`. Unknown figures are null (a merge patch removes them), so the P95 and
    ERRORS columns go blank rather than show numbers that are no longer true."""
    if not snap.available:
        return {"p95Ms": None, "latencyMs": None, "errorRatio": None, "requestRate": None,
                "sampledAt": c.timestamp(now)}
    latency = _or_none(snap.latency_quantile_ms, 1)
    ratio = snap.error_ratio
    return {
        "p95Ms": latency if snap.percentile == 95 else None,
        "latencyMs": latency,
        # No traffic: nothing failed.
        "errorRatio": round(min(max(ratio, 0.0), 1.0), 4) if _finite(ratio) else 0.0,
        "requestRate": _or_none(snap.request_rate, 2),
        "sampledAt": c.timestamp(now),
    }


def capacity_status(config: PolicyConfig, state: PolicyState, ready: int,
                    gpus_per_replica: int, now: datetime) -> dict[str, Any] | None:
    """`status.requestCapacity` of a request-level model: what the policy plans a replica to
    serve within the SLO and what that follows from, once learned from traffic; None before
    (a configured prior is not a measurement) and for a streaming LLM (`tokenCapacity`)."""
    if config.tokens is not None:
        return None
    sat = policy.saturated_at_slo(config, state, now.timestamp())
    per_replica = policy.capacity_per_replica(config, state, now.timestamp())
    if sat is None or per_replica is None or not (_finite(sat) and _finite(per_replica)):
        return None
    max_batch = policy.model_max_batch(config, state)
    source = "" if max_batch is None else "spec" if config.max_batch_size else "learned"
    return {
        "requestsPerSecondPerReplica": round(per_replica, 2),
        "requestsPerSecondPerGPU": round(per_replica / max(gpus_per_replica, 1), 2),
        "requestsPerSecond": round(per_replica * max(ready, 0), 2),
        "saturatedRequestsPerSecond": round(sat, 2),
        "plannedShare": round(min(max(policy.planned_utilization(config, state, now.timestamp()),
                                        0.0), 1.0), 3),
        "maxBatchSize": max_batch,
        "maxBatchSource": source,
        "measuredAt": c.timestamp(now),
    }


def max_batch_understated(declared_rows: int | None, snap: MetricsSnapshot) -> str | None:
    """Why spec.model.maxBatchSize is below the model's real max batch, or None: Triton never
    runs a batch of more rows than the model's max_batch_size, so batches averaging more than
    the declared one prove it too low (the autoscaler then plans a replica for less than it
    serves, at GPUs' cost). The message does not carry the measured figure, so that repeats
    aggregate into one Event."""
    rows = snap.mean_batch_size
    if not declared_rows or not snap.available or not _finite(rows):
        return None
    if rows <= 1.02 * declared_rows + 0.1:  # two rates over one window: a little noise
        return None
    return (f"Triton's batches averaged more rows than spec.model.maxBatchSize "
            f"({declared_rows}) allows: the model's max batch is larger, and each replica is "
            "planned for less than it serves; set it to the model's max_batch_size")


def last_scale(now: datetime, before: int, after: int, code: str, message: str
               ) -> dict[str, Any]:
    return {"time": c.timestamp(now), "fromReplicas": before, "toReplicas": after,
            "reason": code, "message": message[:4096]}


def reason_code(decision: Decision, window: ObservationWindow, config: PolicyConfig) -> str:
    """A short code for what drove the decision (from its figures, not its words)."""
    if window.timestamp is None:
        if decision.direction == "up":
            return CODE_BELOW_MIN
        if decision.direction == "down":
            return CODE_ABOVE_LIMIT
        return CODE_METRICS_UNAVAILABLE
    offered = window.request_rate if _finite(window.request_rate) else 0.0
    rejected = offered > 0 and window.rejected_rate / offered > config.error_rate_max
    slow = (_finite(window.latency_quantile_ms)
            and window.latency_quantile_ms > config.latency_target_ms)
    slow_tokens = kv = False
    if config.tokens is not None and window.tokens is not None:
        slow_tokens = bool(policy_tokens.token_breaches(config.tokens, window.tokens))
        # a full cache now, or (going up) a demand beyond what the replicas' caches hold
        kv = policy_tokens.kv_saturated(window.tokens, window.ready_replicas) or (
            decision.direction == "up" and policy_tokens.memory_bound(
                config.tokens, decision.state.tokens, window.tokens))
    limited = decision.limited_by or ""
    if decision.direction == "up":
        if window.current_replicas < config.min_replicas:
            return CODE_BELOW_MIN
        if slow_tokens:
            return CODE_TOKEN_LATENCY
        if kv:
            return CODE_KV_CACHE
        if slow:
            return CODE_LATENCY
        if rejected:
            return CODE_REJECTED
        return CODE_DEMAND_UP
    if decision.direction == "down":
        if limited in ("max replicas", "reservation limit"):
            return CODE_ABOVE_LIMIT
        return CODE_DEMAND_DOWN
    if limited == "reservation limit" and (slow or slow_tokens or kv or rejected):
        return CODE_LIMIT
    if limited in ("scale-down stabilization", "observing for one stabilization window first",
                   "latency near target: no scale-down"):
        return CODE_STABILIZING
    return CODE_STEADY


# ----------------------------------------------------------------------------- conditions


def metrics_condition(snap: MetricsSnapshot) -> c.Cond:
    if snap.available:
        # No sample age in the message: it would change at every evaluation, and with it the
        # status (one write per evaluation for nothing).
        return c.Cond(c.METRICS_AVAILABLE, "True", "MetricsFresh",
                      f"{snap.pods_reporting} pod(s) reporting fresh metrics")
    return c.Cond(c.METRICS_AVAILABLE, "False", snap.problem or "MetricsUnavailable",
                  f"{snap.reason}; replicas are held (never scaled down blind)")


def slo_verdict(snap: MetricsSnapshot, spec: AutoscalingSpec,
                token_problems: Sequence[str] = ()) -> tuple[bool | None, str, str]:
    """(met, reason, message); met is None when the metrics cannot tell. `token_problems` are
    a streaming LLM's broken token objectives, in words (status/tokens.py)."""
    if not snap.available:
        return None, "MetricsUnavailable", "no fresh metrics: " + (snap.reason or snap.problem)
    latency, errors = spec.slo.latency, spec.slo.error_rate
    offered = snap.request_rate
    if not (_finite(offered) and offered > 0):
        return True, "NoTraffic", "no requests in the window"
    problems: list[str] = list(token_problems)
    reason = "TokenLatencyAboveTarget" if problems else "WithinSLO"
    if latency is not None and _finite(snap.latency_quantile_ms) \
            and snap.latency_quantile_ms > latency.target_ms:
        problems.append(f"p{latency.percentile:g} {snap.latency_quantile_ms:.0f}ms > "
                        f"{latency.target_ms:g}ms")
        reason = "LatencyAboveTarget" if reason == "WithinSLO" else reason
    ratio = snap.error_ratio
    if errors is not None and _finite(ratio) and ratio > errors.maximum:
        failures = ", ".join(f"{k} {v:.2f}/s" for k, v in sorted(snap.failure_rates.items())
                             if v > 0)
        problems.append(f"error ratio {ratio:.2%} > {errors.maximum:.2%} ({failures})")
        reason = "ErrorRatioAboveMax" if reason == "WithinSLO" else "LatencyAndErrorsAboveSLO"
    lat_text = (f"p{snap.percentile:g} {snap.latency_quantile_ms:.0f}ms"
                if _finite(snap.latency_quantile_ms) else "no successful request")
    if problems:
        return False, reason, "; ".join(problems) + f" at {offered:.1f} req/s"
    return True, reason, (f"{lat_text}, error ratio {max(ratio, 0.0):.2%} "
                          f"at {offered:.1f} req/s")


def slo_condition(snap: MetricsSnapshot, spec: AutoscalingSpec,
                  token_problems: Sequence[str] = ()) -> c.Cond:
    met, reason, message = slo_verdict(snap, spec, token_problems)
    status: c.Status = "Unknown" if met is None else ("True" if met else "False")
    return c.Cond(c.SLO_MET, status, reason, message)


def backend_problem(snap: MetricsSnapshot, config: PolicyConfig) -> str | None:
    """Why the model itself is failing, or None. BACKEND errors must exceed the error budget and
    be the main failure reason (a queue that times out is a capacity problem, not this)."""
    if not snap.available or not (_finite(snap.request_rate) and snap.request_rate > 0):
        return None
    backend = snap.backend_failure_rate
    ratio = backend / snap.request_rate
    if ratio > config.error_rate_max and backend >= snap.rejected_rate:
        return (f"{ratio:.1%} of requests fail inside the model (Triton reason BACKEND, "
                f"{backend:.2f}/s of {snap.request_rate:.2f}/s): more replicas will not fix "
                "this, so none are added for it; check the model and its logs")
    return None


def autoscaler_conditions(previous: Sequence[Mapping[str, Any]], snap: MetricsSnapshot,
                          spec: AutoscalingSpec, config: PolicyConfig, decision: Decision,
                          limit_explanation: str, token_problems: Sequence[str] = ()
                          ) -> list[c.Cond]:
    """MetricsAvailable and SLOMet, plus Degraded / CapacityConstrained where the autoscaler
    has something to say and the reconciler does not (see the module docstring)."""
    out = [metrics_condition(snap), slo_condition(snap, spec, token_problems)]
    if not snap.available:
        return out  # nothing new is known about the model or the capacity: leave them
    met, _, slo_message = slo_verdict(snap, spec, token_problems)

    def owned(type_: str, new: c.Cond) -> None:
        old = c.find(previous, type_)
        ours = AUTOSCALER_REASONS[type_]
        if new.is_true:
            # the reconciler's own problem (a stuck pod, an unplaceable replica) comes first
            if old is None or old.get("status") != "True" or old.get("reason") in ours:
                out.append(new)
        elif old is not None and old.get("status") == "True" and old.get("reason") in ours:
            out.append(new)

    backend = backend_problem(snap, config)
    owned(c.DEGRADED, c.Cond(c.DEGRADED, "True", BACKEND_ERRORS, backend) if backend
          else c.Cond(c.DEGRADED, "False", "AsExpected", "no model errors beyond the budget"))
    constrained = met is False and decision.limited_by == "reservation limit"
    owned(c.CAPACITY_CONSTRAINED,
          c.Cond(c.CAPACITY_CONSTRAINED, "True", REPLICA_LIMIT, (
              f"the SLO is breached ({slo_message}) and {decision.replicas} replica(s) is all "
              f"the reservation and pools allow now (maxReplicas {config.max_replicas})"
              + (f": {limit_explanation}" if limit_explanation else "")))
          if constrained else
          c.Cond(c.CAPACITY_CONSTRAINED, "False", "Placed",
                 "the replicas the autoscaler wants fit the reservation and pools"))
    return out


def evaluation_failed(error: str) -> c.Cond:
    """MetricsAvailable=Unknown after an evaluation that broke (a bug, a bad value): replicas
    are held, and the next evaluation tries again."""
    return c.Cond(c.METRICS_AVAILABLE, "Unknown", EVALUATION_FAILED,
                  f"the last evaluation failed ({error[:300]}); replicas are held")


def keep_autoscaler_conditions(previous: Sequence[Mapping[str, Any]], updates: Sequence[c.Cond],
                               autoscaling: bool) -> list[c.Cond]:
    """The reconciler's condition updates, minus the False ones that would erase a problem the
    autoscaler reported (while autoscaling is on; without it nobody would clear them)."""
    if not autoscaling:
        return list(updates)
    out = []
    for cond in updates:
        old = c.find(previous, cond.type)
        if (not cond.is_true and cond.type in AUTOSCALER_REASONS and old is not None
                and old.get("status") == "True"
                and old.get("reason") in AUTOSCALER_REASONS[cond.type]):
            continue
        out.append(cond)
    return out
