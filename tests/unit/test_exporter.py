"""The operator's own metrics: private registries, per-ModelDeployment series and their removal,
and the /metrics endpoint on 127.0.0.1."""

from __future__ import annotations

import math
import time
import urllib.request

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dedicap.metrics.exporter import OperatorMetrics, PoolUsage, serve

MD = {"namespace": "acme", "modeldeployment": "bot"}


def value(m: OperatorMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def series_of(m: OperatorMetrics, namespace: str, name: str) -> list[str]:
    return sorted(f"{s.name}{sorted(s.labels.items())}" for family in m.registry.collect()
                  for s in family.samples
                  if s.labels.get("namespace") == namespace
                  and s.labels.get("modeldeployment") == name)


def fill(m: OperatorMetrics, namespace: str = "acme", name: str = "bot") -> None:
    m.record_decision(namespace, name, "up", "LatencyAboveTarget")
    m.record_decision(namespace, name, "up", "LatencyAboveTarget")
    m.record_decision(namespace, name, "hold", "MetricsUnavailable")
    m.set_modeldeployment(namespace, name, desired_replicas=3, ready_replicas=2,
                          metrics_available=True, latency_ms=250.0, latency_target_ms=200.0,
                          percentile=95, error_ratio=0.01, request_rate=42.0,
                          max_batch_size=32, max_queue_delay_s=0.002)
    m.set_pools(namespace, name, {
        "h100": PoolUsage(replicas=2, gpus=2, gpu_hours=10.5, hourly_cost=5.0),
        "a10g": PoolUsage(replicas=1, gpus=1, gpu_hours=1.0, hourly_cost=1.0),
    })


def test_registries_are_independent() -> None:
    a, b = OperatorMetrics(), OperatorMetrics()
    fill(a)
    assert value(a, "dedicap_scale_decisions_total", **MD, direction="up",
                 reason="LatencyAboveTarget") == 2
    assert value(b, "dedicap_scale_decisions_total", **MD, direction="up",
                 reason="LatencyAboveTarget") is None


def test_modeldeployment_gauges() -> None:
    m = OperatorMetrics()
    fill(m)
    assert value(m, "dedicap_modeldeployment_desired_replicas", **MD) == 3
    assert value(m, "dedicap_modeldeployment_ready_replicas", **MD) == 2
    assert value(m, "dedicap_modeldeployment_metrics_available", **MD) == 1
    assert value(m, "dedicap_modeldeployment_observed_latency_seconds", **MD,
                 percentile="95", quantile="0.95") == 0.25
    assert value(m, "dedicap_modeldeployment_latency_target_seconds", **MD,
                 percentile="95", quantile="0.95") == 0.2
    assert value(m, "dedicap_modeldeployment_error_ratio", **MD) == 0.01
    assert value(m, "dedicap_modeldeployment_request_rate", **MD) == 42
    assert value(m, "dedicap_modeldeployment_gpus", **MD, pool="h100") == 2
    assert value(m, "dedicap_modeldeployment_gpu_hours", **MD, pool="h100") == 10.5
    assert value(m, "dedicap_modeldeployment_hourly_cost", **MD, pool="a10g") == 1
    assert value(m, "dedicap_modeldeployment_replicas", **MD, pool="a10g") == 1


def test_the_spec_batching_is_exported_and_withdrawn_when_the_spec_drops_it() -> None:
    m = OperatorMetrics()
    fill(m)
    assert value(m, "dedicap_modeldeployment_max_batch_size", **MD) == 32
    assert value(m, "dedicap_modeldeployment_max_queue_delay_seconds", **MD) == 0.002
    m.set_modeldeployment("acme", "bot", desired_replicas=3, ready_replicas=3,
                          metrics_available=True, latency_ms=90.0, latency_target_ms=200.0,
                          percentile=95, error_ratio=0.0, request_rate=40.0)
    # not given any more: absent, not a stale 32 (nor a 0 a planner would take for a batch)
    assert value(m, "dedicap_modeldeployment_max_batch_size", **MD) is None
    assert value(m, "dedicap_modeldeployment_max_queue_delay_seconds", **MD) is None


def test_unknown_values_are_nan_not_zero() -> None:
    m = OperatorMetrics()
    m.set_modeldeployment("acme", "bot", desired_replicas=1, ready_replicas=1,
                          metrics_available=False, latency_ms=math.nan, latency_target_ms=200,
                          percentile=99, error_ratio=math.nan, request_rate=math.nan)
    latency = value(m, "dedicap_modeldeployment_observed_latency_seconds", **MD,
                    percentile="99", quantile="0.99")
    assert latency is not None and math.isnan(latency)
    assert value(m, "dedicap_modeldeployment_metrics_available", **MD) == 0


def test_changed_percentile_and_pools_drop_their_old_series() -> None:
    m = OperatorMetrics()
    fill(m)
    m.set_modeldeployment("acme", "bot", desired_replicas=3, ready_replicas=3,
                          metrics_available=True, latency_ms=100, latency_target_ms=300,
                          percentile=99, error_ratio=0, request_rate=1)
    assert value(m, "dedicap_modeldeployment_observed_latency_seconds", **MD,
                 percentile="95", quantile="0.95") is None
    assert value(m, "dedicap_modeldeployment_observed_latency_seconds", **MD,
                 percentile="99", quantile="0.99") == 0.1
    m.set_pools("acme", "bot", {"h100": PoolUsage(replicas=3, gpus=3, gpu_hours=11,
                                                  hourly_cost=7.5)})
    assert value(m, "dedicap_modeldeployment_gpus", **MD, pool="a10g") is None
    assert value(m, "dedicap_modeldeployment_gpus", **MD, pool="h100") == 3


def test_forget_removes_every_series_of_a_deleted_modeldeployment_only() -> None:
    m = OperatorMetrics()
    fill(m, "acme", "bot")
    fill(m, "acme", "other")
    m.record_query_error("PrometheusUnavailable")
    # 2 decision label sets x (_total, _created) + 11 gauges + 4 pool gauges x 2 pools.
    assert len(series_of(m, "acme", "bot")) == 2 * 2 + 11 + 4 * 2
    m.forget("acme", "bot")
    assert series_of(m, "acme", "bot") == []
    assert len(series_of(m, "acme", "other")) == 2 * 2 + 11 + 4 * 2
    # Operator-wide series stay; forgetting twice (or something never seen) is harmless.
    assert value(m, "dedicap_prometheus_query_errors_total", kind="PrometheusUnavailable") == 1
    m.forget("acme", "bot")
    m.forget("nobody", "nothing")


def test_decision_direction_is_checked() -> None:
    with pytest.raises(ValueError, match="direction"):
        OperatorMetrics().record_decision("acme", "bot", "sideways", "X")


def test_evaluation_histogram_times_a_block() -> None:
    m = OperatorMetrics()
    with m.time_evaluation():
        time.sleep(0.02)
    assert value(m, "dedicap_evaluation_duration_seconds_count") == 1
    total = value(m, "dedicap_evaluation_duration_seconds_sum")
    assert total is not None and 0.02 <= total < 1.0
    assert value(m, "dedicap_evaluation_duration_seconds_bucket", le="0.01") == 0
    assert value(m, "dedicap_evaluation_duration_seconds_bucket", le="0.025") is not None


def test_served_over_http_on_localhost() -> None:
    m = OperatorMetrics()
    fill(m)
    server, thread = serve(m, port=0, addr="127.0.0.1")
    try:
        assert thread.is_alive() and server.server_address[0] == "127.0.0.1"
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "dedicap_scale_decisions" in families
    assert all(name.startswith("dedicap_") for name in families)
    gpus = [s for s in families["dedicap_modeldeployment_gpus"].samples
            if s.labels == {**MD, "pool": "h100"}]
    assert [s.value for s in gpus] == [2.0]


def test_api_requests_are_counted_by_resource_not_object() -> None:
    from dedicap.metrics.exporter import api_resource

    assert api_resource("/apis/apps/v1/namespaces/t/deployments/chat-h100") == "deployments"
    assert api_resource("/apis/dedicap.dev/v1alpha1/namespaces/t/modeldeployments/chat/status"
                        ) == "modeldeployments/status"
    assert api_resource("/apis/dedicap.dev/v1alpha1/gpupools/h100/status") == "gpupools/status"
    assert api_resource("/api/v1/namespaces/t") == "namespaces"
    assert api_resource("/api/v1/namespaces/t/events?x=1") == "events"
    assert api_resource("/api/v1/pods") == "pods"
    assert api_resource("/version") == "version"
    m = OperatorMetrics()
    m.observe_api("PATCH", "/apis/apps/v1/namespaces/t/deployments/a", 200)
    m.observe_api("PATCH", "/apis/apps/v1/namespaces/u/deployments/b", 200)
    text = generate_latest(m.registry).decode()
    assert ('dedicap_api_requests_total{code="200",resource="deployments",verb="PATCH"} 2.0'
            in text)
