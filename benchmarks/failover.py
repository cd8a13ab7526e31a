"""Failover and handover of the operator installed by the Helm chart, on the local stack.

    python benchmarks/failover.py              5 rounds of each scenario (about 3 minutes)
    python benchmarks/failover.py --quick      2 rounds (about 1.5 minutes)

The operator's two pods run as processes from the image (`make image` first) on the local
stack's process nodes. The times come from the operators' own logs (kopf's "Resuming
operations" line when a process starts acting, "Signal SIGTERM is received" when a graceful stop
begins) and from the moment the benchmark kills a process. Scenarios:

- **kill**: SIGKILL of the acting process. Its container restarts at once (as a kubelet
  restarts it), its first keep-alive replaces the dead process's entry in the peering object,
  and the standby acts on that event.
- **node lost**: SIGKILL of the acting process and its pod removed at once (what a lost node
  amounts to): no restart says the process is gone, so the standby acts when the dead entry
  expires, at most `peering.lifetimeSeconds` after its last keep-alive.
- **upgrade**: `helm upgrade` with a changed value: the acting operator's graceful stop (its
  goodbye in the peering object) hands over to the standby that the rolling update had
  started; the time from its stop to the successor acting (negative: they overlapped).

Prints a table (median and max per scenario) and writes benchmarks/results/failover.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from dedicap_local import chart, images
from dedicap_local import stack as stk

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
LIFETIME_S = 15  # the chart's default peering.lifetimeSeconds


def wait_for(probe: Callable[[], Any], what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


class Bench:
    def __init__(self, stack: stk.Stack, namespace: str, values: Path) -> None:
        self.stack = stack
        self.namespace = namespace
        self.values = values

    def helm(self, *args: str) -> None:
        subprocess.run([chart.helm(self.stack), "--kubeconfig", str(self.stack.kubeconfig),
                        *args], check=True, capture_output=True, text=True, timeout=400)

    def pods(self) -> list[dict[str, Any]]:
        out = self.stack.kubectl("get", "pods", "-n", self.namespace, "-l",
                                 "app.kubernetes.io/component=operator", "-o", "json").stdout
        return [p for p in json.loads(out)["items"] if not p["metadata"].get(
            "deletionTimestamp")]

    def ready(self) -> list[dict[str, Any]]:
        return [p for p in self.pods() if any(c["type"] == "Ready" and c["status"] == "True"
                                              for c in p["status"].get("conditions", []))]

    def intervals(self) -> list[tuple[str, datetime, datetime | None]]:
        return chart.acting_intervals(chart.pod_logs(self.stack.run_dir, self.namespace))

    def settle(self) -> dict[str, Any]:
        """Two ready pods, one acting: return the acting pod."""
        wait_for(lambda: len(self.ready()) == 2, "two ready operator pods", 300)
        names = {p["metadata"]["name"]: p for p in self.ready()}
        acting = wait_for(lambda: [i for i in self.intervals()
                                   if i[2] is None and i[0] in names], "one acting", 120)
        return names[acting[-1][0]]

    def acts_after(self, when: datetime, other_than: str = "") -> datetime | None:
        for name, start, _ in self.intervals():
            if start > when and name != other_than:
                return start
        return None

    def kill(self, *, lose_node: bool) -> float:
        pod = self.settle()
        name = pod["metadata"]["name"]
        pid = chart.operator_process(pod)
        killed = datetime.now(UTC)
        subprocess.run(["kill", "-KILL", str(pid)], check=True)
        if lose_node:
            self.stack.kubectl("delete", "pod", name, "-n", self.namespace, "--force",
                               "--grace-period=0")
        took = wait_for(lambda: self.acts_after(killed, other_than=name),
                        "another process acting", LIFETIME_S * 4)
        return float((took - killed).total_seconds())

    def upgrade(self, round_: int) -> float:
        """The longest stretch without an acting process across one rolling upgrade (one or
        two handovers: the old pods go newest first, the acting one may not be the last)."""
        self.settle()
        old = {p["metadata"]["name"] for p in self.pods()}
        started = datetime.now(UTC)
        self.helm("upgrade", chart.RELEASE, str(chart.CHART), "-n", self.namespace, "-f",
                  str(self.values), "--set", f"resyncSeconds={31 + round_}", "--wait",
                  "--timeout", "300s")
        wait_for(lambda: {p["metadata"]["name"] for p in self.pods()}.isdisjoint(old),
                 "old pods gone", 120)
        wait_for(lambda: [i for i in self.intervals() if i[0] not in old and i[2] is None],
                 "a new pod acting", LIFETIME_S * 4)
        intervals = self.intervals()
        gaps = []
        for name, _, end in intervals:
            if end is None or end < started or name not in old:
                continue
            # The successor: the next process to act from shortly before this one stopped
            # (an overlap counts as a negative gap).
            successors = [start for other, start, _ in intervals
                          if other != name and start >= end - timedelta(seconds=5)]
            if successors:
                gaps.append((min(successors) - end).total_seconds())
        return float(max(gaps))


def summarize(samples: dict[str, list[float]]) -> list[dict[str, Any]]:
    return [{"scenario": name, "rounds": len(xs), "median_s": round(statistics.median(xs), 3),
             "max_s": round(max(xs), 3), "min_s": round(min(xs), 3)}
            for name, xs in samples.items()]


def write(rows: list[dict[str, Any]], samples: dict[str, list[float]], device: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "failover.json").write_text(json.dumps(
        {"lifetime_s": LIFETIME_S, "machine": device, "rows": rows, "samples": samples},
        indent=1) + "\n")
    lines = ["| scenario | rounds | median s | max s | min s |", "|---|---|---|---|---|"]
    lines += [f"| {r['scenario']} | {r['rounds']} | {r['median_s']} | {r['max_s']} | "
              f"{r['min_s']} |" for r in rows]
    (RESULTS / "failover.md").write_text(
        f"Operator failover on the local stack ({device}; peering lifetime {LIFETIME_S} s). "
        "`python benchmarks/failover.py`.\n\n" + "\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    for i, xs in enumerate(samples.values()):
        ax.scatter(xs, [i] * len(xs), alpha=0.7)
    ax.axvline(LIFETIME_S, linestyle="--", color="grey", label="peering lifetime")
    ax.set_yticks(range(len(samples)), list(samples))
    ax.set_xlabel("seconds until another operator acts")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(RESULTS / "failover.png", dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    args = parser.parse_args(argv)
    rounds = 2 if args.quick else args.rounds
    stack = stk.Stack()
    if not all(stk.status(stack)[n] for n in stk.COMPONENTS):
        stk.up(stack)
    chart.install_cluster_objects(stack)
    archive = sorted((ROOT / "dist").glob("dedicap_*.oci.tar"))
    if not archive:
        raise SystemExit("no image: run `make image` first")
    images.load(stack.run_dir, archive[-1])
    suffix = uuid.uuid4().hex[:6]
    namespace = f"dcp-failover-{suffix}"
    stack.kubectl("create", "namespace", namespace)
    with tempfile.TemporaryDirectory() as tmp:
        values = Path(tmp) / "values.yaml"
        values.write_text(yaml.safe_dump(chart.local_values(stack, namespace, LIFETIME_S)))
        chart.adopt(stack, chart.template(stack, chart.RELEASE, namespace).stdout, namespace)
        bench = Bench(stack, namespace, values)
        samples: dict[str, list[float]] = {"kill": [], "node lost": [], "upgrade": []}
        try:
            bench.helm("install", chart.RELEASE, str(chart.CHART), "-n", namespace, "-f",
                       str(values), "--wait", "--timeout", "300s")
            for i in range(rounds):
                samples["kill"].append(bench.kill(lose_node=False))
                samples["node lost"].append(bench.kill(lose_node=True))
                samples["upgrade"].append(bench.upgrade(i))
                print(f"round {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s"
                                                     for k, v in samples.items()), flush=True)
        finally:
            subprocess.run([chart.helm(stack), "--kubeconfig", str(stack.kubeconfig),
                            "uninstall", chart.RELEASE, "-n", namespace, "--wait"],
                           capture_output=True, check=False)
            stack.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
            stack.kubectl("delete", "clusterkopfpeering", namespace, "--ignore-not-found",
                          check=False)
            chart.install_cluster_objects(stack)
    rows = summarize(samples)
    print(f"\n{'scenario':<10} {'rounds':>6} {'median s':>9} {'max s':>7} {'min s':>7}")
    for r in rows:
        print(f"{r['scenario']:<10} {r['rounds']:>6} {r['median_s']:>9} {r['max_s']:>7} "
              f"{r['min_s']:>7}")
    write(rows, samples, "2 cores, local stack")
    return 0


if __name__ == "__main__":
    sys.exit(main())
