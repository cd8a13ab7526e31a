"""Metrics: PromQL for Triton's signals, a Prometheus HTTP API client, the per-ModelDeployment
snapshot the autoscaler reads, and the operator's own metrics. Imports nothing else of dedicap."""

from dedicap.metrics.exporter import OperatorMetrics, PoolUsage, serve
from dedicap.metrics.prometheus import (
    ENV_URL,
    PrometheusClient,
    PrometheusError,
    PrometheusUnavailable,
    QueryError,
    Sample,
    resolve_url,
)
from dedicap.metrics.snapshot import MetricsSnapshot, observe

__all__ = [
    "ENV_URL",
    "MetricsSnapshot",
    "OperatorMetrics",
    "PoolUsage",
    "PrometheusClient",
    "PrometheusError",
    "PrometheusUnavailable",
    "QueryError",
    "Sample",
    "observe",
    "resolve_url",
    "serve",
]
