"""The operator at fleet scale, against the API server's own limit (a script, not a test).

    python benchmarks/fleet.py                          # 100, 300 and 1,000 ModelDeployments
    python benchmarks/fleet.py --counts 50,100 --nodes 120 --out /tmp/fleet   # a quick look
    python benchmarks/fleet.py --counts 1000 --no-roll --operator-only --out /tmp/fleet \
        --profile-idle /tmp/fleet/idle.txt     # where an idle operator spends its time

On a local stack of its own (no data plane: kwok makes the pods Ready, nothing serves them) with
`--nodes` simulated GPU nodes in four pools and `--namespaces` tenant namespaces, for each count
N, side by side in one run:

- **the lower bound**: N ModelDeployments created with no operator running, and a plain client
  (as many threads as the operator has workers) server-side-applying exactly the children the
  operator would (dedicap's own placement and renderer), until every Deployment is available;
  then an image roll (every Deployment's image patched) and the deletion of the N
  ModelDeployments (the garbage collector removes the children);
- **the operator**: the same N ModelDeployments, with `dedicap run` creating the children, until
  every one reports Ready; an idle window with nothing changing; the same image roll through
  the ModelDeployments' spec; the same deletion.

It prints a table and writes `fleet.md`, `fleet.json` and `fleet.png` (convergence time against
N, with the lower bound) under `--out`: convergence, update and deletion times, API requests
per reconcile (the operator's own count, and the API server's `apiserver_request_total` for
the phase), operator CPU seconds and peak RSS, idle CPU and API writes with N objects unchanged,
autoscaler evaluation time per ModelDeployment and whether every autoscaled one was evaluated
within its interval, watch restarts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dedicap.api.models import ModelDeployment
from dedicap.controller.kube import KINDS, Kube, KubeError, load_config
from dedicap.controller.view import ClusterView
from dedicap.decide import capacity as cap
from dedicap.decide.render import RenderOptions, render
from dedicap_local import certs, chart
from dedicap_local import stack as stk

ROOT = Path(__file__).resolve().parent.parent
# Four pools: 250 + 150 + 60 + 40 nodes at --nodes 500 (the same shares at other sizes).
POOLS = (("fh100", 0.50, 8), ("fa100", 0.30, 8), ("fl40s", 0.12, 4), ("fa10g", 0.08, 4))
# Which pool a ModelDeployment prefers, by share of the fleet. Each fits its first choice
# with room to spare: a rolling update surges one replica per Deployment (maxSurge 1,
# maxUnavailable 0), and on a pool filled to the last GPU the surge pods never schedule and
# the roll never ends (at 1,000 ModelDeployments, 80 of them filling the L40S pool exactly
# did not roll in 30 minutes).
PREFERENCE = (("fh100", "fa100", 0.54), ("fa100", "fh100", 0.35), ("fl40s", "fh100", 0.07),
              ("fa10g", "fh100", 0.04))
IMAGES = ("nvcr.io/nvidia/tritonserver:25.01-py3", "nvcr.io/nvidia/tritonserver:25.02-py3")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[fleet {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def wait(probe: Callable[[], bool], what: str, timeout: float, interval: float = 1.0) -> float:
    """Poll until `probe` holds; the seconds it took."""
    start = time.monotonic()
    while not probe():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not after {timeout:.0f}s")
        time.sleep(interval)
    return time.monotonic() - start


# ----------------------------------------------------------------------------- cluster set-up


def pool_objects(nodes: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The pools' node definitions (for stack.ensure_nodes) and GPUPool objects."""
    defs, gpupools = [], []
    for name, share, per_node in POOLS:
        count = max(1, round(nodes * share))
        defs.append({"name": name, "nodes": count, "zones": ["zone-a", "zone-b"],
                     "gpu": {"product": f"FLEET-{name}", "memoryGiB": 80, "perNode": per_node}})
        gpupools.append({
            "apiVersion": "dedicap.dev/v1alpha1", "kind": "GPUPool", "metadata": {"name": name},
            "spec": {"nodeSelector": {"dedicap.dev/pool": name},
                     "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                      "effect": "NoSchedule"}],
                     "gpu": {"product": f"FLEET-{name}", "memoryGiB": 80, "perNode": per_node},
                     "pricePerGPUHour": 2.0}})
    return defs, gpupools


def modeldeployments(prefix: str, count: int, namespaces: int, replicas: int,
                     autoscaled: float, image: str) -> list[dict[str, Any]]:
    out = []
    bounds, acc = [], 0.0
    for first, second, share in PREFERENCE:
        acc += share
        bounds.append((acc, [first, second]))
    for i in range(count):
        frac = (i + 0.5) / count
        pools = next(p for b, p in bounds if frac <= b + 1e-9)
        spec: dict[str, Any] = {
            "model": {"name": "m", "repository": "s3://fleet/models"},
            "triton": {"image": image},
            "resources": {"gpusPerReplica": 1, "gpuMemoryGiB": 16, "cpu": "100m",
                          "memory": "128Mi"},
            "placement": {"pools": pools}, "replicas": replicas}
        if i < round(count * autoscaled):
            spec["autoscaling"] = {"minReplicas": replicas, "maxReplicas": replicas + 3,
                                   "slo": {"latency": {"percentile": 95, "targetMs": 200}}}
        out.append({"apiVersion": "dedicap.dev/v1alpha1", "kind": "ModelDeployment",
                    "metadata": {"name": f"m{i:04d}",
                                 "namespace": f"{prefix}-{i % namespaces:03d}"},
                    "spec": spec})
    return out


# ----------------------------------------------------------------------------- measuring


@dataclass
class Proc:
    """CPU seconds and peak resident memory of a process, from /proc."""

    pid: int

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")


def scrape(url: str, context: ssl.SSLContext | None = None) -> dict[str, float]:
    """A Prometheus exposition as {series: value} (counters and gauges alike)."""
    with urllib.request.urlopen(url, timeout=10, context=context) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                continue
    return out


def total(series: dict[str, float], name: str, **labels: str) -> float:
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for k, v in series.items()
               if (k == name or k.startswith(name + "{")) and all(w in k for w in want))


WRITE = re.compile(r'verb="(POST|PATCH|PUT|DELETE)"')


def writes(series: dict[str, float], exclude: Iterable[str] = ()) -> float:
    """The operator's API writes, leaving out the resources named in `exclude`."""
    skip = [f'resource="{r}"' for r in exclude]
    return sum(v for k, v in series.items() if k.startswith("dedicap_api_requests_total{")
               and WRITE.search(k) and not any(s in k for s in skip))


class Cluster:
    def __init__(self, stack: stk.Stack) -> None:
        self.stack = stack
        self.kube = Kube(load_config(str(stack.kubeconfig)), timeout=60)
        pki = certs.ensure(stack.run_dir / "pki")
        self.tls = ssl.create_default_context(cafile=str(pki.ca_cert))
        self.tls.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))

    def apiserver_requests(self) -> float:
        return total(scrape(f"{self.stack.server}/metrics", self.tls), "apiserver_request_total")

    def create_namespaces(self, names: Iterable[str]) -> None:
        for ns in names:
            try:
                self.kube.create({"apiVersion": "v1", "kind": "Namespace",
                                  "metadata": {"name": ns}})
            except KubeError as err:
                if not err.conflict:
                    raise

    def create_all(self, objects: list[dict[str, Any]], threads: int) -> list[dict[str, Any]]:
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(self.kube.create, objects))

    def pods_in(self, prefix: str) -> int:
        items, _ = self.kube.list_all(KINDS["Pod"])
        return sum(1 for p in items if p["metadata"]["namespace"].startswith(prefix + "-"))

    def delete_namespaces(self, prefix: str) -> None:
        items, _ = self.kube.list_all(KINDS["Namespace"])
        for ns in items:
            if ns["metadata"]["name"].startswith(prefix + "-"):
                self.kube.delete("Namespace", ns["metadata"]["name"])


# ----------------------------------------------------------------------------- the two runs


@dataclass
class Row:
    count: int
    raw_converge_s: float = 0.0
    op_converge_s: float = 0.0
    raw_update_s: float = 0.0
    op_update_s: float = 0.0
    raw_delete_s: float = 0.0
    op_delete_s: float = 0.0
    reconciles: float = 0.0
    op_requests: float = 0.0
    op_requests_per_reconcile: float = 0.0
    apiserver_requests_raw: float = 0.0
    apiserver_requests_op: float = 0.0
    op_cpu_s: float = 0.0
    op_peak_rss_mb: float = 0.0
    events_lag_s: float = 0.0  # after all Ready, until every Event explaining it was posted
    idle_s: float = 0.0
    idle_cpu_pct: float = 0.0
    idle_writes: float = 0.0
    idle_writes_peering: float = 0.0
    eval_ms_per_md: float = 0.0
    autoscaled: int = 0
    min_evaluations: float = 0.0
    expected_evaluations: float = 0.0
    watch_restarts: float = 0.0
    notes: list[str] = field(default_factory=list)


def deployments_available(cluster: Cluster, prefix: str, want: int) -> bool:
    items, _ = cluster.kube.list_all(KINDS["Deployment"])
    mine = [d for d in items if d["metadata"]["namespace"].startswith(prefix + "-")]
    ready = [d for d in mine if int((d.get("status") or {}).get("availableReplicas") or 0)
             >= int(d["spec"]["replicas"])
             and int((d.get("status") or {}).get("updatedReplicas") or 0)
             >= int(d["spec"]["replicas"])
             and (d.get("status") or {}).get("observedGeneration") == d["metadata"]["generation"]]
    return len(mine) >= want and len(ready) == len(mine)


def raw_run(cluster: Cluster, row: Row, mds: list[dict[str, Any]], prefix: str, threads: int,
            timeout: float, roll: bool = True) -> None:
    """The lower bound: the operator's children, created by a plain client."""
    cluster.create_namespaces(sorted({m["metadata"]["namespace"] for m in mds}))
    before = cluster.apiserver_requests()
    start = time.monotonic()
    created = cluster.create_all(mds, threads)
    view = ClusterView(cluster.kube)
    view.load()
    state = view.state()
    pools = {n: p.spec for n, p in state.pools.items()}
    options = RenderOptions(priority_classes=True)

    def children(raw: dict[str, Any]) -> list[dict[str, Any]]:
        md = ModelDeployment.model_validate(raw)
        placement = cap.placement(md, state, cap.plan(state, datetime.now(UTC)))
        return render(md, placement, pools, options)

    objects = [obj for raw in created for obj in children(raw)]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(cluster.kube.apply, objects))
    wait(lambda: deployments_available(cluster, prefix, len(mds)), "raw Deployments available",
         timeout, interval=2.0)
    row.raw_converge_s = time.monotonic() - start
    row.apiserver_requests_raw = cluster.apiserver_requests() - before
    log(f"lower bound, {len(mds)}: available after {row.raw_converge_s:.1f}s")

    if not roll:
        row.raw_delete_s = delete_all(cluster, created, prefix, threads, timeout)
        log(f"lower bound, {len(mds)}: deleted after {row.raw_delete_s:.1f}s")
        return
    # The image roll: every Deployment's pod template patched.
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    start = time.monotonic()

    def roll(obj: dict[str, Any]) -> None:
        patch = {"spec": {"template": {"spec": {"containers": [
            {"name": "triton", "image": IMAGES[1]}]}}}}
        cluster.kube.request(
            "PATCH", KINDS["Deployment"].path(obj["metadata"]["namespace"],
                                                 obj["metadata"]["name"]),
            body=patch, content_type="application/strategic-merge-patch+json")
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(roll, deployments))
    wait(lambda: deployments_available(cluster, prefix, len(mds)), "raw roll", timeout, 2.0)
    row.raw_update_s = time.monotonic() - start
    log(f"lower bound, {len(mds)}: rolled after {row.raw_update_s:.1f}s")
    row.raw_delete_s = delete_all(cluster, created, prefix, threads, timeout)
    log(f"lower bound, {len(mds)}: deleted after {row.raw_delete_s:.1f}s")


def delete_all(cluster: Cluster, mds: list[dict[str, Any]], prefix: str, threads: int,
               timeout: float) -> float:
    start = time.monotonic()

    def delete(raw: dict[str, Any]) -> None:
        cluster.kube.delete("ModelDeployment", raw["metadata"]["name"],
                            raw["metadata"]["namespace"])
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(delete, mds))

    def gone() -> bool:
        items, _ = cluster.kube.list_all(KINDS["Deployment"])
        return not any(d["metadata"]["namespace"].startswith(prefix + "-") for d in items)
    wait(gone, "children deleted", timeout, 2.0)
    took = time.monotonic() - start
    cluster.delete_namespaces(prefix)
    wait(lambda: cluster.pods_in(prefix) == 0, "pods gone", timeout, 2.0)
    return took


def md_ready(raw: dict[str, Any], image: str | None = None) -> bool:
    st = raw.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in st.get("conditions") or [])
    want = int(raw["spec"].get("replicas") or 0)
    if image is not None and raw["spec"]["triton"]["image"] != image:
        return False
    return (ready and int(st.get("readyReplicas") or 0) >= want
            and int(st.get("updatedReplicas") or 0) >= want
            and st.get("observedGeneration") == raw["metadata"]["generation"])


def all_ready(cluster: Cluster, prefix: str, want: int, image: str | None = None) -> bool:
    items, _ = cluster.kube.list_all(KINDS["ModelDeployment"])
    mine = [m for m in items if m["metadata"]["namespace"].startswith(prefix + "-")]
    return len(mine) >= want and all(md_ready(m, image) for m in mine)


def all_evaluated(cluster: Cluster, prefix: str) -> bool:
    items, _ = cluster.kube.list_all(KINDS["ModelDeployment"])
    return all(any(c.get("type") == "MetricsAvailable"
                   for c in (m.get("status") or {}).get("conditions") or [])
               for m in items if m["metadata"]["namespace"].startswith(prefix + "-")
               and m["spec"].get("autoscaling"))


class Operator:
    def __init__(self, stack: stk.Stack, out: Path, scope: str, workers: int,
                 evaluation_s: float) -> None:
        self.port = 19_000 + os.getpid() % 1000
        self.log_path = out / f"operator-{scope.rstrip('*-')}.log"
        env = {**os.environ, "KUBECONFIG": str(stack.kubeconfig), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dedicap.cli", "run", "-n", scope,
             "--peering", f"fleet-{os.getpid()}", "--workers", str(workers),
             "--prometheus-url", stack.prometheus_url, "--evaluation-interval",
             str(evaluation_s), "--metrics-port", str(self.port)],
            stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.stats = Proc(self.proc.pid)
        wait(self._up, "operator metrics", 60)
        # Its view listed and acting: the clock starts on a settled operator.
        wait(lambda: "resync active" in self.log_path.read_text(errors="replace"),
             "operator acting", 120)

    def _up(self) -> bool:
        try:
            self.metrics()
            return True
        except OSError:
            return False

    def metrics(self) -> dict[str, float]:
        return scrape(f"http://127.0.0.1:{self.port}/metrics")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def operator_run(cluster: Cluster, row: Row, mds: list[dict[str, Any]], prefix: str,
                 args: argparse.Namespace, out: Path) -> None:
    cluster.create_namespaces(sorted({m["metadata"]["namespace"] for m in mds}))
    op = Operator(cluster.stack, out, f"{prefix}-*", args.workers, args.evaluation_interval)
    try:
        m0, cpu0, api0 = op.metrics(), op.stats.cpu_s(), cluster.apiserver_requests()
        start = time.monotonic()
        created = cluster.create_all(mds, args.workers)
        wait(lambda: all_ready(cluster, prefix, len(mds)), "ModelDeployments Ready",
             args.timeout, 2.0)
        row.op_converge_s = time.monotonic() - start
        m1 = op.metrics()
        row.apiserver_requests_op = cluster.apiserver_requests() - api0
        row.reconciles = (total(m1, "dedicap_reconcile_duration_seconds_count")
                          - total(m0, "dedicap_reconcile_duration_seconds_count"))
        row.op_requests = (total(m1, "dedicap_api_requests_total")
                           - total(m0, "dedicap_api_requests_total"))
        row.op_requests_per_reconcile = row.op_requests / max(row.reconciles, 1)
        log(f"operator, {len(mds)}: Ready after {row.op_converge_s:.1f}s, "
            f"{row.reconciles:.0f} reconciles, {row.op_requests:.0f} requests")

        # The Events that explain the convergence are posted in the background, and each
        # autoscaled ModelDeployment's first evaluation writes its MetricsAvailable condition
        # once: the idle window starts after both (the Events' lag is a figure of its own).
        wait(lambda: total(op.metrics(), "dedicap_events_pending") == 0
             and all_evaluated(cluster, prefix), "Events posted, first evaluations written",
             args.timeout, 0.5)
        row.events_lag_s = time.monotonic() - start - row.op_converge_s
        log(f"operator, {len(mds)}: every Event posted {row.events_lag_s:.1f}s after Ready")
        # Idle: nothing changes for idle_s.
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        profiler = (subprocess.Popen(
            [py_spy, "record", "--pid", str(op.proc.pid), "--nonblocking", "--rate", "50",
             "--duration", str(round(args.idle)), "--format", "raw", "--output",
             str(args.profile_idle)], stdout=subprocess.DEVNULL)
            if args.profile_idle else None)
        cpu_a, m_a, t_a = op.stats.cpu_s(), op.metrics(), time.monotonic()
        time.sleep(args.idle)
        cpu_b, m_b, t_b = op.stats.cpu_s(), op.metrics(), time.monotonic()
        row.idle_s = t_b - t_a
        if profiler is not None:
            profiler.wait(60)
            log(f"operator, {len(mds)}: idle profile (py-spy, raw) in {args.profile_idle}")
        row.idle_cpu_pct = 100 * (cpu_b - cpu_a) / row.idle_s
        peering = ("clusterkopfpeerings",)
        row.idle_writes = writes(m_b, peering) - writes(m_a, peering)
        row.idle_writes_peering = (writes(m_b) - writes(m_a)) - row.idle_writes
        idle_by = {k.removeprefix("dedicap_api_requests_total"): v - m_a.get(k, 0.0)
                   for k, v in m_b.items() if k.startswith("dedicap_api_requests_total{")
                   and WRITE.search(k) and v > m_a.get(k, 0.0)}
        if idle_by:
            log(f"operator, {len(mds)}: idle writes by request: {idle_by}")
        evals = (total(m_b, "dedicap_evaluation_duration_seconds_count")
                 - total(m_a, "dedicap_evaluation_duration_seconds_count"))
        seconds = (total(m_b, "dedicap_evaluation_duration_seconds_sum")
                   - total(m_a, "dedicap_evaluation_duration_seconds_sum"))
        row.eval_ms_per_md = 1000 * seconds / max(evals, 1)
        per_md: dict[str, float] = {}
        for key, value in m_b.items():
            if key.startswith("dedicap_scale_decisions_total{"):
                md = re.search(r'modeldeployment="([^"]+)",namespace="([^"]+)"', key)
                if md:
                    name = f"{md[2]}/{md[1]}"
                    per_md[name] = per_md.get(name, 0.0) + value - m_a.get(key, 0.0)
        row.autoscaled = sum(1 for m in mds if "autoscaling" in m["spec"])
        row.min_evaluations = min(per_md.values()) if per_md else 0.0
        row.expected_evaluations = row.idle_s / args.evaluation_interval
        log(f"operator, {len(mds)}: idle {row.idle_cpu_pct:.2f}% CPU, "
            f"{row.idle_writes:.0f} writes (+{row.idle_writes_peering:.0f} peering) in "
            f"{row.idle_s:.0f}s; evaluation {row.eval_ms_per_md:.2f} ms/MD, fewest evaluations "
            f"{row.min_evaluations:.0f} of {row.expected_evaluations:.1f} expected over "
            f"{len(per_md)}/{row.autoscaled} autoscaled")

        # The image roll, through the ModelDeployments.
        start = time.monotonic()

        def roll(raw: dict[str, Any]) -> None:
            cluster.kube.patch_merge("ModelDeployment", raw["metadata"]["name"],
                                     {"spec": {"triton": {"image": IMAGES[1]}}},
                                     namespace=raw["metadata"]["namespace"])
        if not args.no_roll:
            with ThreadPoolExecutor(args.workers) as pool:
                list(pool.map(roll, created))
            wait(lambda: all_ready(cluster, prefix, len(mds), IMAGES[1]), "operator roll",
                 args.timeout, 2.0)
            row.op_update_s = time.monotonic() - start
            log(f"operator, {len(mds)}: rolled after {row.op_update_s:.1f}s")
        row.op_delete_s = delete_all(cluster, created, prefix, args.workers, args.timeout)
        log(f"operator, {len(mds)}: deleted after {row.op_delete_s:.1f}s")
        row.op_cpu_s = op.stats.cpu_s() - cpu0
        row.op_peak_rss_mb = op.stats.peak_rss_mb()
        row.watch_restarts = total(op.metrics(), "dedicap_watch_restarts_total")
    finally:
        op.stop()


# ----------------------------------------------------------------------------- report


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "n/a"


def table(rows: list[Row]) -> str:
    head = ("| ModelDeployments | lower bound s | operator s | ratio | roll: bound / operator s "
            "| delete: bound / operator s | requests / reconcile | operator CPU s | peak RSS MB "
            "| Events posted s after | idle CPU % | idle writes (peering) | eval ms / MD "
            "| fewest evaluations / expected | watch restarts |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r.count} | {r.raw_converge_s:.1f} | {r.op_converge_s:.1f} | "
            f"{_ratio(r.op_converge_s, r.raw_converge_s)} | {r.raw_update_s:.1f} / "
            f"{r.op_update_s:.1f} | {r.raw_delete_s:.1f} / {r.op_delete_s:.1f} | "
            f"{r.op_requests_per_reconcile:.2f} | {r.op_cpu_s:.1f} | {r.op_peak_rss_mb:.0f} | "
            f"{r.events_lag_s:.1f} | {r.idle_cpu_pct:.2f} | "
            f"{r.idle_writes:.0f} ({r.idle_writes_peering:.0f}) | "
            f"{r.eval_ms_per_md:.2f} | {r.min_evaluations:.0f} / {r.expected_evaluations:.1f} | "
            f"{r.watch_restarts:.0f} |")
    return "\n".join(lines)


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    counts = [r.count for r in rows]
    ax.plot(counts, [r.raw_converge_s for r in rows], "o--", label="lower bound (plain client)")
    ax.plot(counts, [r.op_converge_s for r in rows], "o-", label="dedicap operator")
    ax.plot(counts, [1.5 * r.raw_converge_s for r in rows], ":", color="grey",
            label="1.5 x lower bound")
    ax.set_xlabel("ModelDeployments applied at once")
    ax.set_ylabel("seconds until all Ready")
    ax.set_title("Convergence against the API server's own limit")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--counts", default="100,300,1000")
    p.add_argument("--nodes", type=int, default=500)
    p.add_argument("--namespaces", type=int, default=100)
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--autoscaled", type=float, default=0.5,
                   help="share of the ModelDeployments with spec.autoscaling")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--evaluation-interval", type=float, default=15.0)
    p.add_argument("--idle", type=float, default=60.0, help="seconds of the idle window")
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--no-roll", action="store_true",
                   help="leave out the image roll (the longest phase: at 1,000 it takes the "
                   "plain client alone over half an hour here)")
    p.add_argument("--operator-only", action="store_true",
                   help="leave out the lower bound (the plain client): for looking into the "
                   "operator alone, not for the table of record")
    p.add_argument("--profile-idle", type=Path, metavar="FILE",
                   help="record the operator over the idle window with py-spy (on PATH) into "
                   "FILE, in its raw (collapsed stacks) format")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    counts = [int(c) for c in args.counts.split(",")]

    stack = stk.Stack()
    # A fresh cluster: the objects of an interrupted run would hold the GPUs of this one.
    stk.down(stack, purge=True)
    stk.up(stack, with_dataplane=False)
    chart.install_cluster_objects(stack)
    stack.kubectl("apply", "-f", str(ROOT / "crds"))
    defs, gpupools = pool_objects(args.nodes)
    log(f"{sum(d['nodes'] for d in defs)} simulated GPU nodes in {len(defs)} pools")
    stk.ensure_nodes(stack, defs, timeout=600)
    stack.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                        "items": gpupools}))
    cluster = Cluster(stack)
    rows = []
    for n in counts:
        row = Row(n)
        tag = f"{n}-{int(time.time()) % 100000}"
        if not args.operator_only:
            raw_run(cluster, row, modeldeployments(f"fr{tag}", n, min(args.namespaces, n),
                                                   args.replicas, 0.0, IMAGES[0]),
                    f"fr{tag}", args.workers, args.timeout, roll=not args.no_roll)
        operator_run(cluster, row, modeldeployments(f"fo{tag}", n, min(args.namespaces, n),
                                                    args.replicas, args.autoscaled, IMAGES[0]),
                     f"fo{tag}", args, args.out)
        rows.append(row)
        print(table(rows), flush=True)
    text = table(rows)
    (args.out / "fleet.md").write_text(
        "# Fleet benchmark\n\n`python benchmarks/fleet.py "
        + " ".join(sys.argv[1:] if argv is None else argv) + "`\n\n" + text + "\n")
    (args.out / "fleet.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    plot(rows, args.out / "fleet.png")
    print(text)
    print(f"wrote {args.out / 'fleet.md'}, fleet.json, fleet.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
