"""The operator's own metrics (``dedicap_*``), in a registry of their own.

Each :class:`OperatorMetrics` owns a ``CollectorRegistry`` (not prometheus-client's global one), so
tests and several operators in one process never collide. The controller records into it;
:func:`serve` exposes it over HTTP.

Per-ModelDeployment series carry ``namespace`` (the tenant) and ``modeldeployment``; the
per-pool ones add ``pool``. :meth:`OperatorMetrics.forget` removes every series of a deleted
ModelDeployment, so dashboards do not show ghosts and the exposition does not grow forever.

When Prometheus scrapes the operator through a ServiceMonitor, set ``honorLabels: true``:
otherwise the target's own ``namespace`` label (the operator's) renames ours to
``exported_namespace``.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.context_managers import Timer
from prometheus_client.metrics import MetricWrapperBase

MD_LABELS = ("namespace", "modeldeployment")
POOL_LABELS = (*MD_LABELS, "pool")
DIRECTIONS = ("up", "down", "hold")
# Evaluation = read Prometheus + decide + apply; a slow Prometheus shows up in the high buckets.
EVALUATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
QUERY_ERROR_KINDS = ("PrometheusUnavailable", "QueryError")
# The share of time slices that must meet the latency target when the operator is not told
# otherwise (`dedicap run --slo-latency-objective`); the API has no field for it.
DEFAULT_LATENCY_OBJECTIVE = 0.99


@dataclass(frozen=True)
class PoolUsage:
    """What one ModelDeployment uses in one pool."""

    replicas: int
    gpus: float
    gpu_hours: float  # accumulated since creation
    hourly_cost: float  # of the GPUs held now, at the pool's price


@dataclass(frozen=True)
class ReservationFigures:
    """One CapacityReservation's GPUs."""

    pool: str
    admitted: bool
    committed: int  # spec.gpus
    used: int  # reserved GPUs in use
    burst: int  # borrowed GPUs in use
    headroom: int  # reserved GPUs idle (0 when not in effect)


POOL_STATES = ("total", "allocatable", "allocated", "reserved", "free")
RESERVATION_STATES = ("committed", "used", "burst", "headroom")


class OperatorMetrics:
    """The operator's metrics and the registry that holds them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.scale_decisions = Counter(
            "dedicap_scale_decisions", "Autoscaling decisions, by direction and reason code.",
            [*MD_LABELS, "direction", "reason"], registry=r)
        self.evaluation_seconds = Histogram(
            "dedicap_evaluation_duration_seconds",
            "Time of one autoscaling evaluation (read metrics, decide, apply).",
            buckets=EVALUATION_BUCKETS, registry=r)
        self.query_errors = Counter(
            "dedicap_prometheus_query_errors",
            "Prometheus queries that failed, by kind (PrometheusUnavailable, QueryError).",
            ["kind"], registry=r)
        for kind in QUERY_ERROR_KINDS:  # present at 0, so rates and increases see the first
            self.query_errors.labels(kind)
        self.build_info = Gauge(
            "dedicap_build_info", "Always 1; the operator's version (absent: no operator "
            "is scraped).", ["version"], registry=r)
        self.build_info.labels(_version()).set(1)
        self.desired_replicas = Gauge(
            "dedicap_modeldeployment_desired_replicas", "Replicas asked for (spec.replicas).",
            MD_LABELS, registry=r)
        self.ready_replicas = Gauge(
            "dedicap_modeldeployment_ready_replicas", "Replicas ready to serve.",
            MD_LABELS, registry=r)
        # `quantile` is the percentile as Triton's summaries spell it (95 -> 0.95), so rules can
        # join these on Triton's series.
        self.latency_seconds = Gauge(
            "dedicap_modeldeployment_observed_latency_seconds",
            "Observed request latency at the SLO percentile (max over pods); NaN when idle.",
            [*MD_LABELS, "percentile", "quantile"], registry=r)
        self.latency_target_seconds = Gauge(
            "dedicap_modeldeployment_latency_target_seconds",
            "The latency SLO's target at its percentile (+Inf without a latency objective).",
            [*MD_LABELS, "percentile", "quantile"], registry=r)
        self.latency_objective = Gauge(
            "dedicap_modeldeployment_latency_objective_ratio",
            "Share of time slices whose slowest pod must meet the latency target.",
            MD_LABELS, registry=r)
        self.error_ratio_objective = Gauge(
            "dedicap_modeldeployment_error_ratio_objective",
            "The error-ratio objective (spec.autoscaling.slo.errorRate.max); NaN without one.",
            MD_LABELS, registry=r)
        self.error_ratio = Gauge(
            "dedicap_modeldeployment_error_ratio",
            "Failed / offered requests over the evaluation window.", MD_LABELS, registry=r)
        self.request_rate = Gauge(
            "dedicap_modeldeployment_request_rate",
            "Offered requests per second over the evaluation window.", MD_LABELS, registry=r)
        self.metrics_available = Gauge(
            "dedicap_modeldeployment_metrics_available",
            "1 when the last evaluation had fresh metrics, 0 when it held blind.",
            MD_LABELS, registry=r)
        # The model's batching as its spec declares it: Triton's own metrics do not carry it,
        # and `dedicap plan --prometheus` replays a deployment's history with it.
        self.max_batch_size = Gauge(
            "dedicap_modeldeployment_max_batch_size",
            "The model's max_batch_size (spec.model.maxBatchSize, in rows); absent when the "
            "spec does not give it.", MD_LABELS, registry=r)
        self.max_queue_delay_seconds = Gauge(
            "dedicap_modeldeployment_max_queue_delay_seconds",
            "The dynamic batcher's max_queue_delay (spec.model.maxQueueDelayMicroseconds); "
            "absent when the spec does not give it.", MD_LABELS, registry=r)
        self.pool_replicas = Gauge(
            "dedicap_modeldeployment_replicas", "Replicas placed in a pool.",
            POOL_LABELS, registry=r)
        self.pool_gpus = Gauge(
            "dedicap_modeldeployment_gpus", "GPUs held in a pool.", POOL_LABELS, registry=r)
        self.pool_gpu_hours = Gauge(
            "dedicap_modeldeployment_gpu_hours",
            ("GPU-hours held in a pool as counted by this operator process (it starts again with "
             "the process; status.cost.gpuHours carries the total)."),
            POOL_LABELS, registry=r)
        self.pool_hourly_cost = Gauge(
            "dedicap_modeldeployment_hourly_cost",
            "Cost per hour of the GPUs held now in a pool, at the pool's price.",
            POOL_LABELS, registry=r)
        self.gpupool_gpus = Gauge(
            "dedicap_gpupool_gpus",
            "GPUs of a pool by state: total (node capacity), allocatable (Ready nodes), "
            "allocated (bound pods), reserved (admitted reservations in effect), free.",
            ["pool", "state"], registry=r)
        self.reservation_gpus = Gauge(
            "dedicap_reservation_gpus",
            "GPUs of a CapacityReservation by state: committed, used (reserved, in use), burst "
            "(borrowed, in use), headroom (reserved, idle).",
            ["pool", "reservation", "state"], registry=r)
        self.reservation_admitted = Gauge(
            "dedicap_reservation_admitted",
            "1 when the reservation is admitted (its pool has room for it), else 0.",
            ["pool", "reservation"], registry=r)
        self.reconcile_seconds = Histogram(
            "dedicap_reconcile_duration_seconds",
            "Time of one ModelDeployment reconcile (read the view, place, render, apply, "
            "status).", buckets=EVALUATION_BUCKETS, registry=r)
        self.api_requests = Counter(
            "dedicap_api_requests",
            "Requests to the Kubernetes API by verb, resource (and subresource) and answer (code "
            "0: no answer, e.g. the API server is down).", ["verb", "resource", "code"],
            registry=r)
        self.watch_restarts = Counter(
            "dedicap_watch_restarts",
            "Watches of the shared cache started again, by kind and cause (relist: listed "
            "again; reconnect: resumed after a broken connection).", ["kind", "cause"],
            registry=r)
        self.events_pending = Gauge(
            "dedicap_events_pending",
            "Events handed to the poster and not yet posted: the explanations' backlog (a "
            "burst of changes raises it; it drains in seconds).", registry=r)
        self._md_metrics: tuple[MetricWrapperBase, ...] = (
            self.desired_replicas, self.ready_replicas, self.error_ratio, self.request_rate,
            self.metrics_available, self.latency_objective, self.error_ratio_objective,
            self.max_batch_size, self.max_queue_delay_seconds)
        self._pool_metrics: tuple[Gauge, ...] = (
            self.pool_replicas, self.pool_gpus, self.pool_gpu_hours, self.pool_hourly_cost)
        # Label values written per ModelDeployment, so forget() can remove exactly those.
        self._lock = threading.Lock()
        self._decisions: dict[tuple[str, str], set[tuple[str, str]]] = {}
        self._percentiles: dict[tuple[str, str], set[str]] = {}
        self._pools: dict[tuple[str, str], set[str]] = {}
        self._gpupools: set[str] = set()
        self._reservations: dict[str, str] = {}  # reservation -> pool label written

    def record_decision(self, namespace: str, modeldeployment: str, direction: str,
                        reason: str) -> None:
        """Count one decision. `reason` must be a short code from a fixed set (e.g.
        ``LatencyAboveTarget``, ``Stabilizing``, ``MetricsUnavailable``), never free text: every
        distinct value is a new series."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        key = (namespace, modeldeployment)
        with self._lock:
            self._decisions.setdefault(key, set()).add((direction, reason))
        self.scale_decisions.labels(namespace, modeldeployment, direction, reason).inc()

    def record_query_error(self, kind: str) -> None:
        self.query_errors.labels(kind).inc()

    def observe_reconcile(self, seconds: float) -> None:
        self.reconcile_seconds.observe(seconds)

    def observe_api(self, method: str, path: str, status: int) -> None:
        """`Kube.observers` hook: count one API request, by the resource its path names (not
        the path: it names objects, and every distinct value would be a new series)."""
        self.api_requests.labels(method, api_resource(path), str(status)).inc()

    def time_evaluation(self) -> Timer:
        """A context manager that observes one evaluation's duration."""
        return self.evaluation_seconds.time()


    def set_modeldeployment(self, namespace: str, modeldeployment: str, *, desired_replicas: int,
                            ready_replicas: int, metrics_available: bool,
                            latency_ms: float, latency_target_ms: float, percentile: float,
                            error_ratio: float, request_rate: float,
                            latency_objective: float = DEFAULT_LATENCY_OBJECTIVE,
                            error_ratio_objective: float = math.nan,
                            max_batch_size: int | None = None,
                            max_queue_delay_s: float | None = None) -> None:
        """Set the ModelDeployment's gauges after an evaluation (NaN = not known; the spec's
        batching, None = not given, removes its series)."""
        key = (namespace, modeldeployment)
        p = f"{percentile:g}"
        q = f"{percentile / 100:g}"
        with self._lock:
            old = self._percentiles.get(key, set()) - {p}
            self._percentiles[key] = {p}
        for stale in old:  # the SLO's percentile changed: drop the old series
            for gauge in (self.latency_seconds, self.latency_target_seconds):
                _remove(gauge, namespace, modeldeployment, stale, _quantile(stale))
        self.desired_replicas.labels(*key).set(desired_replicas)
        self.ready_replicas.labels(*key).set(ready_replicas)
        self.metrics_available.labels(*key).set(1 if metrics_available else 0)
        self.latency_seconds.labels(*key, p, q).set(latency_ms / 1000.0)
        self.latency_target_seconds.labels(*key, p, q).set(latency_target_ms / 1000.0)
        self.latency_objective.labels(*key).set(latency_objective)
        self.error_ratio_objective.labels(*key).set(error_ratio_objective)
        self.error_ratio.labels(*key).set(error_ratio)
        self.request_rate.labels(*key).set(request_rate)
        for gauge, value in ((self.max_batch_size, max_batch_size),
                             (self.max_queue_delay_seconds, max_queue_delay_s)):
            if value is None:
                _remove(gauge, *key)
            else:
                gauge.labels(*key).set(value)

    def set_pools(self, namespace: str, modeldeployment: str,
                  usage: Mapping[str, PoolUsage]) -> None:
        """Replace the per-pool series: pools not in `usage` any more are removed."""
        key = (namespace, modeldeployment)
        with self._lock:
            gone = self._pools.get(key, set()) - set(usage)
            self._pools[key] = set(usage)
        for pool in gone:
            for gauge in self._pool_metrics:
                _remove(gauge, namespace, modeldeployment, pool)
        for pool, u in usage.items():
            self.pool_replicas.labels(*key, pool).set(u.replicas)
            self.pool_gpus.labels(*key, pool).set(u.gpus)
            self.pool_gpu_hours.labels(*key, pool).set(u.gpu_hours)
            self.pool_hourly_cost.labels(*key, pool).set(u.hourly_cost)

    def set_gpupools(self, figures: Mapping[str, Mapping[str, int]]) -> None:
        """Replace every pool's series: `{pool: {state: gpus}}` (states of POOL_STATES);
        pools that are gone lose their series."""
        with self._lock:
            gone = self._gpupools - set(figures)
            self._gpupools = set(figures)
        for pool in gone:
            for state in POOL_STATES:
                _remove(self.gpupool_gpus, pool, state)
        for pool, states in figures.items():
            for state in POOL_STATES:
                self.gpupool_gpus.labels(pool, state).set(states.get(state, 0))

    def set_reservations(self, figures: Mapping[str, ReservationFigures]) -> None:
        """Replace every reservation's series; deleted reservations lose theirs."""
        with self._lock:
            old = dict(self._reservations)
            self._reservations = {name: f.pool for name, f in figures.items()}
        for name, pool in old.items():
            if name not in figures or figures[name].pool != pool:
                _remove(self.reservation_admitted, pool, name)
                for state in RESERVATION_STATES:
                    _remove(self.reservation_gpus, pool, name, state)
        for name, f in figures.items():
            self.reservation_admitted.labels(f.pool, name).set(1 if f.admitted else 0)
            values = {"committed": f.committed, "used": f.used, "burst": f.burst,
                      "headroom": f.headroom}
            for state, value in values.items():
                self.reservation_gpus.labels(f.pool, name, state).set(value)

    def forget(self, namespace: str, modeldeployment: str) -> None:
        """Remove every series of a deleted ModelDeployment."""
        key = (namespace, modeldeployment)
        with self._lock:
            decisions = self._decisions.pop(key, set())
            percentiles = self._percentiles.pop(key, set())
            pools = self._pools.pop(key, set())
        for metric in self._md_metrics:
            _remove(metric, *key)
        for direction, reason in decisions:
            _remove(self.scale_decisions, *key, direction, reason)
        for p in percentiles:
            for gauge in (self.latency_seconds, self.latency_target_seconds):
                _remove(gauge, *key, p, _quantile(p))
        for pool in pools:
            for gauge in self._pool_metrics:
                _remove(gauge, *key, pool)


def api_resource(path: str) -> str:
    """The resource (and subresource) an API path addresses: `/apis/apps/v1/namespaces/x/
    deployments/y` -> `deployments`, `.../modeldeployments/y/status` ->
    `modeldeployments/status`, `/api/v1/namespaces/x` -> `namespaces`, `/version` -> `version`."""
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    if parts[:1] == ["api"]:
        parts = parts[2:]
    elif parts[:1] == ["apis"]:
        parts = parts[3:]
    if parts[:1] == ["namespaces"] and len(parts) > 2:
        parts = parts[2:]
    if not parts:
        return "other"
    return f"{parts[0]}/{parts[2]}" if len(parts) > 2 else parts[0]


def _quantile(percentile: str) -> str:
    return f"{float(percentile) / 100:g}"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dedicap")
    except PackageNotFoundError:
        return "unknown"


def _remove(metric: MetricWrapperBase, *labelvalues: str) -> None:
    # Older prometheus-client versions raise KeyError for a series never set.
    with contextlib.suppress(KeyError):
        metric.remove(*labelvalues)


def serve(metrics: OperatorMetrics, port: int, addr: str = "0.0.0.0"
          ) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``/metrics`` on `addr`:`port` from a daemon thread (port 0: the kernel picks).

    Returns the server (``server.server_port`` is the bound port; ``server.shutdown()`` stops
    it) and its thread.
    """
    server, thread = start_http_server(port, addr=addr, registry=metrics.registry)
    return server, thread
