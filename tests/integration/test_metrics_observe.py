"""observe() against a real Prometheus scraping real tritonserver processes (file-based discovery
with the pod's namespace, name and ModelDeployment labels), in a private run dir on free ports."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from dedicap.metrics import promql
from dedicap.metrics.prometheus import PrometheusClient
from dedicap.metrics.snapshot import (
    PROBLEM_NO_PODS,
    PROBLEM_UNAVAILABLE,
    MetricsSnapshot,
    observe,
)
from dedicap_local import prometheus, triton

pytestmark = pytest.mark.integration

NAMESPACE, MD = "acme", "bot"
WINDOW_S = 20.0  # ten scrapes at the local stack's 2 s interval
SCRAPE_S = 2.0
ROWS = 2  # rows per request: Triton counts 2 inferences for each request
SPEC = triton.ModelSpec(name=MD, max_batch_size=8, base_ms=15, per_item_ms=2)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("metrics-run")
    yield path
    for handle in triton.list_instances(path):
        triton.stop_triton(path, handle.name)
    prometheus.stop(path)


def publish(run_dir: Path, handle: triton.TritonHandle, pod: str) -> None:
    prometheus.write_target(run_dir, handle.name, handle.metrics_address,
                            {"namespace": NAMESPACE, "pod": pod, "modeldeployment": MD})


class Load:
    """Closed-loop clients calling one replica until stopped; counts outcomes."""

    def __init__(self, handle: triton.TritonHandle, clients: int = 3, pause_s: float = 0.05):
        self.handle, self.pause_s = handle, pause_s
        self.ok = self.failed = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(clients)]

    def _loop(self) -> None:
        client = httpclient.InferenceServerClient(self.handle.http_address, network_timeout=30)
        data = np.ones((ROWS, 4), dtype=np.float32)
        while not self._stop.is_set():
            inp = httpclient.InferInput("INPUT", list(data.shape), "FP32")
            inp.set_data_from_numpy(data)
            try:
                client.infer(self.handle.model, [inp])
                outcome = "ok"
            except Exception:  # InferenceServerException: the model failed
                outcome = "failed"
            with self._lock:
                if outcome == "ok":
                    self.ok += 1
                else:
                    self.failed += 1
            time.sleep(self.pause_s)
        client.close()

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)


def wait_snapshot(client: PrometheusClient, check: Callable[[MetricsSnapshot], bool],
                  what: str, timeout: float = 60.0) -> MetricsSnapshot:
    deadline = time.monotonic() + timeout
    snap = None
    while time.monotonic() < deadline:
        snap = observe(client, NAMESPACE, MD, WINDOW_S, time.time(), scrape_interval_s=SCRAPE_S)
        if check(snap):
            return snap
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what}; last snapshot: {snap}")


def test_observe_a_real_triton_through_a_real_prometheus(run_dir: Path) -> None:
    url = prometheus.start(run_dir, port=triton.free_port())
    client = PrometheusClient(url, timeout_s=5, retries=1, backoff_s=0.1)

    # Nothing published yet: no pod reports.
    snap = observe(client, NAMESPACE, MD, WINDOW_S, time.time(), scrape_interval_s=SCRAPE_S)
    assert not snap.available and snap.problem == PROBLEM_NO_PODS, snap

    # Every signal's expression evaluates on the real server (empty results are fine here).
    for signal, expr in promql.signals(promql.Target(NAMESPACE, MD), WINDOW_S, 95).items():
        assert isinstance(client.query(expr), list), signal

    healthy = triton.start_triton(run_dir, "acme.bot-0", SPEC)
    publish(run_dir, healthy, "bot-0")
    with Load(healthy) as load:
        # A window entirely under load: its first scrapes, half before the load began, would
        # pair counters from different moments (a 2-row request's batch looking smaller).
        loaded_since = time.time()
        snap = wait_snapshot(
            client, lambda s: s.available and s.request_rate > 0
            and math.isfinite(s.latency_quantile_ms) and math.isfinite(s.mean_latency_ms)
            and s.queried_at - loaded_since >= WINDOW_S + 2 * SCRAPE_S,
            "a served, timed request rate over a window of load")
    assert load.ok > 0 and load.failed == 0
    assert snap.pods_reporting == 1 and snap.pods_down == 0
    assert snap.timestamp is not None and snap.queried_at - snap.timestamp < 3 * SCRAPE_S
    assert snap.request_rate == pytest.approx(snap.success_rate + snap.failure_rate)
    assert snap.failure_rate == 0 and snap.error_ratio == 0
    assert set(snap.pod_latency_quantile_ms) == {"bot-0"}
    assert snap.latency_quantile_ms == snap.pod_latency_quantile_ms["bot-0"]
    # One request of 2 rows takes at least the model's service time for a batch of 2; the
    # duration counters are per successful request, the compute time is the batch's.
    floor_ms = SPEC.base_ms + SPEC.per_item_ms * ROWS
    assert floor_ms * 0.9 <= snap.mean_compute_ms <= snap.mean_latency_ms < 2000
    assert floor_ms * 0.9 <= snap.latency_quantile_ms < 5000
    assert 0 <= snap.mean_queue_ms < snap.mean_latency_ms
    # nv_inference_count counts rows and exec_count batches: every request brings 2 rows.
    assert ROWS <= snap.mean_batch_size <= SPEC.max_batch_size
    assert snap.mean_request_rows == pytest.approx(ROWS)
    assert snap.queue_depth >= 0 and math.isnan(snap.gpu_utilization)  # no GPU metrics on CPU

    # A second pod whose model fails every batch: BACKEND failures, and its latency summary (which
    # counts only successes) stays NaN, so it must not enter the combined quantile.
    failing = triton.start_triton(
        run_dir, "acme.bot-1", triton.ModelSpec(name=MD, base_ms=1, per_item_ms=0, fail_ratio=1.0))
    publish(run_dir, failing, "bot-1")
    with Load(healthy, clients=1), Load(failing, clients=1) as broken:
        snap = wait_snapshot(
            client, lambda s: s.available and s.pods_reporting == 2
            and s.backend_failure_rate > 0 and math.isfinite(s.latency_quantile_ms),
            "BACKEND failures from the second pod")
    assert broken.failed > 0 and broken.ok == 0
    assert snap.rejected_rate == 0 and 0 < snap.error_ratio < 1
    assert set(snap.pod_request_rate) == {"bot-0", "bot-1"}
    assert set(snap.pod_latency_quantile_ms) == {"bot-0"}

    # Targets withdrawn: Prometheus marks their series stale and no pod reports any more.
    for handle in (healthy, failing):
        prometheus.remove_target(run_dir, handle.name)
    snap = wait_snapshot(client, lambda s: s.problem == PROBLEM_NO_PODS, "no pod reporting",
                         timeout=30)
    assert not snap.available and "no Triton pod" in snap.reason

    # Prometheus stopped: not available, with the reason, and no exception.
    prometheus.stop(run_dir)
    started = time.monotonic()
    snap = observe(client, NAMESPACE, MD, WINDOW_S, time.time(), scrape_interval_s=SCRAPE_S)
    assert time.monotonic() - started < client.worst_case_s() + 1
    assert not snap.available and snap.problem == PROBLEM_UNAVAILABLE
    assert url.removeprefix("http://") in snap.reason and "unavailable" in snap.reason
