"""Monitoring end to end on the real local stack, as a cluster runs it.

prometheus-operator turns the shipped objects (the ServiceMonitor the operator renders per
ModelDeployment; the chart's metrics Service, ServiceMonitor and PrometheusRule) into the
configuration of a real Prometheus that discovers its targets through the API server; real
Triton processes listen on their pods' addresses; a real Alertmanager delivers to a webhook
served by this test.

One scenario serves every check (about four minutes on 2 cores): ModelDeployment `hot` is
overloaded, pages, scales up, then down once the load drops; `calm` stays inside its SLO all
along. The burn-rate windows are the real rules' divided by 60 (the same generator); promtool's
unit tests check the real windows.
"""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import promql_parser
import pytest

from dedicap.metrics import promql
from dedicap.metrics.prometheus import PrometheusClient
from dedicap.monitoring import dashboards, report, rules
from dedicap_local import dataplane, loadgen, monitoring
from testkit import OperatorProcess, install_api, kget, release_operator_state, wait_for

pytestmark = pytest.mark.integration

EVAL_S = 5
TARGET_MS = 300.0
# hot: at most ~29 req/s per replica (batches of 4, 100 ms + 10 ms per request).
SLOW_MODEL = {"max_batch_size": 4, "base_ms": 100, "per_item_ms": 10}
COMPRESS = 60
PAGE = "DedicapLatencyBudgetBurnFast"


@dataclass
class Webhook:
    """Alertmanager's webhook receiver: every notification it posts, in order."""

    received: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def alerts(self) -> list[dict[str, Any]]:
        with self.lock:
            return [a for n in self.received for a in n.get("alerts", [])]


def serve_webhook() -> tuple[ThreadingHTTPServer, Webhook]:
    hook = Webhook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with hook.lock:
                hook.received.append(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, hook


@dataclass
class Run:
    """What the scenario left for the checks."""

    namespace: str
    prometheus: PrometheusClient
    hook: Webhook
    operator: OperatorProcess
    start: float = 0.0
    end: float = 0.0
    paged_at: float = 0.0
    sent: int = 0
    reservation: str = ""
    notes: dict[str, Any] = field(default_factory=dict)


def apply_md(stack: Any, namespace: str, name: str, *, min_replicas: int, max_replicas: int,
             reservation: str) -> None:
    doc = {
        "apiVersion": "dedicap.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"name": name, "repository": "s3://models/triton", "backend": "python"},
            "resources": {"gpusPerReplica": 1, "gpuMemoryGiB": 20},
            "placement": {"pools": ["h100"]}, "reservation": reservation,
            "autoscaling": {
                "minReplicas": min_replicas, "maxReplicas": max_replicas,
                "slo": {"latency": {"percentile": 95, "targetMs": TARGET_MS},
                        "errorRate": {"max": 0.01}},
                "behavior": {"evaluationIntervalSeconds": EVAL_S,
                             "scaleDown": {"stabilizationWindowSeconds": 20}},
            },
        },
    }
    stack.kubectl("apply", "-f", "-", input=json.dumps(doc))


def serving(stack: Any, namespace: str, name: str, count: int) -> bool:
    return len(dataplane.read_endpoints(stack.run_dir, namespace, name)) == count


def firing(prom: PrometheusClient, alert: str, **labels: str) -> list[Any]:
    match = ",".join(f'{k}="{v}"' for k, v in {"alertname": alert, **labels}.items())
    return prom.query(f'ALERTS{{{match},alertstate="firing"}}')


def desired(stack: Any, namespace: str, name: str) -> int:
    spec = kget(stack, "md", name, "-n", namespace)["spec"]
    return int(spec.get("replicas", spec["autoscaling"]["minReplicas"]))


@pytest.fixture(scope="module")
def run(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    server, hook = serve_webhook()
    url = monitoring.up(stack, receiver_url=f"http://127.0.0.1:{server.server_port}/alerts")
    prom = PrometheusClient(url, timeout_s=10, retries=2)
    install_api(stack)
    live = rules.rule_groups(rules.SRE.compressed(COMPRESS, "2s"))
    monitoring.install_chart_monitoring(stack, live)
    suffix = uuid.uuid4().hex[:6]
    namespace, reservation = f"dcp-mon-{suffix}", f"dcp-mon-{suffix}"
    stack.kubectl("create", "namespace", namespace)
    stack.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "dedicap.dev/v1alpha1", "kind": "CapacityReservation",
        "metadata": {"name": reservation},
        "spec": {"namespaces": [namespace], "pool": "h100", "gpus": 4}}))
    op = OperatorProcess(
        stack, tmp_path_factory.mktemp("monitoring"),
        ["--namespace", "dcp-mon-*", "--peering-lifetime", "10", "--pool-refresh-seconds", "2",
         "--resync-seconds", "5", "--capacity-seconds", "3", "--prometheus-url", url,
         "--evaluation-interval", str(EVAL_S), "--scrape-interval", "2",
         "--metrics-window", "20", "--replica-startup", "10", "--burst-memory", "20",
         "--verbose"],
        peering=f"dedicap-mon-{suffix}", metrics_address=monitoring.operator_metrics_address(),
        metrics_port=monitoring.OPERATOR_METRICS_PORT)
    op.start()
    sim = dataplane.read_sim(stack.run_dir)
    sim.setdefault("modeldeployments", {})[f"{namespace}/hot"] = SLOW_MODEL
    dataplane.write_sim(stack.run_dir, sim)
    result = Run(namespace, prom, hook, op, reservation=reservation)
    try:
        scenario(stack, result)
        yield result
    finally:
        op.stop()
        print(f"operator log: {op.log}")
        release_operator_state(stack, op.peering)
        sim = dataplane.read_sim(stack.run_dir)
        sim.get("modeldeployments", {}).pop(f"{namespace}/hot", None)
        dataplane.write_sim(stack.run_dir, sim)
        stack.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        stack.kubectl("delete", "capacityreservation", reservation, "--ignore-not-found",
                      check=False)
        monitoring.set_receiver(stack.run_dir, None)
        server.shutdown()
        prom.close()


def scenario(stack: Any, r: Run) -> None:
    ns = r.namespace
    apply_md(stack, ns, "calm", min_replicas=1, max_replicas=2, reservation=r.reservation)
    apply_md(stack, ns, "hot", min_replicas=1, max_replicas=3, reservation=r.reservation)
    for name in ("calm", "hot"):
        wait_for(lambda n=name: serving(stack, ns, n, 1), f"{name} serving", timeout=120)

    def discovered() -> bool:
        # Both replicas' Triton series, found through the ServiceMonitors, and the operator's.
        return bool(r.prometheus.query(
            f'count(count by (modeldeployment) (nv_inference_request_success{{namespace="{ns}"}}))'
            " == 2")) and bool(r.prometheus.query("dedicap_build_info"))

    wait_for(discovered, "targets discovered through the API server", timeout=90, interval=1)
    calm = loadgen.Background(loadgen.endpoints_for(ns, "calm", stack.run_dir),
                              [loadgen.Step(400, 5)], seed=2, timeout_s=30)
    hot = loadgen.Background(loadgen.endpoints_for(ns, "hot", stack.run_dir),
                             [loadgen.Step(15, 5), loadgen.Step(400, 60)], seed=3, timeout_s=30,
                             max_in_flight=2000)
    r.start = time.time()
    try:
        wait_for(lambda: desired(stack, ns, "hot") >= 2, "hot scales up", timeout=120,
                 interval=1)
        wait_for(lambda: firing(r.prometheus, PAGE, namespace=ns, modeldeployment="hot"),
                 "the fast-burn alert firing", timeout=120, interval=1)
        r.paged_at = time.time()
        wait_for(lambda: [a for a in r.hook.alerts() if a["labels"].get("alertname") == PAGE],
                 "the page delivered to the webhook", timeout=60, interval=1)
        r.sent += hot.stop().summary()["sent"]
        hot = loadgen.Background(loadgen.endpoints_for(ns, "hot", stack.run_dir),
                                 [loadgen.Step(400, 3)], seed=4, timeout_s=30)
        wait_for(lambda: desired(stack, ns, "hot") == 1, "hot scales down", timeout=150,
                 interval=2)
        wait_for(lambda: serving(stack, ns, "hot", 1), "one hot replica serving", timeout=60)
        # The window ends once Prometheus has scraped the operator's count after the scale-down.
        wait_for(lambda: r.prometheus.query(
            f'max(dedicap_modeldeployment_desired_replicas{{namespace="{ns}",'
            f'modeldeployment="hot"}}) == 1'), "the scale-down scraped", timeout=30)
        r.end = time.time()
    finally:
        r.sent += hot.stop().summary()["sent"]
        r.notes["calm"] = calm.stop().summary()


# ---------------------------------------------------------------------------------- checks


def test_endpointslices_carry_the_pod_addresses(stack: Any, run: Run) -> None:
    pods = kget(stack, "pods", "-n", run.namespace)["items"]
    ips = {p["status"]["podIP"] for p in pods if p["status"].get("phase") == "Running"}
    assert ips and all(ip.startswith(stack_pod_prefix()) for ip in ips), ips
    slices = kget(stack, "endpointslices", "-n", run.namespace)["items"]
    addresses = {a for s in slices for e in s.get("endpoints") or [] for a in e["addresses"]}
    assert ips <= addresses, (ips, addresses)


def stack_pod_prefix() -> str:
    from dedicap_local import stack as stk

    return stk.POD_CIDR.split(".0.0/")[0] + "."


def test_discovered_targets_carry_the_labels_the_queries_need(stack: Any, run: Run) -> None:
    with urllib.request.urlopen(f"{run.prometheus.base_url}/api/v1/targets?state=active",
                                timeout=10) as resp:
        targets = json.load(resp)["data"]["activeTargets"]
    triton = [t for t in targets if t["labels"].get("namespace") == run.namespace]
    assert triton, [t["labels"] for t in targets]
    pods = {p["metadata"]["name"]: p for p in kget(stack, "pods", "-n", run.namespace)["items"]}
    needed = {promql.LABEL_NAMESPACE, promql.LABEL_POD, promql.LABEL_MODELDEPLOYMENT,
              promql.LABEL_POOL}
    for t in triton:
        labels = t["labels"]
        assert needed <= set(labels), labels
        assert t["scrapePool"].startswith(f"serviceMonitor/{run.namespace}/"), t["scrapePool"]
        pod = pods.get(labels["pod"])
        if pod is None:
            continue  # a replica removed by the scale-down, still in the target list
        assert labels["modeldeployment"] == pod["metadata"]["labels"][
            "dedicap.dev/modeldeployment"]
        assert labels["pool"] == pod["metadata"]["labels"]["dedicap.dev/pool"]
        assert t["scrapeUrl"].startswith(f"http://{pod['status']['podIP']}:8002/"), t
    # The operator's own queries answer on what discovery produced.
    for name in ("calm", "hot"):
        target = promql.Target(run.namespace, name)
        for signal, expr in promql.signals(target, 20, 95).items():
            if signal in (promql.Signal.PODS_DOWN, promql.Signal.GPU_UTILIZATION):
                continue  # nothing down; no GPU here
            assert run.prometheus.query(expr, run.end), (name, signal, expr)


def test_fast_burn_alert_reaches_the_webhook_and_the_calm_deployment_raises_nothing(
        run: Run) -> None:
    paged = [a for a in run.hook.alerts() if a["labels"].get("alertname") == PAGE]
    assert paged[0]["labels"]["modeldeployment"] == "hot"
    assert paged[0]["labels"]["namespace"] == run.namespace
    assert paged[0]["labels"]["severity"] == "page"
    assert paged[0]["annotations"]["runbook_url"].endswith("#dedicaplatencybudgetburnfast")
    mine = [a for a in run.hook.alerts() if a["labels"].get("namespace") == run.namespace]
    assert not [a for a in mine if a["labels"].get("modeldeployment") == "calm"], mine
    # Nothing fired for calm at any evaluation of the run. (A pending alert is Prometheus
    # counting its `for`, not an alert: e.g. the autoscaler's first seconds without a rate.)
    calm = run.prometheus.query_range(
        f'ALERTS{{namespace="{run.namespace}",modeldeployment="calm",alertstate="firing"}}',
        run.start, run.end, 2.0)
    assert calm == [], calm
    assert run.notes["calm"]["failed"] == 0


def _grafana(expr: str, run: Run, name: str) -> str:
    values = {"$namespace": run.namespace, "$modeldeployment": name,
              "$__rate_interval": "20s", "$__range": f"{max(60, int(run.end - run.start))}s"}
    for key, value in sorted(values.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(key, value)
    return expr


def test_every_dashboard_query_parses_and_returns_data(run: Run) -> None:
    empty = []
    checked = 0
    step = max(2.0, (run.end - run.start) / 100)
    for board_name, board in dashboards.render_all().items():
        for where, raw in dashboards.queries(board):
            expr = _grafana(raw, run, "hot")
            promql_parser.parse(expr)
            if where.startswith("variable"):
                answer: list[Any] = run.prometheus.query(expr, run.end)
            else:
                answer = run.prometheus.query_range(expr, run.start, run.end, step)
            checked += 1
            if not answer:
                empty.append(f"{board_name} {where}: {expr}")
    assert checked > 30
    assert not empty, "\n".join(empty)


def test_report_shows_the_scale_up_and_down_and_matches_prometheus(
        stack: Any, run: Run, tmp_path: Path) -> None:
    w = report.window(run.start, run.end)
    out = tmp_path / "hot.png"
    summary = report.report(run.prometheus, run.namespace, "hot", w, out, run.reservation)
    assert out.stat().st_size > 10_000
    assert json.loads(out.with_suffix(".json").read_text())["scale_ups"] == summary.scale_ups
    assert summary.scale_ups >= 1 and summary.scale_downs >= 1, summary
    # The same figures, asked differently: the events the operator posted ...
    events = kget(stack, "events", "-n", run.namespace, "--field-selector",
                  "involvedObject.name=hot")["items"]
    counted = {reason: sum(int(e.get("count") or 1) for e in events if e["reason"] == reason)
               for reason in ("ScaledUp", "ScaledDown")}
    assert summary.scale_ups == counted["ScaledUp"], (summary, counted)
    assert summary.scale_downs == counted["ScaledDown"], (summary, counted)
    # ... what the load generator sent, counting what the replicas started by the scale-up
    # served before Prometheus first scraped them (increase() extrapolates half a scrape
    # interval toward them at most) ...
    assert summary.requests == pytest.approx(run.sent, rel=0.05), (summary.requests, run.sent)
    # ... the GPUs held, integrated from a range query over the same window ...
    gpus = run.prometheus.query_range(
        f'sum(dedicap_modeldeployment_gpus{{namespace="{run.namespace}",modeldeployment="hot"}})',
        w.start, w.end, w.step_s)
    integral = sum(v for _, v in gpus[0].points if not math.isnan(v)) * w.step_s / 3600
    assert summary.gpu_hours == pytest.approx(integral, abs=3 * w.step_s / 3600)
    # ... and the SLO minutes from the latency and the target, minute by minute.
    minutes = run.prometheus.query_range(
        f"{promql.quantile_ms(promql.Target(run.namespace, 'hot'), 95)} <= bool {TARGET_MS}",
        math.floor(w.start / 60) * 60 + 60, w.end, 60)
    values = [v for _, v in minutes[0].points] if minutes else []
    assert values, "latency minutes"
    assert summary.slo_minute_attainment == pytest.approx(
        sum(values) / len(values), abs=1.01 / len(values))
    assert 0 < summary.slo_minute_attainment < 1  # the overload broke some minutes, not all
