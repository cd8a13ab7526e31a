"""A real tritonserver (from the nvidia-pytriton wheel) started by the local stack's helper, scraped
by a real Prometheus through file-based discovery. Prometheus runs in a private run dir on a free
port, so these tests never collide with a running stack."""

from __future__ import annotations

import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from dedicap_local import loadgen, procs, prometheus, triton
from testkit import prom_query as query

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("run")
    yield path
    for handle in triton.list_instances(path):
        triton.stop_triton(path, handle.name)


@pytest.fixture(scope="module")
def prom(run_dir: Path) -> Iterator[str]:
    url = prometheus.start(run_dir, port=triton.free_port())
    yield url
    prometheus.stop(run_dir)


def wait_value(prom_url: str, promql: str, predicate: object, timeout: float = 30.0) -> float:
    """Poll an instant query until its single value satisfies `predicate`; return the value."""
    deadline = time.monotonic() + timeout
    last: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        last = query(prom_url, promql)
        if len(last) == 1:
            value = float(last[0]["value"][1])  # type: ignore[index]
            if predicate(value):  # type: ignore[operator]
                return value
        time.sleep(1)
    raise AssertionError(f"{promql} never satisfied the check; last result {last}")


def infer(handle: triton.TritonHandle, rows: int = 1) -> np.ndarray:
    client = httpclient.InferenceServerClient(handle.http_address, network_timeout=30)
    data = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    inp = httpclient.InferInput("INPUT", list(data.shape), "FP32")
    inp.set_data_from_numpy(data)
    result = client.infer(handle.model, [inp])
    out = result.as_numpy("OUTPUT")
    assert out is not None
    return out


def infer_outcome(handle: triton.TritonHandle) -> str:
    try:
        infer(handle)
        return "ok"
    except Exception as err:  # the client raises InferenceServerException with the status
        return str(err)


def test_tritonserver_serves_and_prometheus_scrapes_it(run_dir: Path, prom: str) -> None:
    handle = triton.start_triton(run_dir, "acme.pod-a", triton.ModelSpec(name="support-bot"))
    try:
        assert procs.http_ok(f"{handle.http_url}/v2/health/ready")
        assert handle.model_ready()
        # Starting it again is harmless: the same process and ports come back.
        again = triton.start_triton(run_dir, "acme.pod-a", "support-bot")
        assert again == handle and again.pid == handle.pid

        out = infer(handle, rows=2)
        np.testing.assert_array_equal(out, np.arange(8, dtype=np.float32).reshape(2, 4))
        for _ in range(4):
            infer(handle)

        prometheus.write_target(run_dir, "acme.pod-a", handle.metrics_address,
                                {"namespace": "acme", "pod": "pod-a",
                                 "modeldeployment": "support-bot"})
        value = wait_value(
            prom,
            'sum(nv_inference_request_success{namespace="acme",pod="pod-a",'
            'modeldeployment="support-bot",model="support-bot"})',
            lambda v: v >= 5)
        assert value == 5
    finally:
        pid = handle.pid
        assert triton.stop_triton(run_dir, handle.name)
        prometheus.remove_target(run_dir, "acme.pod-a")
    assert pid is not None and triton.find_triton(run_dir, handle.name) is None
    for port in (handle.http_port, handle.grpc_port, handle.metrics_port):
        assert not procs.port_open(port)


def test_failing_model_counts_backend_failures(run_dir: Path, prom: str) -> None:
    handle = triton.start_triton(run_dir, "acme.failing",
                                 triton.ModelSpec(name="broken", base_ms=1, per_item_ms=0))
    try:
        assert infer_outcome(handle) == "ok"
        # Switched live through the control file: the running model starts failing.
        triton.set_behaviour(handle, fail_ratio=1.0)
        time.sleep(1.0)
        outcomes = [infer_outcome(handle) for _ in range(6)]
        assert all("simulated model failure" in o for o in outcomes), outcomes
        prometheus.write_target(run_dir, "acme.failing", handle.metrics_address,
                                {"namespace": "acme", "pod": "failing"})
        failed = wait_value(
            prom, 'nv_inference_request_failure{pod="failing",reason="BACKEND"}', lambda v: v >= 6)
        assert failed == 6
        ok = wait_value(prom, 'nv_inference_request_success{pod="failing"}', lambda v: True)
        assert ok == 1
    finally:
        triton.stop_triton(run_dir, handle.name)
        prometheus.remove_target(run_dir, "acme.failing")


def test_queue_timeout_counts_rejected(run_dir: Path) -> None:
    # One request at a time, 300 ms each, and a 100 ms queue timeout: of a burst of 6, the first
    # runs and the others wait too long.
    spec = triton.ModelSpec(name="slow", max_batch_size=1, base_ms=300, per_item_ms=0,
                            queue_timeout_us=100_000)
    handle = triton.start_triton(run_dir, "acme.slow", spec)
    try:
        with ThreadPoolExecutor(6) as pool:
            outcomes = list(pool.map(lambda _: infer_outcome(handle), range(6)))
        rejected = [o for o in outcomes if "timeout" in o.lower()]
        assert outcomes.count("ok") >= 1 and len(rejected) >= 3, outcomes
        text = urllib.request.urlopen(handle.metrics_url, timeout=5).read().decode()
        line = next(x for x in text.splitlines()
                    if x.startswith("nv_inference_request_failure") and 'reason="REJECTED"' in x)
        assert float(line.rsplit(" ", 1)[1]) == len(rejected)
    finally:
        triton.stop_triton(run_dir, handle.name)


def test_latency_grows_with_load(run_dir: Path) -> None:
    # 4 rows per 60 ms at best: about 67 req/s. Open-loop Poisson load below and above that.
    spec = triton.ModelSpec(name="replica", max_batch_size=4, base_ms=20, per_item_ms=10)
    handle = triton.start_triton(run_dir, "acme.replica", spec)
    endpoints = loadgen.Endpoints([{"grpc": handle.grpc_address, "model": "replica"}])
    try:
        light = loadgen.run_profile(endpoints, [loadgen.Step(3, 10)], seed=1, timeout_s=20)
        heavy = loadgen.run_profile(endpoints, [loadgen.Step(3, 120)], seed=2, timeout_s=20)
    finally:
        triton.stop_triton(run_dir, handle.name)
    assert light.failed == 0 and heavy.failed == 0
    p95_light = loadgen.percentile(light.latencies, 95)
    p95_heavy = loadgen.percentile(heavy.latencies, 95)
    assert p95_light < 0.15, light.summary()
    # The queue grows by ~50 req/s for 3 s: the last requests wait for ~40 batches.
    assert p95_heavy > 4 * p95_light, (light.summary(), heavy.summary())
