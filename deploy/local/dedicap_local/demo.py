"""The main job on the local stack, end to end: install the CRDs, start the operator, sell a
reservation, deploy a tenant's SLO-autoscaled model, drive real load through real Triton
replicas, and show what the operator did (replicas, p95, errors, GPUs and cost) as it happens.

    dedicap-local demo            # about four minutes on 2 cores
    dedicap-local demo --no-load  # just deploy and show
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from dedicap_local import chart, dataplane, loadgen, procs
from dedicap_local import stack as stk

REPO = stk.LOCAL_DIR.parent.parent
EXAMPLES = REPO / "deploy" / "examples"
NAMESPACE, MODEL = "acme", "support-bot"

# A replica of the demo model serves about 45 req/s before its p95 passes 200 ms (batches of up
# to 4, 40 ms + 10 ms per request): small enough that two CPU cores can offer several replicas'
# worth of load.
DEMO_SIM = {"base_ms": 40, "per_item_ms": 10, "max_batch_size": 4, "max_queue_delay_us": 5000}
PROFILE = "40:20,100:110,100:20"


def _apply(stack: stk.Stack, *paths: Path) -> None:
    for path in paths:
        stack.kubectl("apply", "--server-side", "--field-manager=dedicap-demo", "-f", str(path))


def start_operator(stack: stk.Stack) -> None:
    """Run `dedicap run` against the stack as one of its tracked processes."""
    already = procs.running_pid(stack.run_dir, "operator") is not None
    procs.start(stack.run_dir, "operator", [
        str(Path(sys.executable).with_name("dedicap")), "run", "--all-namespaces",
        "--prometheus-url", stack.prometheus_url,
    ], env={"KUBECONFIG": str(stack.kubeconfig)})
    stk.log(f"operator: {'already running' if already else 'started'} "
            f"(log: {stack.run_dir / 'logs' / 'operator.log'})")


def md_row(stack: stk.Stack) -> dict[str, Any]:
    out = stack.kubectl("get", "md", MODEL, "-n", NAMESPACE, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def watch(stack: stk.Stack, seconds: float) -> None:
    """Print a line every 10 s: what the operator sees and decides."""
    print(f"\n{'t':>5} {'want':>5} {'ready':>5} {'p95 ms':>7} {'errors':>7} {'req/s':>6}  "
          "last decision")
    start = time.monotonic()
    while time.monotonic() - start < seconds:
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
    stack.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    for ns in (NAMESPACE, "acme-frontend"):
        stack.kubectl("create", "namespace", ns, check=False)
    dataplane.write_sim(stack.run_dir, {"modeldeployments": {f"{NAMESPACE}/{MODEL}": DEMO_SIM}})
    _apply(stack, EXAMPLES / "gpupools.yaml", EXAMPLES / "capacity-reservations.yaml")
    start_operator(stack)
    _apply(stack, EXAMPLES / "modeldeployment-autoscaled.yaml")
    stack.kubectl("wait", "--for=condition=Ready", f"md/{MODEL}", "-n", NAMESPACE,
                  "--timeout=180s", timeout=200)
    stk.log(f"{MODEL} is Ready")
    if with_load:
        stk.log(f"offering load {PROFILE} (seconds:requests per second) through real Triton")
        load = loadgen.Background(loadgen.endpoints_for(NAMESPACE, MODEL, stack.run_dir),
                                  loadgen.parse_profile(PROFILE), max_requests=40_000)
        watch(stack, seconds=sum(s.duration_s for s in loadgen.parse_profile(PROFILE)))
        report = load.stop().summary()
        print(f"\nclients: sent {report['sent']}, succeeded {report['succeeded']}, "
              f"failed {report['failed']}, p95 {report['p95_ms']} ms")
    for what in (["gpupools"], ["capacityreservations"], ["md", "-A"]):
        print("\n$ kubectl get " + " ".join(what))
        print(stack.kubectl("get", *what).stdout, end="")
    print(f"\nexport KUBECONFIG={stack.kubeconfig}   # then: kubectl describe md {MODEL} -n "
          f"{NAMESPACE}\nmetrics: {stack.prometheus_url}   stop everything: dedicap-local down")

