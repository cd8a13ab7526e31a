"""`dedicap plan --prometheus ... --modeldeployment ...` on the real local stack.

Load runs through an autoscaled ModelDeployment (the slowed model of test_autoscaling.py: one
replica saturates near 29 req/s) until the live autoscaler has settled; then the planner reads
that deployment's history from the same Prometheus, learns its replica from the deployment's
own Triton metrics (the live policy's fit) and recommends a reservation, which must be within
one replica of what the live autoscaler settled on. The model's max batch comes from the
deployment's spec, which the operator exports beside its other metrics (Triton's do not carry
it): the planner is not told it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest
from test_autoscaling import (  # the operator and namespace fixtures, and their helpers
    EVAL_S,
    SLOW_MODEL,
    TARGET_MS,
    namespace,
    one_slow_replica,
    operator,
    spec_replicas,
)

from dedicap_local import loadgen, prometheus
from testkit import OperatorProcess

pytestmark = pytest.mark.integration
__all__ = ["namespace", "operator"]

LOAD_RPS = 40.0  # ~1.4x what one replica serves at best: the live fleet settles above one
LOAD_S = 150.0
HISTORY_S = 140.0  # the load, from the overload of one replica to the settled fleet


def test_plan_from_prometheus_matches_the_live_autoscaler(
        stack: Any, namespace: str, operator: OperatorProcess) -> None:
    # the stack's Prometheus scrapes this operator too, as a cluster's scrapes the chart's
    scrape = f"dedicap-operator-{operator.peering}"
    prometheus.write_target(stack.run_dir, scrape,
                            f"{operator.metrics_address}:{operator.metrics_port}",
                            {"job": "dedicap-operator"})
    try:
        plan_against_the_live_autoscaler(stack, namespace)
    finally:
        prometheus.remove_target(stack.run_dir, scrape)


def plan_against_the_live_autoscaler(stack: Any, namespace: str) -> None:
    one_slow_replica(stack, namespace, max_replicas=4,
                     model={"maxBatchSize": SLOW_MODEL["max_batch_size"]})
    eps = loadgen.endpoints_for(namespace, "bot", stack.run_dir)
    load = loadgen.Background(eps, [loadgen.Step(LOAD_S, LOAD_RPS)], seed=11, timeout_s=30,
                              max_in_flight=2000)
    counts: list[tuple[float, int]] = []
    try:
        end = time.time() + LOAD_S - 5
        while time.time() < end:
            counts.append((time.time(), spec_replicas(stack, namespace)))
            time.sleep(EVAL_S)
        until = time.time()
    finally:
        report = load.stop().summary()
    live = counts[-1][1]  # what the live autoscaler settled on
    assert all(n == live for t, n in counts if t >= until - 60), counts
    assert live >= 2, (counts, report)
    out = subprocess.run(
        [sys.executable, "-m", "dedicap.cli", "plan", "--prometheus", stack.prometheus_url,
         "--modeldeployment", f"{namespace}/bot", "--since", f"{HISTORY_S:g}s",
         "--until", f"{until:.0f}", "--step", "20s", "--slo", f"p95={TARGET_MS:g}ms",
         "--error-rate", "0.01", "--startup", "10", "--attainment", "0.95", "--json"],
        capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    model = plan["replica_model"]
    # learned from the deployment's own metrics, not the calibrated example
    assert not model["example"] and "learned from" in model["source"], model
    # the max batch the spec declares, read from the operator's export, not the largest seen
    assert model["max_batch"] == SLOW_MODEL["max_batch_size"], model
    assert any("spec" in n for n in model["notes"]), model
    assert "read " in out.stderr and "replica model: learned" in out.stderr, out.stderr
    # the model's truth: a batch of b takes 100 + 10*b ms, at most 4 per batch (28.6 req/s)
    assert 0.7 * 28.6 < model["saturated_rps"] < 1.3 * 28.6, model
    rec = plan["recommendation"]
    assert rec is not None, plan
    assert abs(rec["gpus"] - live) <= 1, (rec, live, counts)
    assert plan["history"]["pods_last"] is not None
    print(json.dumps({"live_settled": live, "live_counts": [n for _, n in counts],
                      "plan_recommends": rec["gpus"], "replica_model": model,
                      "tradeoff": plan["pools"][0]["tradeoff"], "load": report}))
