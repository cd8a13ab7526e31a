"""The autoscaler's pure edge: spec -> PolicyConfig, snapshot -> ObservationWindow, the policy's
answer -> status, conditions and reason codes, condition ownership and the peering verdict."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dedicap.api import conditions as c
from dedicap.api.models import AutoscalingSpec
from dedicap.controller import autoscale as asc
from dedicap.controller.peering import peering_allows
from dedicap.controller.policy_config import AutoscalerDefaults, evaluation_interval, policy_config
from dedicap.controller.status import autoscaling as st
from dedicap.decide.cluster import PodInfo, parse_pod
from dedicap.decide.policy import Decision, ObservationWindow, PolicyConfig, PolicyState, decide
from dedicap.metrics.snapshot import MetricsSnapshot

NOW = 1_700_000_000.0
WHEN = datetime.fromtimestamp(NOW, UTC)


def spec(**extra: Any) -> AutoscalingSpec:
    raw = {"minReplicas": 2, "maxReplicas": 8,
           "slo": {"latency": {"percentile": 95, "targetMs": 200}, "errorRate": {"max": 0.01}}}
    raw.update(extra)
    return AutoscalingSpec.model_validate(raw)


def snap(**fields: Any) -> MetricsSnapshot:
    base: dict[str, Any] = dict(
        available=True, queried_at=NOW, window_s=60.0, percentile=95.0, timestamp=NOW - 2,
        request_rate=100.0, success_rate=100.0, failure_rates={}, latency_quantile_ms=120.0,
        mean_batch_size=6.0, mean_request_rows=2.0, mean_compute_ms=30.0, queue_depth=1.0,
        pods_reporting=3)
    base.update(fields)
    return MetricsSnapshot(**base)


def decision(replicas: int = 3, direction: str = "hold", limited_by: str | None = None
             ) -> Decision:
    return Decision(replicas=replicas, direction=direction,  # type: ignore[arg-type]
                    reason="r", state=PolicyState(), limited_by=limited_by)


# ----------------------------------------------------------------------------- policy config


def test_policy_config_maps_the_slo_and_bounds() -> None:
    cfg = policy_config(spec(), AutoscalerDefaults(startup_delay_s=10, scrape_interval_s=2))
    assert (cfg.min_replicas, cfg.max_replicas) == (2, 8)
    assert (cfg.latency_percentile, cfg.latency_target_ms, cfg.error_rate_max) == (95, 200, 0.01)
    assert cfg.startup_delay_s == 10 and cfg.staleness_s == 6
    assert cfg.evaluation_interval_s == 15  # the operator's default
    # no behaviour given: the policy's own limits
    assert cfg.behavior == PolicyConfig().behavior


def test_behavior_bounds_one_decision() -> None:
    s = spec(behavior={"evaluationIntervalSeconds": 5,
                       "scaleUp": {"maxStepReplicas": 2},
                       "scaleDown": {"stabilizationWindowSeconds": 30, "maxStepPercent": 50}})
    cfg = policy_config(s, AutoscalerDefaults())
    assert evaluation_interval(s, AutoscalerDefaults()) == 5 == cfg.evaluation_interval_s
    b = cfg.behavior
    # only maxStepReplicas: the percentage must not widen it
    assert (b.scale_up_max_replicas, b.scale_up_max_percent, b.scale_up_period_s) == (2, 0, 5)
    assert (b.scale_down_max_replicas, b.scale_down_max_percent) == (1, 50)
    assert (b.scale_down_stabilization_s, b.scale_down_period_s) == (30, 5)
    assert b.scale_up_stabilization_s == PolicyConfig().behavior.scale_up_stabilization_s


def test_step_limit_is_honoured_by_the_policy() -> None:
    s = spec(minReplicas=1, behavior={"evaluationIntervalSeconds": 5,
                                      "scaleUp": {"maxStepReplicas": 1}})
    cfg = policy_config(s, AutoscalerDefaults(startup_delay_s=10))
    window = ObservationWindow(timestamp=NOW, request_rate=1000.0, success_rate=1000.0,
                               latency_quantile_ms=900.0, queue_depth=500.0, ready_replicas=1,
                               current_replicas=1, mean_batch_size=4, mean_compute_ms=50)
    d = decide(cfg, window, PolicyState(), NOW)
    assert d.replicas == 2  # one step, not the ten the demand asks for


def test_latency_only_and_errors_only_slos() -> None:
    lat = policy_config(spec(slo={"latency": {"targetMs": 300}}), AutoscalerDefaults())
    assert lat.latency_target_ms == 300 and lat.error_rate_max == PolicyConfig().error_rate_max
    err = policy_config(spec(slo={"errorRate": {"max": 0.05}}), AutoscalerDefaults())
    assert math.isinf(err.latency_target_ms) and err.error_rate_max == 0.05


# ----------------------------------------------------------------------------- inputs


def pod(phase: str, ready: bool, deleting: bool = False) -> PodInfo:
    meta: dict[str, Any] = {"name": "p", "labels": {"dedicap.dev/modeldeployment": "m"}}
    if deleting:
        meta["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    parsed = parse_pod({"metadata": meta, "status": {"phase": phase, "conditions": [
        {"type": "Ready", "status": "True" if ready else "False"}]}})
    assert parsed is not None
    return parsed


def test_replica_counts() -> None:
    pods = [pod("Running", True), pod("Running", True), pod("Running", False),
            pod("Pending", False), pod("Running", True, deleting=True), pod("Failed", False)]
    assert asc.replica_counts(pods) == (2, 2)


def test_window_from_a_fresh_snapshot() -> None:
    w = asc.observation_window(snap(failure_rates={"REJECTED": 2.0, "BACKEND": 1.0}),
                              ready=3, starting=1, current=4)
    assert w.timestamp == NOW - 2 and w.request_rate == 100 and w.rejected_rate == 2
    assert w.backend_failure_rate == 1 and w.latency_quantile_ms == 120
    assert w.mean_batch_size == 3.0  # 6 rows per batch / 2 rows per request
    assert (w.ready_replicas, w.starting_replicas, w.current_replicas) == (3, 1, 4)


def test_unavailable_snapshot_gives_no_timestamp_so_the_policy_holds() -> None:
    bad = snap(available=False, problem="StaleMetrics", reason="old")
    w = asc.observation_window(bad, ready=3, starting=0, current=3)
    assert w.timestamp is None and math.isnan(w.request_rate)
    cfg = policy_config(spec(minReplicas=1), AutoscalerDefaults())
    d = decide(cfg, w, PolicyState(), NOW)
    assert d.replicas == 3 and d.direction == "hold"
    assert st.reason_code(d, w, cfg) == st.CODE_METRICS_UNAVAILABLE


# ----------------------------------------------------------------------------- status fields


def test_observed_status() -> None:
    o = st.observed_status(snap(failure_rates={"BACKEND": 1.0}), WHEN)
    assert o == {"p95Ms": 120.0, "latencyMs": 120.0, "errorRatio": 0.01, "requestRate": 100.0,
                 "sampledAt": "2023-11-14T22:13:20Z"}
    idle = st.observed_status(snap(request_rate=0.0, latency_quantile_ms=math.nan), WHEN)
    assert idle["p95Ms"] is None and idle["errorRatio"] == 0.0 and idle["requestRate"] == 0.0
    p99 = st.observed_status(snap(percentile=99.0), WHEN)
    assert p99["p95Ms"] is None and p99["latencyMs"] == 120.0
    down = st.observed_status(snap(available=False), WHEN)
    assert down["p95Ms"] is None and down["errorRatio"] is None


def test_reason_codes() -> None:
    cfg = policy_config(spec(), AutoscalerDefaults())
    w = asc.observation_window(snap(latency_quantile_ms=500.0), ready=3, starting=0, current=3)
    assert st.reason_code(decision(4, "up"), w, cfg) == st.CODE_LATENCY
    rej = asc.observation_window(snap(failure_rates={"REJECTED": 5.0}), ready=3, starting=0,
                                current=3)
    assert st.reason_code(decision(4, "up"), rej, cfg) == st.CODE_REJECTED
    low = asc.observation_window(snap(), ready=1, starting=0, current=1)
    assert st.reason_code(decision(2, "up"), low, cfg) == st.CODE_BELOW_MIN
    ok = asc.observation_window(snap(), ready=3, starting=0, current=3)
    assert st.reason_code(decision(4, "up"), ok, cfg) == st.CODE_DEMAND_UP
    assert st.reason_code(decision(2, "down"), ok, cfg) == st.CODE_DEMAND_DOWN
    assert st.reason_code(decision(2, "down", "reservation limit"), ok, cfg) == \
        st.CODE_ABOVE_LIMIT
    assert st.reason_code(decision(3, "hold", "reservation limit"), w, cfg) == st.CODE_LIMIT
    assert st.reason_code(decision(3, "hold", "scale-down stabilization"), ok, cfg) == \
        st.CODE_STABILIZING
    assert st.reason_code(decision(3, "hold"), ok, cfg) == st.CODE_STEADY


# ----------------------------------------------------------------------------- conditions


def conds_by_type(conds: list[c.Cond]) -> dict[str, c.Cond]:
    return {x.type: x for x in conds}


def test_slo_condition() -> None:
    s = spec()
    assert st.slo_condition(snap(), s).status == "True"
    slow = st.slo_condition(snap(latency_quantile_ms=250.0), s)
    assert (slow.status, slow.reason) == ("False", "LatencyAboveTarget")
    failing = st.slo_condition(snap(failure_rates={"BACKEND": 5.0}), s)
    assert (failing.status, failing.reason) == ("False", "ErrorRatioAboveMax")
    assert "BACKEND 5.00/s" in failing.message
    both = st.slo_condition(snap(latency_quantile_ms=250.0, failure_rates={"REJECTED": 5.0}), s)
    assert both.reason == "LatencyAndErrorsAboveSLO"
    idle = st.slo_condition(snap(request_rate=0.0, latency_quantile_ms=math.nan), s)
    assert (idle.status, idle.reason) == ("True", "NoTraffic")
    unknown = st.slo_condition(snap(available=False, reason="down"), s)
    assert unknown.status == "Unknown"


def test_metrics_condition_carries_the_problem() -> None:
    ok = st.metrics_condition(snap())
    assert (ok.status, ok.reason) == ("True", "MetricsFresh")
    bad = st.metrics_condition(snap(available=False, problem="PrometheusUnavailable",
                                    reason="Prometheus at http://p unavailable"))
    assert (bad.status, bad.reason) == ("False", "PrometheusUnavailable")
    assert "http://p" in bad.message and "held" in bad.message


def test_backend_errors_degrade_rejections_do_not() -> None:
    cfg = policy_config(spec(), AutoscalerDefaults())
    conds = conds_by_type(st.autoscaler_conditions(
        [], snap(failure_rates={"BACKEND": 10.0}), spec(), cfg, decision(), ""))
    assert conds[c.DEGRADED].status == "True" and conds[c.DEGRADED].reason == st.BACKEND_ERRORS
    rej = conds_by_type(st.autoscaler_conditions(
        [], snap(failure_rates={"REJECTED": 10.0, "BACKEND": 2.0}), spec(), cfg, decision(), ""))
    assert c.DEGRADED not in rej  # capacity, not the model: nothing of the autoscaler's to say


def test_capacity_constrained_only_when_breached_at_the_limit() -> None:
    cfg = policy_config(spec(), AutoscalerDefaults())
    breached = snap(latency_quantile_ms=900.0)
    at_limit = decision(2, "hold", "reservation limit")
    conds = conds_by_type(st.autoscaler_conditions([], breached, spec(), cfg, at_limit,
                                                   "wanted 8, placed 2"))
    cc = conds[c.CAPACITY_CONSTRAINED]
    assert cc.status == "True" and cc.reason == st.REPLICA_LIMIT and "placed 2" in cc.message
    # Within the SLO at the limit: nothing to report.
    calm = conds_by_type(st.autoscaler_conditions([], snap(), spec(), cfg, at_limit, ""))
    assert c.CAPACITY_CONSTRAINED not in calm
    # Breached but more replicas fit: not constrained.
    free = conds_by_type(st.autoscaler_conditions([], breached, spec(), cfg, decision(3, "up"),
                                                  ""))
    assert c.CAPACITY_CONSTRAINED not in free


def test_autoscaler_clears_only_its_own_and_leaves_the_reconcilers() -> None:
    cfg = policy_config(spec(), AutoscalerDefaults())
    mine = [{"type": c.CAPACITY_CONSTRAINED, "status": "True", "reason": st.REPLICA_LIMIT},
            {"type": c.DEGRADED, "status": "True", "reason": st.BACKEND_ERRORS}]
    conds = conds_by_type(st.autoscaler_conditions(mine, snap(), spec(), cfg, decision(), ""))
    assert conds[c.CAPACITY_CONSTRAINED].status == "False"
    assert conds[c.DEGRADED].status == "False"
    theirs = [{"type": c.CAPACITY_CONSTRAINED, "status": "True", "reason": "Unschedulable"},
              {"type": c.DEGRADED, "status": "True", "reason": "ReplicasFailing"}]
    breached = snap(latency_quantile_ms=900.0, failure_rates={"BACKEND": 50.0})
    conds = conds_by_type(st.autoscaler_conditions(
        theirs, breached, spec(), cfg, decision(2, "hold", "reservation limit"), ""))
    assert c.CAPACITY_CONSTRAINED not in conds and c.DEGRADED not in conds
    # Without fresh metrics only MetricsAvailable and SLOMet are written.
    down = st.autoscaler_conditions(mine, snap(available=False), spec(), cfg, decision(), "")
    assert {x.type for x in down} == {c.METRICS_AVAILABLE, c.SLO_MET}


def test_reconciler_keeps_the_autoscalers_problems() -> None:
    previous = [{"type": c.DEGRADED, "status": "True", "reason": st.BACKEND_ERRORS},
                {"type": c.CAPACITY_CONSTRAINED, "status": "True", "reason": "Unschedulable"}]
    updates = [c.Cond(c.READY, "True", "ReplicasReady", ""),
               c.Cond(c.DEGRADED, "False", "AsExpected", ""),
               c.Cond(c.CAPACITY_CONSTRAINED, "False", "Placed", "")]
    kept = [x.type for x in st.keep_autoscaler_conditions(previous, updates, True)]
    assert kept == [c.READY, c.CAPACITY_CONSTRAINED]  # its own Unschedulable it may clear
    assert st.keep_autoscaler_conditions(previous, updates, False) == updates
    stuck = [c.Cond(c.DEGRADED, "True", "ReplicasFailing", "")]
    assert st.keep_autoscaler_conditions(previous, stuck, True) == stuck


# ----------------------------------------------------------------------------- peering


def peer(priority: int, age_s: float = 1.0, lifetime: int = 30) -> dict[str, Any]:
    return {"priority": priority, "lifetime": lifetime,
            "lastseen": (WHEN - timedelta(seconds=age_s)).isoformat()}


@pytest.mark.parametrize(("peers", "allowed"), [
    ({"me": peer(5)}, True),
    ({"me": peer(5), "low": peer(3)}, True),
    ({"me": peer(5), "high": peer(9)}, False),
    ({"me": peer(5), "twin": peer(5)}, False),  # kopf pauses both
    ({"me": peer(5), "high": peer(9, age_s=60)}, True),  # dead peers do not count
    ({"other": peer(3)}, False),  # not announced yet: wait
    ({}, False),
])
def test_peering_follows_kopfs_rule(peers: dict[str, Any], allowed: bool) -> None:
    assert peering_allows(peers, 5, WHEN) is allowed
