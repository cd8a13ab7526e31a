"""The live autoscaler on the local stack, side by side with the simulator that predicts it.

    python benchmarks/live.py                       # steps 2x, 4x, 6x and a 20-minute replay
    python benchmarks/live.py --only steps          # about 15 minutes
    python benchmarks/live.py --only replay         # about 22 minutes
    python benchmarks/live.py --quick               # a smoke run: one 4x step, 5-minute replay
    python benchmarks/live.py --phases 10           # simulated steps at 10 phases, seconds

Everything live is real: the operator (`dedicap run`, a process), real `tritonserver` replicas
started by the data plane for the pods the scheduler binds, the stack's Prometheus scraping
them every 2 s, and open-loop clients (tritonclient, gRPC) whose every request is timed. The
replica is the demo's: the Python backend holds a batch of b <= 4 requests for 40 + 10*b ms
(50 req/s saturated), dynamic batching with a 5-ms delay, p95 <= 200 ms.

(a) **Step response.** For each factor f: a fresh ModelDeployment (1 to 8 replicas) warms up at
the base rate, then the load steps to f times it. From the clients' requests (by completion
time): the time from the step to the first full minute within the SLO (p95 and errors), the
clients' p95 during that transition, the replicas over time, the scale-ups after recovery and
the overshoot (the most replicas asked for over the count the step settles at). The goal: back
within start-up + one scrape + two evaluation intervals + 15 s, no scale-up after that.

(b) **Trace replay.** A load shaped by the Azure conversation trace, time-compressed to
`--replay-minutes` and scaled to `--replay-mean` req/s, replayed live; the very same request
times go through the simulator with the operator's settings (scrape, windows, evaluation
interval, Triton's summary window), the start-up measured live and the same replica model: as
configured (nominal) and as learned from the live run's own Triton metrics (the live policy's
fit). Compared: SLO-minute attainment, replica-minutes and scale events.

Tables and plots go to benchmarks/results/live.{md,json}, live-steps.png, live-replay.png; every
evaluation, live (from the operator's log) and simulated, with the policy's reason, to
live-decisions.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from dedicap.api.models import ModelDeployment
from dedicap.controller.policy_config import AutoscalerDefaults, policy_config
from dedicap.decide.policy import PolicyConfig
from dedicap.metrics.prometheus import PrometheusClient
from dedicap.sim import history, replica_models
from dedicap.sim import latency as lh
from dedicap.sim.baselines import PolicyScaler
from dedicap.sim.service import ServiceModel
from dedicap.sim.simulator import SimConfig, Simulation
from dedicap.sim.traces import Trace, read_trace, scale_arrivals
from dedicap_local import chart, dataplane, demo, loadgen, procs
from dedicap_local import stack as stk

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
NAME = "bot"
# The demo's replica, SLO and operator settings (deploy/local/dedicap_local/demo.py).
REPLICA = demo.DEMO_SIM
TARGET_MS = demo.TARGET_MS
ERROR_MAX = demo.ERROR_MAX


@dataclass(frozen=True)
class Loop:
    """How the operator runs (its flags), and what the simulator is told to do the same."""

    evaluation_s: float = demo.LOOP["evaluation_s"]
    window_s: float = demo.LOOP["window_s"]
    startup_s: float = demo.LOOP["startup_s"]  # the policy's belief; the simulator replays
    scrape_s: float = demo.LOOP["scrape_s"]  # the measured one

    def operator_args(self) -> list[str]:
        return ["--evaluation-interval", f"{self.evaluation_s:g}",
                "--scrape-interval", f"{self.scrape_s:g}",
                "--metrics-window", f"{self.window_s:g}",
                "--replica-startup", f"{self.startup_s:g}"]

    def defaults(self) -> AutoscalerDefaults:
        return AutoscalerDefaults(evaluation_interval_s=self.evaluation_s,
                                  startup_delay_s=self.startup_s,
                                  scrape_interval_s=self.scrape_s, window_s=self.window_s)

    def bound_s(self, startup_s: float) -> float:
        """The step-response goal: start-up + one scrape + two evaluations + 15 s."""
        return startup_s + self.scrape_s + 2 * self.evaluation_s + 15.0


def md_doc(namespace: str, loop: Loop, max_replicas: int = 8) -> dict[str, Any]:
    return {
        "apiVersion": "dedicap.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": {
            "model": {"name": NAME, "repository": "s3://models/triton", "backend": "python",
                      # the replica's config.pbtxt, as a tenant would repeat it
                      "maxBatchSize": int(REPLICA["max_batch_size"]),
                      "maxQueueDelayMicroseconds": int(REPLICA["max_queue_delay_us"])},
            "resources": {"gpusPerReplica": 1, "gpuMemoryGiB": 20},
            "placement": {"pools": ["h100"]},
            "autoscaling": {
                "minReplicas": 1, "maxReplicas": max_replicas,
                "slo": {"latency": {"percentile": 95, "targetMs": TARGET_MS},
                        "errorRate": {"max": ERROR_MAX}},
                "behavior": {"evaluationIntervalSeconds": int(loop.evaluation_s)},
            },
        },
    }


def the_policy(loop: Loop) -> PolicyConfig:
    """The PolicyConfig the live operator runs for `md_doc` (its own mapping)."""
    md = ModelDeployment.model_validate(md_doc("x", loop))
    assert md.spec.autoscaling is not None
    return policy_config(md.spec.autoscaling, loop.defaults(), md.spec.model.metrics_profile,
                         md.spec.model)


def nominal_replica() -> ServiceModel:
    return ServiceModel(name="local replica (nominal)", t0=REPLICA["base_ms"] / 1000.0,
                        t1=REPLICA["per_item_ms"] / 1000.0,
                        max_batch=int(REPLICA["max_batch_size"]),
                        max_queue_delay=REPLICA["max_queue_delay_us"] / 1e6, queue_timeout=None)


# ----------------------------------------------------------------------------- measurement


Decision = tuple[float, int, int, str]
# the operator's log line for each evaluation (dedicap.controller.autoscale)
EVALUATION = re.compile(r"^\[(?P<when>[\d-]+ [\d:]+,\d+)\] .*?(?P<md>\S+/\S+): "
                        r"(?:up|down|hold) (?P<old>\d+) -> (?P<new>\d+) \[[^]]*\] .*?"
                        r"rate=\S+: (?P<why>.*)$")


@dataclass
class Seconds:
    """Per-second request outcomes by completion time: latency histograms, counts, errors;
    and the replicas (asked for, held, serving) in each second."""

    hist: np.ndarray  # [second, bin]
    done: np.ndarray  # requests that completed or failed in the second
    errors: np.ndarray
    asked: np.ndarray
    held: np.ndarray
    serving: np.ndarray
    # every evaluation: (s from the start, replicas before, after, the policy's reason)
    decisions: list[Decision] = field(default_factory=list)

    @property
    def seconds(self) -> int:
        return len(self.done)

    def window_p95_ms(self, a: int, b: int) -> float:
        return 1000.0 * lh.quantile(self.hist[max(a, 0):b].sum(axis=0), 0.95)

    def window_met(self, a: int, b: int) -> bool:
        done = float(self.done[a:b].sum())
        if done <= 0:
            return True
        p95 = self.window_p95_ms(a, b)
        return not p95 > TARGET_MS and float(self.errors[a:b].sum()) / done <= ERROR_MAX

    def recovery_s(self, step_at: int, end: int) -> float | None:
        """Seconds from the step to the start of the first full minute within the SLO."""
        for t in range(step_at, end - 60 + 1):
            if self.window_met(t, t + 60):
                return float(t - step_at)
        return None

    def minutes(self, start: int = 0) -> tuple[int, int]:
        """(met, scored) whole minutes from second `start`."""
        met = scored = 0
        for m in range((self.seconds - start) // 60):
            a = start + 60 * m
            if self.done[a:a + 60].sum() > 0:
                scored += 1
                met += self.window_met(a, a + 60)
        return met, scored

    def replica_minutes(self, start: int = 0) -> float:
        return float(self.held[start:].sum()) / 60.0

    def scale_events(self, start: int = 0) -> int:
        return int((np.diff(self.held[start:]) != 0).sum())


def live_seconds(report: loadgen.Report, timeline: list[dict[str, float]],
                 length_s: int) -> Seconds:
    hist = np.zeros((length_s, lh.N_BINS), dtype=np.float64)
    done = np.zeros(length_s)
    errors = np.zeros(length_s)
    for sent, latency in report.timeline:
        at = int(sent + (latency if math.isfinite(latency) else 0.0))
        if not 0 <= at < length_s:
            continue
        done[at] += 1
        if math.isfinite(latency):
            lh.add(hist[at], np.array([latency]))
        else:
            errors[at] += 1
    asked, held, serving = (np.zeros(length_s) for _ in range(3))
    for i in range(length_s):
        # the newest poll at or before the second (the poller starts with the load)
        row = next((r for r in reversed(timeline) if r["t"] <= i + 0.5), None)
        if row is not None:
            asked[i], held[i], serving[i] = row["asked"], row["pods"], row["serving"]
    return Seconds(hist, done, errors, asked, held, serving)


def sim_seconds(sim: Simulation) -> Seconds:
    s = sim.series
    assert sim.tick_hist is not None
    return Seconds(hist=sim.tick_hist.astype(np.float64),
                   done=s["successes"] + s["rejected"] + s["backend"] + s["unavailable"],
                   errors=s["rejected"] + s["backend"] + s["unavailable"],
                   asked=s["asked"].copy(), held=s["held"].copy(),
                   serving=s["ready"].copy())


class Poller:
    """Polls the ModelDeployment and its pods every second (the official client)."""

    def __init__(self, stack: stk.Stack, namespace: str) -> None:
        from kubernetes import client, config

        api = config.new_client_from_config(config_file=str(stack.kubeconfig))
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.stack = stack
        self.namespace = namespace
        self.rows: list[dict[str, float]] = []
        self.created: dict[str, float] = {}  # pod -> creation (unix)
        self.serving_since: dict[str, float] = {}  # pod -> first seen serving (unix)
        self.t0 = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="poller", daemon=True)

    def start(self, t0: float) -> None:
        self.t0 = t0
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            try:
                md = self.custom.get_namespaced_custom_object(
                    "dedicap.dev", "v1alpha1", self.namespace, "modeldeployments", NAME,
                    _request_timeout=5)
                pods = self.core.list_namespaced_pod(
                    self.namespace, label_selector=f"dedicap.dev/modeldeployment={NAME}",
                    _request_timeout=5).items
            except Exception:  # a slow API server costs one sample, not the run
                self._stop.wait(1.0)
                continue
            serving = {e["pod"] for e in dataplane.read_endpoints(self.stack.run_dir,
                                                                  self.namespace, NAME)}
            for pod in pods:
                meta = pod.metadata
                if meta is None or meta.name is None or meta.creation_timestamp is None:
                    continue
                self.created.setdefault(meta.name, meta.creation_timestamp.timestamp())
                if meta.name in serving:
                    self.serving_since.setdefault(meta.name, now)
            spec = md.get("spec", {}) if isinstance(md, dict) else {}
            self.rows.append({"t": now - self.t0,
                              "asked": float(spec.get("replicas", 1)),
                              "pods": float(len(pods)), "serving": float(len(serving))})
            self._stop.wait(max(0.0, 1.0 - (time.time() - now)))

    def startups(self, after: float) -> list[float]:
        """Seconds from creation to serving of the pods created after `after` (unix)."""
        return [self.serving_since[p] - c for p, c in self.created.items()
                if c > after and p in self.serving_since]

    def scale_ups(self) -> list[float]:
        """Times (s from t0) at which the count asked for rose."""
        out = []
        for prev, row in zip(self.rows, self.rows[1:], strict=False):
            if row["asked"] > prev["asked"]:
                out.append(row["t"])
        return out


# ----------------------------------------------------------------------------- the stack


class Bench:
    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.stack = stk.Stack()
        states = stk.status(self.stack)
        self.was_running = all(states[name] for name in stk.COMPONENTS)
        if not self.was_running:
            from dedicap_local.cli import build

            build()
            # from an empty cluster, as the tests start: what another run left (the demo's
            # tenants and their pods) would share the cores, and kwok, whose address pool is
            # in memory, hands a restarted stack's old pods' addresses to new pods
            stk.down(self.stack, purge=True)
        stk.up(self.stack)
        chart.install_cluster_objects(self.stack)
        self.stack.kubectl("apply", "-f", str(ROOT / "crds"))
        self.stack.wait_established("modeldeployments.dedicap.dev", "gpupools.dedicap.dev")
        self.stack.kubectl("apply", "-f", str(ROOT / "deploy" / "examples" / "gpupools.yaml"))
        self.peering = f"dedicap-live-{uuid.uuid4().hex[:6]}"
        self.proc = "operator-live"
        procs.start(self.stack.run_dir, self.proc, [
            sys.executable, "-m", "dedicap.cli", "run", "--namespace", "dcp-live-*",
            "--peering", self.peering, "--peering-lifetime", "10",
            "--pool-refresh-seconds", "2", "--resync-seconds", "5",
            "--prometheus-url", self.stack.prometheus_url, *loop.operator_args(), "--verbose"],
            env={"KUBECONFIG": str(self.stack.kubeconfig), "PYTHONUNBUFFERED": "1"}, cwd=ROOT)

    def close(self) -> None:
        procs.stop(self.stack.run_dir, self.proc)
        self.stack.kubectl("delete", "clusterkopfpeering", self.peering, "--ignore-not-found",
                           check=False)
        if not self.was_running:
            stk.down(self.stack)

    def deploy(self) -> str:
        namespace = f"dcp-live-{uuid.uuid4().hex[:6]}"
        self.stack.kubectl("create", "namespace", namespace)
        sim = dataplane.read_sim(self.stack.run_dir)
        sim.setdefault("modeldeployments", {})[f"{namespace}/{NAME}"] = REPLICA
        dataplane.write_sim(self.stack.run_dir, sim)
        self.stack.kubectl("apply", "-f", "-", input=json.dumps(md_doc(namespace, self.loop)))
        procs.wait_for(lambda: len(dataplane.read_endpoints(self.stack.run_dir, namespace,
                                                            NAME)) >= 1,
                       "a serving replica", 180, self.stack.run_dir / "logs" / "dataplane.log")
        return namespace

    def decisions(self, namespace: str, t0: float, length_s: float) -> list[Decision]:
        """The operator's evaluations of the ModelDeployment in `namespace` over the run, from
        its log (times in s from `t0`, unix)."""
        path = self.stack.run_dir / "logs" / f"{self.proc}.log"
        out: list[Decision] = []
        for line in path.read_text(errors="replace").splitlines():
            m = EVALUATION.match(line)
            if m is None or m["md"] != f"{namespace}/{NAME}":
                continue
            t = datetime.strptime(m["when"], "%Y-%m-%d %H:%M:%S,%f").timestamp() - t0
            if t <= length_s:
                out.append((round(t, 1), int(m["old"]), int(m["new"]), m["why"]))
        return out

    def remove(self, namespace: str) -> None:
        self.stack.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        sim = dataplane.read_sim(self.stack.run_dir)
        sim.get("modeldeployments", {}).pop(f"{namespace}/{NAME}", None)
        dataplane.write_sim(self.stack.run_dir, sim)

    def drive(self, namespace: str, profile: list[loadgen.Step],
              arrivals: Sequence[float] | None = None) -> tuple[loadgen.Report, Poller]:
        poller = Poller(self.stack, namespace)
        total = sum(s.duration_s for s in profile)
        load = loadgen.Background(
            loadgen.endpoints_for(namespace, NAME, self.stack.run_dir), profile, seed=7,
            timeout_s=30.0, max_in_flight=4000, max_requests=None, arrivals=arrivals)
        poller.start(time.time())
        report = load.join(timeout=total + 60)
        poller.stop()
        # the poller's clock starts a moment before the clients': put both on the clients'
        shift = report.started_at - poller.t0
        for row in poller.rows:
            row["t"] -= shift
        poller.t0 = report.started_at
        return report, poller


# ----------------------------------------------------------------------------- the runs


class RecordingScaler(PolicyScaler):
    """The policy as the simulator runs it, keeping every evaluation as the operator logs it."""

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__(config)
        self.log: list[Decision] = []

    def desired(self, view: Any, now: float, current: int) -> tuple[int, str]:
        n, why = super().desired(view, now, current)
        self.log.append((round(now, 1), current, n, why))
        return n, why


def simulate_seconds(times: np.ndarray, length_s: int, loop: Loop, replica: ServiceModel,
                     startup_s: float, initial: int = 1) -> tuple[Seconds, int]:
    trace = Trace(name="live arrivals", duration=float(length_s), times=np.sort(times))
    cfg = SimConfig(service=replica, slo_percentile=95.0, slo_target_ms=TARGET_MS,
                    slo_error_max=ERROR_MAX, startup_delay_s=startup_s,
                    scrape_interval_s=loop.scrape_s, window_s=loop.window_s,
                    engine="exact", initial_replicas=initial, tick_histograms=True, seed=3)
    scaler = RecordingScaler(the_policy(loop))
    sim = Simulation(trace, scaler, cfg)
    sim.run()
    ups = sum(1 for e in sim.events if e.new > e.old)
    return replace(sim_seconds(sim), decisions=scaler.log), ups


@dataclass
class StepResult:
    factor: float
    base_rps: float
    step_at: int
    length: int
    live: Seconds
    sim: Seconds
    startups: list[float]
    live_scale_ups: list[float]
    sim_scale_ups: list[float] = field(default_factory=list)


def sent_times(report: loadgen.Report) -> np.ndarray:
    return np.array(sorted(t for t, _ in report.timeline))


def run_step(bench: Bench, factor: float, base_rps: float, warm_s: int, step_s: int
             ) -> StepResult:
    namespace = bench.deploy()
    try:
        profile = [loadgen.Step(warm_s, base_rps), loadgen.Step(step_s, base_rps * factor)]
        report, poller = bench.drive(namespace, profile)
    finally:
        bench.remove(namespace)
    length = warm_s + step_s
    live = replace(live_seconds(report, poller.rows, length),
                   decisions=bench.decisions(namespace, report.started_at, length))
    startups = poller.startups(after=report.started_at)
    startup = statistics.median(startups) if startups else bench.loop.startup_s
    sim, _ = simulate_seconds(sent_times(report), length, bench.loop, nominal_replica(),
                              startup)
    sim_ups = [float(t) for t in np.nonzero(np.diff(sim.asked) > 0)[0] + 1]
    return StepResult(factor, base_rps, warm_s, length, live, sim, startups,
                      poller.scale_ups(), sim_ups)


def replay_arrivals(minutes: float, mean_rps: float, seed: int = 11) -> tuple[np.ndarray, str]:
    """The Azure conversation trace compressed to `minutes`, at `mean_rps` (Poisson arrivals
    at the compressed trace's 10-s moving-average rate)."""
    base = read_trace(Path(TRACES) / "AzureLLMInferenceTrace_conv.csv")
    squeeze = base.duration / (minutes * 60.0)
    assert base.times is not None
    squeezed = Trace(name="azure-conv", duration=base.duration / squeeze,
                     times=base.times / squeeze)
    factor = mean_rps / (len(base.times) / squeezed.duration)
    tr = scale_arrivals(squeezed, factor, smooth_s=10.0)
    counts = tr.tick_counts(1.0, np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)
    times = np.concatenate([k + np.sort(rng.random(int(c))) for k, c in enumerate(counts)])
    what = (f"Azure conversation trace compressed {squeeze:.2f}x to {minutes:g} minutes, "
            f"{factor:.2f}x its rate (mean {mean_rps:g} req/s)")
    return times, what


TRACES = os.environ.get("DEDICAP_TRACES", "../shared/traces")


def fitted_replica(bench: Bench, namespace: str, end: float, since_s: float) -> ServiceModel:
    """The replica the live policy learned from this run's Triton metrics."""
    client = PrometheusClient(bench.stack.prometheus_url)
    try:
        h = history.fetch_history(client, namespace, NAME, end, since_s, step_s=20.0)
        model = replica_models.from_history(
            history.history_points(h), f"{namespace}/{NAME}", window_s=20.0,
            half_life_s=1e9, max_batch=int(REPLICA["max_batch_size"]),
            max_queue_delay_s=REPLICA["max_queue_delay_us"] / 1e6, queue_timeout=None)
    finally:
        client.close()
    return replace(model.service, name="local replica (learned live)")


@dataclass
class ReplayResult:
    what: str
    length: int
    warm_s: int  # the unscored warm-up before the trace
    live: Seconds
    sims: dict[str, tuple[Seconds, int]]
    startups: list[float]
    live_scale_events: int
    replicas: dict[str, dict[str, float]]


def with_warm_up(times: np.ndarray, warm_s: int, seed: int = 13) -> np.ndarray:
    """`times` after `warm_s` seconds of Poisson arrivals at the rate of their first minute:
    the replay is a window of a service already running, so both sides start on the fleet the
    policy settles on for that rate (a cold start on one replica is the step response's
    subject, and a fleet short at the start is a miss of neither the trace nor the model)."""
    rate = float(np.count_nonzero(times < 60.0)) / 60.0
    rng = np.random.default_rng(seed)
    warm = np.sort(rng.uniform(0.0, float(warm_s), rng.poisson(rate * warm_s)))
    return np.concatenate([warm, times + warm_s])


def run_replay(bench: Bench, minutes: float, mean_rps: float,
               startup_hint: float | None, warm_s: int = 120) -> ReplayResult:
    trace_times, what = replay_arrivals(minutes, mean_rps)
    times = with_warm_up(trace_times, warm_s)
    what += f", after {warm_s} s at its first minute's rate (not scored)"
    length = warm_s + math.ceil(minutes * 60.0)
    namespace = bench.deploy()
    try:
        report, poller = bench.drive(namespace, [loadgen.Step(length, mean_rps)],
                                     arrivals=times.tolist())
        end = time.time()
        learned = fitted_replica(bench, namespace, end, length + 30)
    finally:
        bench.remove(namespace)
    live = replace(live_seconds(report, poller.rows, length),
                   decisions=bench.decisions(namespace, report.started_at, length))
    startups = poller.startups(after=report.started_at)
    startup = (statistics.median(startups) if startups
               else startup_hint if startup_hint is not None else bench.loop.startup_s)
    sent = sent_times(report)
    sims = {}
    for model in (nominal_replica(), learned):
        sims[model.name] = simulate_seconds(sent, length, bench.loop, model, startup)
    changes = sum(1 for a, b in zip(poller.rows, poller.rows[1:], strict=False)
                  if a["asked"] != b["asked"] and b["t"] >= warm_s)
    replicas = {m.name: {"batch_ms_fixed": 1000 * m.t0, "batch_ms_per_request": 1000 * m.t1,
                         "saturated_rps": m.capacity()} for m in (nominal_replica(), learned)}
    return ReplayResult(what, length, warm_s, live, sims, startups, changes, replicas)


# ----------------------------------------------------------------------------- reporting


def _fmt(x: float | None, fmt: str = ".0f", unit: str = "") -> str:
    return "never" if x is None else f"{format(x, fmt)}{unit}"


def judge_step(sec: Seconds, ups: Sequence[float], step_at: int, length: int, bound: float
               ) -> tuple[float | None, float, int, int, int, list[float], int, bool]:
    """One side of a step against the goal: (recovery s, p95 during the transition, replicas
    before, peak, end, scale-ups after recovery, overshoot, goal met)."""
    rec = sec.recovery_s(step_at, length)
    end_at = step_at + (int(rec) if rec is not None else length - step_at)
    p95 = sec.window_p95_ms(step_at, max(end_at, step_at + 1))
    before = int(sec.asked[step_at - 1])
    peak = int(sec.asked[step_at:].max())
    end = int(sec.asked[-1])
    # the goal allows the step's own reaction and forbids a second decision: a step absorbed
    # within the SLO (recovery at 0 s) still reacts once, after "recovery"
    reaction = min((t for t in ups if t >= step_at), default=None)
    after = [t for t in ups if rec is not None and t > step_at + rec and t != reaction]
    over = peak - end
    ok = rec is not None and rec <= bound and not after and over <= 1
    return rec, p95, before, peak, end, after, over, ok


def simulated_phases(loop: Loop, factors: Sequence[float], base_rps: float, phases: int,
                     seeds: int, startup_s: float, replica: ServiceModel | None = None,
                     warm_s: int = 60, step_s: int = 150) -> list[str]:
    """The simulated side alone, for steps at `phases` offsets across an evaluation interval
    (against the scrape and evaluation grid, which a live run draws once) and `seeds` Poisson
    draws each: how often the goal is met, and in how many decisions."""
    lines = ["| step | runs | goal met | back within SLO: median, max | scale-up decisions per "
             "step (mean) | second scale-ups after recovery | overshoot > 1 |",
             "|---|---|---|---|---|---|---|"]
    bound = loop.bound_s(startup_s)
    replica = nominal_replica() if replica is None else replica
    for f in factors:
        met, recs, decisions, seconds_ups, overs = 0, [], [], 0, 0
        for k in range(phases):
            phase = loop.evaluation_s * k / phases
            for seed in range(seeds):
                rng = np.random.default_rng([seed, k, int(100 * f)])
                at = warm_s + phase
                before = np.cumsum(rng.exponential(1.0 / base_rps, int(2 * base_rps * at) + 10))
                after = at + np.cumsum(rng.exponential(1.0 / (base_rps * f),
                                                       int(2 * base_rps * f * step_s) + 10))
                times = np.concatenate([before[before < at], after[after < warm_s + step_s]])
                sec, _ = simulate_seconds(times, warm_s + step_s, loop, replica, startup_s)
                ups = [float(t) for t in np.nonzero(np.diff(sec.asked) > 0)[0] + 1]
                step_at = int(at)
                rec, _, _, _, _, late, over, ok = judge_step(sec, ups, step_at,
                                                             warm_s + step_s, bound)
                met += ok
                recs.append(math.inf if rec is None else rec)
                decisions.append(sum(1 for t in ups if t >= step_at))
                seconds_ups += len(late) > 0
                overs += over > 1
        n = phases * seeds
        lines.append(f"| {f:g}x | {n} | {met} ({met / n:.0%}) | {statistics.median(recs):.0f} s, "
                     f"{max(recs):.0f} s (goal <= {bound:.0f} s) | "
                     f"{statistics.mean(decisions):.2f} | {seconds_ups} | {overs} |")
    return lines


def step_rows(results: list[StepResult], loop: Loop) -> tuple[list[str], list[dict[str, Any]]]:
    lines = ["| step | side | back within SLO after | goal | p95 during transition | replicas "
             "before -> peak -> end | second scale-ups after recovery | overshoot |",
             "|---|---|---|---|---|---|---|---|"]
    data = []
    for r in results:
        startup = statistics.median(r.startups) if r.startups else loop.startup_s
        bound = loop.bound_s(startup)
        for side, sec, ups in (("live", r.live, r.live_scale_ups),
                               ("simulated", r.sim, r.sim_scale_ups)):
            rec, p95, before, peak, end, after, over, ok = judge_step(sec, ups, r.step_at,
                                                                      r.length, bound)
            lines.append(
                f"| {r.base_rps:g} -> {r.base_rps * r.factor:g} req/s ({r.factor:g}x) | {side} "
                f"| {_fmt(rec, '.0f', ' s')} | <= {bound:.0f} s: {'met' if ok else 'MISSED'} "
                f"| {p95:.0f} ms | {before} -> {peak} -> {end} | {len(after)} | {over} |")
            data.append({"factor": r.factor, "side": side, "recovery_s": rec, "bound_s": bound,
                         "transition_p95_ms": p95, "before": before, "peak": peak, "end": end,
                         "scale_ups_after_recovery": len(after), "overshoot": over,
                         "goal_met": ok, "startup_s": startup,
                         "startups_s": [round(x, 1) for x in r.startups]})
    return lines, data


def replay_rows(r: ReplayResult) -> tuple[list[str], dict[str, Any]]:
    lines = ["| side | replica model | SLO-minutes | attainment | replica-minutes | scale events |",
             "|---|---|---|---|---|---|"]
    met, scored = r.live.minutes(r.warm_s)
    live_rm = r.live.replica_minutes(r.warm_s)
    out: dict[str, Any] = {"what": r.what, "startups_s": [round(x, 1) for x in r.startups],
                           "replicas": r.replicas, "sides": []}
    lines.append(f"| live | the real Triton replicas | {met}/{scored} | {met / max(scored, 1):.1%} "
                 f"| {live_rm:.1f} | {r.live_scale_events} |")
    out["sides"].append({"side": "live", "met": met, "scored": scored,
                         "replica_minutes": live_rm, "scale_events": r.live_scale_events})
    for name, (sec, _ups) in r.sims.items():
        m, n = sec.minutes(r.warm_s)
        rm = sec.replica_minutes(r.warm_s)
        events = sec.scale_events(r.warm_s)
        lines.append(f"| simulated | {name} | {m}/{n} | {m / max(n, 1):.1%} | {rm:.1f} "
                     f"| {events} |")
        out["sides"].append({"side": "simulated", "model": name, "met": m, "scored": n,
                             "replica_minutes": rm, "scale_events": events,
                             "attainment_gap_points": 100 * (m / max(n, 1) - met / max(scored, 1)),
                             "replica_minutes_ratio": rm / max(live_rm, 1e-9)})
    return lines, out


def plot_steps(results: list[StepResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(9, 3.0 * len(results)), squeeze=False)
    for ax, r in zip(axes[:, 0], results, strict=True):
        for side, sec, color in (("live", r.live, "C3"), ("simulated", r.sim, "C0")):
            t = np.arange(0, r.length - 5, 5)
            p95 = [sec.window_p95_ms(a, a + 5) for a in t]
            ax.plot(t - r.step_at, p95, color=color, lw=1, label=f"p95 per 5 s, {side}")
        ax.axhline(TARGET_MS, color="grey", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_ylabel("p95 ms")
        ax.set_xlabel("seconds from the step")
        rep = ax.twinx()
        x = np.arange(r.length) - r.step_at
        rep.step(x, r.live.asked, color="C3", ls="--", lw=1, label="asked, live")
        rep.step(x, r.live.serving, color="C1", lw=1, label="serving, live")
        rep.step(x, r.sim.serving, color="C0", ls="--", lw=1, label="serving, simulated")
        rep.set_ylabel("replicas")
        rep.set_ylim(0, max(r.live.asked.max(), r.sim.asked.max()) + 1)
        ax.set_title(f"step {r.base_rps:g} -> {r.base_rps * r.factor:g} req/s", fontsize=9)
        if ax is axes[0, 0]:
            ax.legend(fontsize=7, loc="upper left")
            rep.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_replay(r: ReplayResult, rate: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    # minutes from the start of the trace (the warm-up is negative)
    minutes = (np.arange(r.length) - r.warm_s) / 60.0
    axes[0].plot((np.arange(len(rate)) * 10 - r.warm_s) / 60.0, rate, color="k", lw=1)
    axes[0].set_ylabel("offered req/s (10 s)")
    axes[1].step(minutes, r.live.serving, color="C3", lw=1, label="live, serving")
    axes[1].step(minutes, r.live.held, color="C3", lw=1, ls=":", label="live, pods")
    for (name, (sec, _)), color in zip(r.sims.items(), ("C0", "C2"), strict=False):
        axes[1].step(minutes, sec.held, color=color, lw=1, ls="--", label=f"simulated, {name}")
    axes[1].set_ylabel("replicas")
    axes[1].legend(fontsize=7)
    m = np.arange((r.length - r.warm_s) // 60)
    at = r.warm_s + 60 * m
    axes[2].plot(m + 0.5, [r.live.window_p95_ms(a, a + 60) for a in at], "o-",
                 color="C3", ms=3, label="live")
    for (name, (sec, _)), color in zip(r.sims.items(), ("C0", "C2"), strict=False):
        axes[2].plot(m + 0.5, [sec.window_p95_ms(a, a + 60) for a in at], "s--",
                     color=color, ms=3, label=f"simulated, {name}")
    axes[2].axhline(TARGET_MS, color="grey", ls=":", lw=1)
    axes[2].set_yscale("log")
    axes[2].set_ylabel("p95 ms per minute")
    axes[2].set_xlabel("minutes of the trace (scored from 0)")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    global TRACES
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("steps", "replay"), default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", default="2,4,6", help="step factors")
    ap.add_argument("--base-rps", type=float, default=20.0)
    ap.add_argument("--replay-minutes", type=float, default=20.0)
    ap.add_argument("--replay-mean", type=float, default=40.0, help="mean req/s of the replay")
    ap.add_argument("--traces", default=TRACES, help="folder with the Azure trace")
    ap.add_argument("--evaluation-interval", type=float, default=Loop.evaluation_s)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--phases", type=int, metavar="N",
                    help="no stack: simulate each step at N offsets across an evaluation "
                    "interval, --seeds draws each (seconds)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--startup", type=float, default=2.5,
                    help="with --phases: the replicas' start-up, s (measured live: 2-3)")
    ap.add_argument("--replica-ms", type=float, nargs=2, metavar=("T0", "T1"),
                    help="with --phases: a replica whose batch of n takes T0 + T1 x n ms "
                    "(e.g. as the live run learned it; default: the configured one)")
    args = ap.parse_args(argv)
    TRACES = args.traces
    if args.phases:
        factors = [float(x) for x in args.steps.split(",")]
        replica = nominal_replica()
        if args.replica_ms:
            replica = replace(replica, name="local replica (given)",
                              t0=args.replica_ms[0] / 1000.0, t1=args.replica_ms[1] / 1000.0)
        print("\n".join(simulated_phases(Loop(evaluation_s=args.evaluation_interval), factors,
                                         args.base_rps, args.phases, args.seeds, args.startup,
                                         replica)))
        return 0
    # stopped from outside: clean up (the operator, the namespaces) as on any error
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    loop = Loop(evaluation_s=args.evaluation_interval)
    factors = [4.0] if args.quick else [float(x) for x in args.steps.split(",")]
    warm_s, step_s = (45, 120) if args.quick else (60, 150)
    minutes = 5.0 if args.quick else args.replay_minutes
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "live-quick" if args.quick else "live"
    t_start = time.time()
    bench = Bench(loop)
    steps: list[StepResult] = []
    replay: ReplayResult | None = None
    try:
        if args.only in (None, "steps"):
            for f in factors:
                print(f"step x{f:g} ...", file=sys.stderr, flush=True)
                steps.append(run_step(bench, f, args.base_rps, warm_s, step_s))
        if args.only in (None, "replay"):
            print(f"replay {minutes:g} min ...", file=sys.stderr, flush=True)
            hint = (statistics.median([x for s in steps for x in s.startups])
                    if any(s.startups for s in steps) else None)
            replay = run_replay(bench, minutes, args.replay_mean, hint)
    finally:
        bench.close()
    wall = time.time() - t_start
    text = [f"# Live autoscaling on the local stack{' (quick)' if args.quick else ''}", "",
            f"Operator: evaluation every {loop.evaluation_s:g} s, Prometheus scrape "
            f"{loop.scrape_s:g} s, rate window {loop.window_s:g} s, fast-path window "
            f"{loop.defaults().short_window():g} s, start-up belief {loop.startup_s:g} s. "
            f"Replica: {REPLICA['base_ms']} + {REPLICA['per_item_ms']} ms x batch (<= "
            f"{REPLICA['max_batch_size']}), p95 <= {TARGET_MS:g} ms, errors <= {ERROR_MAX:.1%}. "
            f"Wall time {wall / 60:.0f} min on a shared 2-core machine.", ""]
    data: dict[str, Any] = {"loop": loop.__dict__, "wall_s": wall, "quick": args.quick}
    if steps:
        lines, rows = step_rows(steps, loop)
        text += ["## Step response", "", "Times from the step; \"back within SLO\" is the start "
                 "of the first full minute whose requests (by completion) meet p95 and errors. "
                 "The goal: start-up (measured: median from pod creation to serving) + one "
                 "scrape + two evaluations + 15 s, no scale-up after recovery, overshoot <= 1.",
                 "", *lines, ""]
        data["steps"] = rows
        plot_steps(steps, out / f"{name}-steps.png")
    if replay is not None:
        lines, replayed = replay_rows(replay)
        text += ["## Trace replay, live and simulated", "", replay.what + ".", "",
                 "Start-up measured live: median "
                 f"{statistics.median(replay.startups) if replay.startups else float('nan'):.1f} s"
                 f" over {len(replay.startups)} new replicas (the simulator replays that).", "",
                 *lines, ""]
        data["replay"] = replayed
        rate = np.array([replay.live.done[a:a + 10].sum() / 10.0
                         for a in range(0, replay.length, 10)])
        plot_replay(replay, rate, out / f"{name}-replay.png")
    # every evaluation, live (the operator's log) and simulated, to trace where they part
    decisions: dict[str, Any] = {"steps": [
        {"factor": r.factor, "step_at_s": r.step_at, "live": r.live.decisions,
         "simulated": r.sim.decisions} for r in steps]}
    if replay is not None:
        decisions["replay"] = {"warm_up_s": replay.warm_s, "live": replay.live.decisions,
                               **{n: sec.decisions for n, (sec, _) in replay.sims.items()}}
    (out / f"{name}-decisions.json").write_text(json.dumps(decisions, indent=0))
    md = "\n".join(text)
    print(md)
    (out / f"{name}.md").write_text(md)
    (out / f"{name}.json").write_text(json.dumps(data, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
