"""The main job on the local stack, end to end: install the CRDs, start the operator, sell a
reservation, deploy a tenant's SLO-autoscaled model, drive real load through real Triton
replicas, and show what the operator did (replicas, p95, errors, GPUs and cost) as it happens.
It ends with a picture of the run: a PNG timeline and a summary drawn from Prometheus' own
answers (`dedicap report`), with the scale-up under the load and the scale-down after it.

Monitoring runs as in a cluster (dedicap_local.monitoring): prometheus-operator turns the
operator-rendered ServiceMonitor and the chart's monitoring objects into Prometheus'
configuration, and the operator reads that Prometheus.

    dedicap-local demo            # about six minutes on 2 cores
    dedicap-local demo --no-load  # just deploy and show
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from dedicap_local import chart, dataplane, loadgen, monitoring, procs
from dedicap_local import stack as stk

REPO = stk.LOCAL_DIR.parent.parent
EXAMPLES = REPO / "deploy" / "examples"
NAMESPACE, MODEL = "acme", "support-bot"

# A replica of the demo model serves about 45 req/s before its p95 passes 200 ms (batches of up
# to 4, 40 ms + 10 ms per request): small enough that two CPU cores can offer several replicas'
# worth of load.
DEMO_SIM = {"base_ms": 40, "per_item_ms": 10, "max_batch_size": 4, "max_queue_delay_us": 5000}
PROFILE = "40:20,100:110,100:20"
# How the operator runs on the local stack: Prometheus scrapes every 2 s, a new replica serves
# about 10 s after its pod is created (scheduling, Triton's start, the model's load), and the
# loop evaluates every 5 s. benchmarks/live.py runs the same.
LOOP = {"evaluation_s": 5.0, "scrape_s": 2.0, "window_s": 20.0, "startup_s": 10.0}
TARGET_MS, ERROR_MAX = 200.0, 0.001  # the example ModelDeployment's SLO


def loop_flags() -> list[str]:
    return ["--evaluation-interval", f"{LOOP['evaluation_s']:g}",
            "--scrape-interval", f"{LOOP['scrape_s']:g}",
            "--metrics-window", f"{LOOP['window_s']:g}",
            "--replica-startup", f"{LOOP['startup_s']:g}"]
RESERVATION = "acme-h100"
# After the load, how long to wait at most for the scale-down (the policy's default scale-down
# stabilization is 180 s).
SCALE_DOWN_WAIT_S = 300
BURST_MEMORY_S = 60
TAIL_RPS = 10  # the traffic that goes on while the demo waits for the scale-down


def _apply(stack: stk.Stack, *paths: Path) -> None:
    for path in paths:
        stack.kubectl("apply", "--server-side", "--field-manager=dedicap-demo", "-f", str(path))


def start_operator(stack: stk.Stack, prometheus_url: str) -> None:
    """Run `dedicap run` against the stack as one of its tracked processes; its /metrics is
    where the chart's metrics Service points."""
    already = procs.running_pid(stack.run_dir, "operator") is not None
    procs.start(stack.run_dir, "operator", [
        str(Path(sys.executable).with_name("dedicap")), "run", "--all-namespaces",
        "--prometheus-url", prometheus_url, *loop_flags(),
        # Capacity kept for a burst's peak: a minute, so the demo's scale-down comes in minutes.
        "--burst-memory", str(BURST_MEMORY_S),
        "--metrics-address", monitoring.operator_metrics_address(),
        "--metrics-port", str(monitoring.OPERATOR_METRICS_PORT),
    ], env={"KUBECONFIG": str(stack.kubeconfig)})
    stk.log(f"operator: {'already running' if already else 'started'} "
            f"(log: {stack.run_dir / 'logs' / 'operator.log'})")


def md_row(stack: stk.Stack) -> dict[str, Any]:
    out = stack.kubectl("get", "md", MODEL, "-n", NAMESPACE, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def want(stack: stk.Stack) -> int | None:
    spec = md_row(stack).get("spec") or {}
    value = spec.get("replicas")
    return int(value) if value is not None else None


def watch(stack: stk.Stack, seconds: float, until: Any = None) -> None:
    """Print a line every 10 s: what the operator sees and decides (stop early when `until()`
    holds)."""
    print(f"\n{'t':>5} {'want':>5} {'ready':>5} {'p95 ms':>7} {'errors':>7} {'req/s':>6}  "
          "last decision")
    start = time.monotonic()
    while time.monotonic() - start < seconds and not (until and until()):
        md = md_row(stack)
        spec, status = md.get("spec", {}), md.get("status", {})
        observed = status.get("observed") or {}
        last = status.get("lastScale") or {}
        want = spec.get("replicas", status.get("desiredReplicas"))
        print(f"{time.monotonic() - start:>5.0f} {_num(want, 'd'):>5} "
              f"{_num(status.get('readyReplicas'), 'd'):>5} "
              f"{_num(observed.get('p95Ms', observed.get('latencyMs')), '.0f'):>7} "
              f"{_num(observed.get('errorRatio'), '.2%'):>7} "
              f"{_num(observed.get('requestRate'), '.1f'):>6}  {last.get('reason', '-')}",
              flush=True)
        time.sleep(10)


def run(stack: stk.Stack, *, with_load: bool = True) -> None:
    stk.log("installing the CRDs, the chart's cluster objects and the example pools, "
            "reservations and ModelDeployment")
    _apply(stack, REPO / "crds")
    chart.install_cluster_objects(stack)
    stack.wait_established()
    for ns in (NAMESPACE, "acme-frontend"):
        stack.kubectl("create", "namespace", ns, check=False)
    dataplane.write_sim(stack.run_dir, {"modeldeployments": {f"{NAMESPACE}/{MODEL}": DEMO_SIM}})
    _apply(stack, EXAMPLES / "gpupools.yaml", EXAMPLES / "capacity-reservations.yaml")
    stk.log("monitoring: prometheus-operator, Prometheus (discovery through the API server), "
            "Alertmanager, the chart's ServiceMonitor and PrometheusRule")
    prometheus_url = monitoring.up(stack)
    monitoring.install_chart_monitoring(stack)
    start_operator(stack, prometheus_url)
    _apply(stack, EXAMPLES / "modeldeployment-autoscaled.yaml")
    stack.kubectl("wait", "--for=condition=Ready", f"md/{MODEL}", "-n", NAMESPACE,
                  "--timeout=180s", timeout=200)
    stk.log(f"{MODEL} is Ready")
    if with_load:
        stk.log(f"offering load {PROFILE} (seconds:requests per second) through real Triton")
        started = time.time()
        load = loadgen.Background(loadgen.endpoints_for(NAMESPACE, MODEL, stack.run_dir),
                                  loadgen.parse_profile(PROFILE), max_requests=40_000)
        watch(stack, seconds=sum(s.duration_s for s in loadgen.parse_profile(PROFILE)))
        report = load.stop()
        clients = report.summary()
        print(f"\nclients: sent {clients['sent']}, succeeded {clients['succeeded']}, "
              f"failed {clients['failed']}, p95 {clients['p95_ms']} ms")
        print_step_minutes(report)
        peak = want(stack)
        stk.log(f"the peak is over: {TAIL_RPS} req/s go on while the replicas scale down")
        tail = loadgen.Background(loadgen.endpoints_for(NAMESPACE, MODEL, stack.run_dir),
                                  [loadgen.Step(SCALE_DOWN_WAIT_S, TAIL_RPS)])
        watch(stack, seconds=SCALE_DOWN_WAIT_S,
              until=lambda: (n := want(stack)) is not None and peak is not None and n < peak)
        tail.stop()
        picture(stack, prometheus_url, started, time.time())
    for what in (["gpupools"], ["capacityreservations"], ["md", "-A"]):
        print("\n$ kubectl get " + " ".join(what))
        print(stack.kubectl("get", *what).stdout, end="")
    print(f"\nexport KUBECONFIG={stack.kubeconfig}   # then: kubectl describe md {MODEL} -n "
          f"{NAMESPACE}\nmetrics: {monitoring.prometheus_url()}   "
          "stop everything: dedicap-local down")



def print_step_minutes(report: loadgen.Report) -> None:
    """The clients' p95 and errors in each minute of each load step, and whether any minute
    after the first of its step missed the SLO."""
    print(f"\nclients, by minute of each load step (SLO: p95 <= {TARGET_MS:g} ms, errors <= "
          f"{ERROR_MAX:.1%}):")
    late_misses = late = 0
    for row in loadgen.step_minutes(report, loadgen.parse_profile(PROFILE)):
        errors = row["failed"] / row["requests"] if row["requests"] else 0.0
        met = (row["p95_ms"] is None or row["p95_ms"] <= TARGET_MS) and errors <= ERROR_MAX
        if row["minute"] > 1:
            late += 1
            late_misses += not met
        print(f"  {row['rps']:>5g} req/s, minute {row['minute']} "
              f"({row['start_s']:.0f}-{row['end_s']:.0f} s): p95 {_num(row['p95_ms'], '.0f')} "
              f"ms, errors {errors:.2%}, {'within' if met else 'ABOVE'} the SLO")
    print(f"after the first minute of each step: {late - late_misses} of {late} minutes within "
          "the SLO")


def picture(stack: stk.Stack, prometheus_url: str, start: float, end: float) -> Path:
    """The run's timeline and summary, from Prometheus' answers (`dedicap report`)."""
    from dedicap.metrics.prometheus import PrometheusClient
    from dedicap.monitoring import report

    out = stack.run_dir / "demo" / f"{MODEL}.png"
    with PrometheusClient(prometheus_url, timeout_s=30, retries=1) as client:
        summary = report.report(client, NAMESPACE, MODEL, report.window(start, end), out,
                                RESERVATION)
    print("\n" + "\n".join(summary.lines()))
    print(f"timeline: {out}\nsummary:  {out.with_suffix('.json')}\n"
          f"again, for any window: dedicap report -n {NAMESPACE} -m {MODEL} --since 1h "
          f"--prometheus-url {prometheus_url} --out {MODEL}.png")
    return out
