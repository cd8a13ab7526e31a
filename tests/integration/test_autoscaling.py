"""Live SLO autoscaling on the real local stack: load -> Triton -> Prometheus -> operator ->
Deployment -> scheduler -> pod -> Triton, with nothing simulated but the GPUs and the model's
service time.

The operator (`dedicap run`, a real process) serves only this module's namespaces (`dcp-as-*`)
with a peering object of its own, reads the stack's Prometheus (scrape every 2 s), evaluates
every 5 s and assumes replicas start in 10 s. The model is slowed down through the data plane's
simulation settings so that one replica saturates near 29 req/s (batches of at most 4, 100 ms +
10 ms per request): loads stay small enough for a 2-core machine while every replica is a real
tritonserver.
"""

from __future__ import annotations

import itertools
import json
import math
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import faults
from dedicap_local import dataplane, loadgen, prometheus
from testkit import OperatorProcess, kget, live_autoscaler, release_operator_state, wait_for

pytestmark = pytest.mark.integration

EVAL_S = 5
# One replica: t(b) = 100 + 10*b ms per batch of b <= 4 -> at most 4/0.14 = 28.6 req/s.
SLOW_MODEL = {"max_batch_size": 4, "base_ms": 100, "per_item_ms": 10}
TARGET_MS = 400.0


@pytest.fixture(scope="module")
def operator(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    op = live_autoscaler(stack, tmp_path_factory.mktemp("autoscaling"), "dcp-as-*",
                         f"dedicap-as-{uuid.uuid4().hex[:6]}", EVAL_S)
    op.start()
    yield op
    op.stop()
    print(f"operator log: {op.log}")
    release_operator_state(stack, op.peering)


@pytest.fixture
def namespace(stack: Any, operator: OperatorProcess) -> Iterator[str]:
    name = f"dcp-as-{uuid.uuid4().hex[:6]}"
    stack.kubectl("create", "namespace", name)
    yield name
    set_sim(stack, name, "bot", None)
    stack.kubectl("delete", "namespace", name, "--wait=false", check=False)


def set_sim(stack: Any, namespace: str, md: str, settings: dict[str, Any] | None) -> None:
    """Simulation settings of one ModelDeployment's replicas (None: remove them)."""
    sim = dataplane.read_sim(stack.run_dir)
    mds = sim.setdefault("modeldeployments", {})
    if settings is None:
        mds.pop(f"{namespace}/{md}", None)
    else:
        mds[f"{namespace}/{md}"] = settings
    dataplane.write_sim(stack.run_dir, sim)


def apply_md(stack: Any, namespace: str, *, min_replicas: int, max_replicas: int,
             replicas: int | None = None, pools: tuple[str, ...] = ("h100",),
             scale_down: dict[str, int] | None = None, error_max: float = 0.01,
             name: str = "bot", model: dict[str, Any] | None = None) -> None:
    behavior: dict[str, Any] = {"evaluationIntervalSeconds": EVAL_S}
    if scale_down:
        behavior["scaleDown"] = scale_down
    doc: dict[str, Any] = {
        "apiVersion": "dedicap.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"name": name, "repository": "s3://models/triton", "backend": "python",
                      **(model or {})},
            "resources": {"gpusPerReplica": 1, "gpuMemoryGiB": 20},
            "placement": {"pools": list(pools)},
            "autoscaling": {
                "minReplicas": min_replicas, "maxReplicas": max_replicas,
                "slo": {"latency": {"percentile": 95, "targetMs": TARGET_MS},
                        "errorRate": {"max": error_max}},
                "behavior": behavior,
            },
        },
    }
    if replicas is not None:
        doc["spec"]["replicas"] = replicas
    stack.kubectl("apply", "-f", "-", input=json.dumps(doc))


def md(stack: Any, namespace: str, name: str = "bot") -> dict[str, Any]:
    return dict(kget(stack, "md", name, "-n", namespace))


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions", [])
                 if c["type"] == type_), {})


def spec_replicas(stack: Any, namespace: str) -> int:
    """The replicas asked for: spec.replicas, or minReplicas while it is unset."""
    spec = md(stack, namespace)["spec"]
    return int(spec.get("replicas", spec["autoscaling"]["minReplicas"]))


def last_scale(stack: Any, namespace: str, name: str = "bot") -> dict[str, Any]:
    """The ModelDeployment once status.lastScale records the scale now in spec.replicas: the
    operator patches the scale subresource first and writes the status right after."""
    return wait_for(lambda: (o := md(stack, namespace, name)) and (
        ls := o.get("status", {}).get("lastScale")) and ls.get("toReplicas") == o["spec"][
        "replicas"] and o, "status.lastScale for the new count", timeout=20)


def md_columns(stack: Any, namespace: str, name: str = "bot") -> dict[str, str]:
    """`kubectl get md` as the user sees it, by column (empty cells stay empty)."""
    header, *rows = stack.kubectl("get", "md", name, "-n", namespace).stdout.splitlines()
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    bounds = [*starts[1:], None]
    return {header[a:b].strip(): rows[0][a:b].strip() for a, b in zip(starts, bounds,
                                                                      strict=True)}


def events(stack: Any, namespace: str, reason: str | None = None) -> list[dict[str, Any]]:
    items = kget(stack, "events", "-n", namespace,
                 "--field-selector", "involvedObject.kind=ModelDeployment")["items"]
    return [e for e in items if reason is None or e["reason"] == reason]


def endpoints(stack: Any, namespace: str, name: str = "bot") -> list[dict[str, str]]:
    return dataplane.read_endpoints(stack.run_dir, namespace, name)


def pods(stack: Any, namespace: str, name: str = "bot") -> list[dict[str, Any]]:
    items = kget(stack, "pods", "-n", namespace, "-l", f"dedicap.dev/modeldeployment={name}")
    return [p for p in items["items"] if not p["metadata"].get("deletionTimestamp")]


def serving(stack: Any, namespace: str, count: int) -> bool:
    """`count` replicas: pods Running and a scraped tritonserver behind each."""
    running = [p for p in pods(stack, namespace) if p["status"].get("phase") == "Running"]
    return len(running) == count and len(endpoints(stack, namespace)) == count


def one_slow_replica(stack: Any, namespace: str, max_replicas: int,
                     model: dict[str, Any] | None = None) -> None:
    """An autoscaled ModelDeployment of the slowed model from one replica, serving and
    reporting fresh metrics (`model`: more of spec.model)."""
    set_sim(stack, namespace, "bot", SLOW_MODEL)
    apply_md(stack, namespace, min_replicas=1, max_replicas=max_replicas, model=model)
    wait_for(lambda: serving(stack, namespace, 1), "one serving replica", timeout=90)
    wait_for(lambda: metrics_fresh(stack, namespace), "MetricsAvailable=True", timeout=60)


def metrics_fresh(stack: Any, namespace: str) -> dict[str, Any] | None:
    obj = md(stack, namespace)
    return obj if condition(obj, "MetricsAvailable").get("status") == "True" else None


def test_load_above_capacity_scales_up_and_p95_returns_under_target(
        stack: Any, namespace: str, operator: OperatorProcess) -> None:
    set_sim(stack, namespace, "bot", SLOW_MODEL)
    apply_md(stack, namespace, min_replicas=1, max_replicas=4,
             scale_down={"stabilizationWindowSeconds": 300})
    wait_for(lambda: serving(stack, namespace, 1), "one serving replica", timeout=90)
    wait_for(lambda: metrics_fresh(stack, namespace), "MetricsAvailable=True", timeout=60)
    # ~1.6x what one replica serves at best, and far beyond what it serves within 400 ms.
    load = loadgen.Background(loadgen.endpoints_for(namespace, "bot", stack.run_dir),
                              [loadgen.Step(45, 45), loadgen.Step(45, 45), loadgen.Step(40, 45)],
                              seed=1, timeout_s=30, max_in_flight=2000)
    t0 = time.monotonic()
    try:
        breach = wait_for(lambda: (o := md(stack, namespace)) and condition(o, "SLOMet").get(
            "status") == "False" and o, "SLOMet=False under load", timeout=60)
        t_breach = time.monotonic() - t0
        p95_before = breach["status"]["observed"]["p95Ms"]
        wait_for(lambda: spec_replicas(stack, namespace) >= 2, "a scale-up",
                 timeout=6 * EVAL_S)
        t_up = time.monotonic() - t0
        scaled = last_scale(stack, namespace)["status"]["lastScale"]
        assert 1 <= scaled["fromReplicas"] < scaled["toReplicas"], scaled
        assert scaled["reason"] in ("LatencyAboveSLO", "DemandRising"), scaled
        assert [e for e in events(stack, namespace, "ScaledUp")]
        # The new pods get real Triton processes, scraped by Prometheus.
        wanted = wait_for(lambda: (n := spec_replicas(stack, namespace)) >= 2 and serving(
            stack, namespace, n) and n, "every wanted replica serving", timeout=60)
        t_serving = time.monotonic() - t0
        # p95 comes back under the target (Triton's summaries look back a while; the queue
        # built during the overload drains first).
        recovered = wait_for(lambda: (o := md(stack, namespace)) and (
            p := (o["status"].get("observed") or {}).get("p95Ms")) is not None
            and p < TARGET_MS and condition(o, "SLOMet").get("status") == "True" and o,
            "p95 under the target again", timeout=100, interval=2)
        t_recovered = time.monotonic() - t0
        # `kubectl get md` shows the live columns.
        cols = md_columns(stack, namespace)
        assert float(cols["P95"]) < TARGET_MS and cols["SLO"] == "True", cols
        assert 0 <= float(cols["ERRORS"]) <= 0.01, cols
    finally:
        overload = load.stop().summary()
    final = spec_replicas(stack, namespace)
    assert 2 <= final <= 4
    # The same load against the scaled fleet: what the clients see is within the SLO.
    after = loadgen.run_profile(loadgen.endpoints_for(namespace, "bot", stack.run_dir),
                                [loadgen.Step(15, 45)], seed=2, timeout_s=30).summary()
    assert after["failed"] == 0 and after["p95_ms"] is not None
    assert after["p95_ms"] < TARGET_MS, after
    print(json.dumps({
        "breach_s": round(t_breach, 1), "scale_up_s": round(t_up, 1),
        "serving_s": round(t_serving, 1), "recovered_s": round(t_recovered, 1),
        "p95_before_ms": p95_before, "p95_after_ms": recovered["status"]["observed"]["p95Ms"],
        "replicas_wanted": wanted, "replicas_final": final,
        "client_p95_overload_ms": overload["p95_ms"], "client_p95_after_ms": after["p95_ms"],
        "client_failures": overload["failures"]}))
    # The operator's own /metrics counted the decision.
    text = operator.metrics()
    ups = [line for line in text.splitlines()
           if line.startswith("dedicap_scale_decisions_total{")
           and f'namespace="{namespace}"' in line and 'direction="up"' in line]
    assert ups and float(ups[0].rsplit(" ", 1)[1]) >= 1, ups
    assert "dedicap_evaluation_duration_seconds_count" in text
    assert not math.isnan(float(cols["P95"]))


class Timeline:
    """spec.replicas sampled once a second by the test: what the operator asked for, when."""

    def __init__(self, stack: Any, namespace: str) -> None:
        self.stack, self.namespace = stack, namespace
        self.points: list[tuple[float, int]] = []

    def sample(self) -> int:
        n = spec_replicas(self.stack, self.namespace)
        self.points.append((time.monotonic(), n))
        return n

    def until(self, done: Callable[[int], bool], what: str, timeout: float) -> int:
        return wait_for(lambda: ((n := self.sample()) is not None and done(n) and n) or None,
                        what, timeout=timeout)

    def first_below(self, count: int, after: float) -> float | None:
        return next((t for t, n in self.points if t >= after and n < count), None)


def test_load_falls_scales_down_after_stabilization_never_below_min(
        stack: Any, namespace: str, operator: OperatorProcess) -> None:
    window = 30
    set_sim(stack, namespace, "bot", SLOW_MODEL)
    apply_md(stack, namespace, min_replicas=1, max_replicas=4, replicas=3,
             scale_down={"stabilizationWindowSeconds": window, "maxStepReplicas": 2})
    wait_for(lambda: serving(stack, namespace, 3), "three serving replicas", timeout=90)
    wait_for(lambda: metrics_fresh(stack, namespace), "MetricsAvailable=True", timeout=60)
    timeline = Timeline(stack, namespace)
    eps = loadgen.endpoints_for(namespace, "bot", stack.run_dir)
    # Load that three replicas serve, then a trickle that one serves.
    high = loadgen.Background(eps, [loadgen.Step(35, 50)], seed=3, timeout_s=30)
    try:
        deadline = time.monotonic() + 35
        while time.monotonic() < deadline:
            timeline.sample()
            time.sleep(1)
    finally:
        high.stop()
    t_drop = time.monotonic()
    at_drop = timeline.sample()
    low = loadgen.Background(eps, [loadgen.Step(150, 3)], seed=4, timeout_s=30)
    try:
        timeline.until(lambda n: n == 1, "a scale-down to minReplicas", timeout=120)
        for _ in range(2 * EVAL_S):  # and it stays there
            timeline.sample()
            time.sleep(1)
    finally:
        low.stop()
    first_down = timeline.first_below(at_drop, t_drop)
    at_min = timeline.first_below(2, t_drop)
    assert first_down is not None and at_min is not None
    # 50 req/s is more than one replica serves at all (~29 req/s), so no recommendation of a
    # single replica exists before the drop: reaching minReplicas must wait for the whole
    # stabilization window after it.
    assert at_min - t_drop >= window, (at_min - t_drop, timeline.points)
    assert min(n for _, n in timeline.points) >= 1
    assert timeline.points[-1][1] == 1
    obj = md(stack, namespace)
    assert obj["status"]["lastScale"]["reason"] == "DemandFalling"
    downs = events(stack, namespace, "ScaledDown")
    assert downs and all("-> 0" not in e["message"] for e in downs)
    print(json.dumps({"replicas_at_drop": at_drop,
                      "first_scale_down_after_drop_s": round(first_down - t_drop, 1),
                      "at_min_after_drop_s": round(at_min - t_drop, 1),
                      "stabilization_s": window,
                      "timeline": [n for _, n in timeline.points]}))


def test_a_step_is_met_by_the_fast_path_in_one_move(
        stack: Any, namespace: str, operator: OperatorProcess) -> None:
    # 10 -> 60 req/s, a 6x step that one ~29-req/s replica cannot serve: the fast path (a 5-s
    # window, completions plus the queues' growth) sees the new level before the 20-s window
    # or Triton's summaries do, and the count goes there in one move (a second one at most,
    # should the first read the step half-way), without overshooting it by more than one.
    one_slow_replica(stack, namespace, max_replicas=6)
    timeline = Timeline(stack, namespace)
    load = loadgen.Background(loadgen.endpoints_for(namespace, "bot", stack.run_dir),
                              [loadgen.Step(25, 10), loadgen.Step(75, 60)], seed=5,
                              timeout_s=30, max_in_flight=2000)
    try:
        timeline.until(lambda n: n >= 2, "a scale-up after the step", timeout=90)
        while load.running():  # the new replicas start, serve, the backlog drains: to its end
            timeline.sample()
            time.sleep(1)
    finally:
        report = load.stop()
    counts = [n for _, n in timeline.points]
    rises = [b for a, b in itertools.pairwise(counts) if b > a]
    final = counts[-1]
    assert final >= 2 and len(rises) <= 2, counts
    assert max(counts) <= final + 1, counts
    # the clients' last 20 s of the step are within the SLO
    minutes = loadgen.step_minutes(report, [loadgen.Step(25, 10), loadgen.Step(75, 60)])
    late = [x for t, x in report.timeline if t >= 80 and math.isfinite(x)]
    assert late and loadgen.percentile([1000 * x for x in late], 95) < TARGET_MS
    print(json.dumps({"asked": counts, "rises": rises, "minutes": minutes}))


def test_prometheus_down_during_a_load_drop_holds_replicas_and_says_why(
        stack: Any, namespace: str, operator: OperatorProcess) -> None:
    set_sim(stack, namespace, "bot", SLOW_MODEL)
    # Two replicas with minReplicas 1: with data, the policy would scale down once the load
    # drops and its 20 s stabilization window has passed.
    apply_md(stack, namespace, min_replicas=1, max_replicas=3, replicas=2,
             scale_down={"stabilizationWindowSeconds": 20, "maxStepReplicas": 1})
    wait_for(lambda: serving(stack, namespace, 2), "two serving replicas", timeout=90)
    eps = loadgen.endpoints_for(namespace, "bot", stack.run_dir)
    # Load two replicas serve (one would not within the SLO), then a trickle one serves: the
    # drop comes as Prometheus goes away (the campaign's full form keeps it away 10 minutes).
    outage_s = faults.SCALE.prometheus_outage_s
    busy = loadgen.Background(eps, [loadgen.Step(120, 30)], seed=8, timeout_s=30)
    try:
        wait_for(lambda: metrics_fresh(stack, namespace), "MetricsAvailable=True",
                 timeout=60, interval=0.5)
    finally:
        busy.stop()
    trickle = loadgen.Background(eps, [loadgen.Step(outage_s + 120, 3)], seed=9, timeout_s=30)
    try:
        held = _hold_through_outage(stack, namespace, operator, outage_s)
        # With data again, the fleet scales down to the minimum: the hold was the outage's.
        t_back = time.monotonic()
        wait_for(lambda: metrics_fresh(stack, namespace), "MetricsAvailable=True again",
                 timeout=60)
        wait_for(lambda: spec_replicas(stack, namespace) == 1,
                 "the scale-down after the outage", timeout=90)
        resumed_s = time.monotonic() - t_back
    finally:
        trickle.stop()
    faults.record("Prometheus down during a load drop", outage_s=outage_s,
                  replicas_held=sorted(set(held)), scale_downs_during_outage=0,
                  samples_during_outage=len(held), metrics_available_during="False",
                  scaled_down_after_outage_s=round(resumed_s, 1))
    print(json.dumps({"outage_s": outage_s, "replicas_held": 2}))


def _hold_through_outage(stack: Any, namespace: str, operator: OperatorProcess,
                         outage_s: float) -> list[int]:
    prometheus.stop(stack.run_dir)
    t_stop = time.monotonic()
    try:
        down = wait_for(lambda: (o := md(stack, namespace)) and condition(
            o, "MetricsAvailable").get("status") == "False" and o,
            "MetricsAvailable=False", timeout=6 * EVAL_S)  # held at once, said after 2 intervals
        cond = condition(down, "MetricsAvailable")
        assert cond["reason"] == "PrometheusUnavailable", cond
        assert "127.0.0.1" in cond["message"] and "held" in cond["message"], cond
        assert condition(down, "SLOMet")["status"] == "Unknown"
        # Longer than the stabilization window, with no data: nothing moves.
        held = []
        while time.monotonic() - t_stop < outage_s:
            held.append(spec_replicas(stack, namespace))
            assert condition(md(stack, namespace), "MetricsAvailable")["status"] == "False"
            time.sleep(1)
        assert set(held) == {2}, held
        assert not events(stack, namespace, "ScaledDown")
        cols = md_columns(stack, namespace)
        assert (cols["SLO"], cols["P95"], cols["ERRORS"]) == ("Unknown", "", ""), cols
        text = operator.metrics()
        assert any(line.startswith("dedicap_prometheus_query_errors_total"
                                   '{kind="PrometheusUnavailable"}') for line in text.splitlines())
        return held
    finally:
        prometheus.start(stack.run_dir, port=stack.prometheus_port)


def test_backend_errors_do_not_scale_but_rejections_do(
        stack: Any, namespace: str, operator: OperatorProcess) -> None:
    set_sim(stack, namespace, "bot", {**SLOW_MODEL, "fail_ratio": 0.5})
    apply_md(stack, namespace, min_replicas=1, max_replicas=3)
    wait_for(lambda: serving(stack, namespace, 1), "one serving replica", timeout=90)
    eps = loadgen.endpoints_for(namespace, "bot", stack.run_dir)
    # Well within what one replica serves: only the model's own failures break the SLO.
    failing = loadgen.Background(eps, [loadgen.Step(60, 5)], seed=5, timeout_s=30)
    try:
        degraded = wait_for(lambda: (o := md(stack, namespace)) and condition(
            o, "Degraded").get("reason") == "BackendErrors" and o, "Degraded=BackendErrors",
            timeout=45)
        assert condition(degraded, "Degraded")["status"] == "True"
        assert "BACKEND" in condition(degraded, "Degraded")["message"]
        slo = condition(degraded, "SLOMet")
        assert slo["status"] == "False" and slo["reason"] == "ErrorRatioAboveMax", slo
        held = []
        for _ in range(4 * EVAL_S):
            held.append(spec_replicas(stack, namespace))
            time.sleep(1)
        assert set(held) == {1}, held
        assert not events(stack, namespace, "ScaledUp")
        # The reconciler's resyncs leave the autoscaler's Degraded in place.
        assert condition(md(stack, namespace), "Degraded")["reason"] == "BackendErrors"
    finally:
        failing.stop()
    # A healthy model whose queue times out requests (REJECTED) is short of capacity.
    set_sim(stack, namespace, "bot", {**SLOW_MODEL, "queue_timeout_us": 150_000})
    wait_for(lambda: serving(stack, namespace, 1), "the restarted replica", timeout=60)
    time.sleep(3)  # the data plane restarts the process for the new queue policy
    wait_for(lambda: serving(stack, namespace, 1), "the restarted replica", timeout=60)
    rejecting = loadgen.Background(eps, [loadgen.Step(90, 60)], seed=6, timeout_s=30)
    try:
        wait_for(lambda: spec_replicas(stack, namespace) >= 2, "a scale-up from rejections",
                 timeout=60)
        obj = last_scale(stack, namespace)
        assert obj["status"]["lastScale"]["reason"] in ("RequestsRejected", "LatencyAboveSLO")
        wait_for(lambda: condition(md(stack, namespace), "Degraded").get("status") == "False",
                 "Degraded cleared once BACKEND errors stop", timeout=40)
    finally:
        report = rejecting.stop().summary()
    assert report["failures"].get("rejected_timeout", 0) > 0, report
    print(json.dumps({"scaled_for_rejections_to": spec_replicas(stack, namespace),
                      "last_scale": md(stack, namespace)["status"]["lastScale"]["reason"],
                      "client_failures": report["failures"]}))


@pytest.fixture
def small_pool(stack: Any) -> Iterator[str]:
    """A GPUPool of its own: one simulated node with 2 GPUs, so it is full at 2 replicas."""
    from dedicap_local import stack as stk

    name = f"as-{uuid.uuid4().hex[:6]}"
    product = f"TEST-{name.upper()}"
    stk.ensure_nodes(stack, [{"name": name, "nodes": 1, "cpu": "16", "memory": "64Gi",
                              "gpu": {"product": product, "memoryGiB": 24, "perNode": 2}}])
    stack.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "dedicap.dev/v1alpha1", "kind": "GPUPool", "metadata": {"name": name},
        "spec": {"nodeSelector": {"nvidia.com/gpu.product": product},
                 "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                  "effect": "NoSchedule"}],
                 "gpu": {"product": product, "memoryGiB": 24, "perNode": 2}}}))
    yield name
    stack.kubectl("delete", "gpupool", name, "--wait=false", check=False)
    stack.kubectl("delete", "node", f"{name}-0", "--wait=false", check=False)


def test_slo_breached_at_the_capacity_limit_is_capacity_constrained(
        stack: Any, namespace: str, operator: OperatorProcess, small_pool: str) -> None:
    set_sim(stack, namespace, "bot", SLOW_MODEL)
    apply_md(stack, namespace, min_replicas=1, max_replicas=5, pools=(small_pool,))
    wait_for(lambda: serving(stack, namespace, 1), "one serving replica", timeout=90)
    wait_for(lambda: metrics_fresh(stack, namespace), "MetricsAvailable=True", timeout=60)
    # Far more than the two replicas the pool holds can serve.
    load = loadgen.Background(loadgen.endpoints_for(namespace, "bot", stack.run_dir),
                              [loadgen.Step(100, 120)], seed=7, timeout_s=30,
                              max_in_flight=2000)
    try:
        constrained = wait_for(lambda: (o := md(stack, namespace)) and condition(
            o, "CapacityConstrained").get("reason") == "ReplicaLimitReached" and o,
            "CapacityConstrained=ReplicaLimitReached", timeout=75)
        cond = condition(constrained, "CapacityConstrained")
        assert cond["status"] == "True" and "SLO is breached" in cond["message"], cond
        assert condition(constrained, "SLOMet")["status"] == "False"
        # Held at what fits, with no pod left Pending.
        seen = []
        for _ in range(3 * EVAL_S):
            seen.append((spec_replicas(stack, namespace),
                         sorted(p["status"].get("phase", "") for p in pods(stack, namespace))))
            time.sleep(1)
        assert {n for n, _ in seen} == {2}, seen
        assert all(phases == ["Running", "Running"] for _, phases in seen), seen
        assert condition(md(stack, namespace), "CapacityConstrained")["status"] == "True"
        # Behind queues this deep every batch Triton runs is full: the spec gives no max
        # batch, and the policy learns the model's from a whole rate window of them.
        learned = wait_for(lambda: (state := saved_state(stack, namespace)).get(
            "full_batch") == SLOW_MODEL["max_batch_size"] and state,
            "the model's max batch learned", timeout=60)
        # ... and shows it, with what a replica serves, in status.requestCapacity
        capacity = wait_for(lambda: (cap := (md(stack, namespace).get("status") or {}).get(
            "requestCapacity") or {}).get("maxBatchSize") == SLOW_MODEL["max_batch_size"]
            and cap, "status.requestCapacity with the learned max batch", timeout=60)
        assert capacity["maxBatchSource"] == "learned", capacity
        assert 0 < capacity["requestsPerSecondPerReplica"] < capacity[
            "saturatedRequestsPerSecond"], capacity
    finally:
        load.stop()
    print(json.dumps({"held_at": 2, "condition": cond["message"][:300],
                      "full_batch": learned["full_batch"], "request_capacity": capacity}))


def saved_state(stack: Any, namespace: str) -> dict[str, Any]:
    """The policy state the operator saved in status.autoscaler ({} before any)."""
    saved = (md(stack, namespace).get("status") or {}).get("autoscaler") or {}
    return dict(json.loads(saved["state"])) if saved.get("state") else {}
