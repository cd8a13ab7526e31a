"""The live autoscaler: every evaluation interval, for each ModelDeployment with
`spec.autoscaling`, read Triton's signals from Prometheus, run the policy
(`dedicap.decide.policy.decide`, unchanged) and act on its answer.

One evaluation of one ModelDeployment:

1. observe: ``metrics.observe`` (one PromQL query) -> MetricsSnapshot; the ModelDeployment's
   pods -> ready and starting replicas; the reservation and pools -> the most replicas that can
   be placed now (`replica_limit`, so the policy never asks for pods that would sit Pending);
2. decide: the policy, with its state read back from the ``dedicap.dev/autoscaler-state``
   annotation (so a restarted or newly elected operator continues where the last one stopped);
3. act: a changed count is written to ``spec.replicas`` through the scale subresource, as the HPA
   does, guarded by a JSON-patch ``test`` of the count the decision started from (a concurrent
   ``kubectl scale`` wins; the next evaluation starts from it);
4. report: ``status.observed``, ``status.lastScale``, the conditions MetricsAvailable and SLOMet
   (and Degraded / CapacityConstrained, see autoscale_status.py), an Event per scale and per
   condition change, and the operator's own metrics.

Where it runs: one thread of the operator process, not kopf timers or daemons (those put a
finalizer on every ModelDeployment, and deleting one would then need a running operator). It
lists ModelDeployments itself, so it needs no kopf event, and it honours peering through
`peering.PeeringGate` (the peering object read each round, kopf's rule applied): of several
operators only the one kopf lets act evaluates.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from dedicap.api.models import ModelDeployment
from dedicap.controller import autoscale_status as st
from dedicap.controller import capacity, events
from dedicap.controller import conditions as c
from dedicap.controller.handlers import serves
from dedicap.controller.kube import Kube, KubeError
from dedicap.controller.loop import BackgroundLoop
from dedicap.controller.peering import PeeringGate
from dedicap.controller.policy_config import AutoscalerDefaults, evaluation_interval, policy_config
from dedicap.controller.reconcile import Reconciler
from dedicap.decide.policy import Decision, PolicyConfig, PolicyState, decide
from dedicap.decide.render import MANAGER, selector_string
from dedicap.metrics.exporter import OperatorMetrics, serve
from dedicap.metrics.prometheus import PrometheusClient, resolve_url
from dedicap.metrics.snapshot import (
    PROBLEM_QUERY,
    PROBLEM_UNAVAILABLE,
    MetricsSnapshot,
    QueryClient,
    observe,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AutoscalerSettings:
    defaults: AutoscalerDefaults = field(default_factory=AutoscalerDefaults)
    namespaces: tuple[str, ...] = ()  # glob patterns; empty: all
    peering: str | None = None  # the ClusterKopfPeering's name; None: standalone
    priority: int = 0
    instance: str = ""
    tick_s: float = 1.0  # how often due evaluations are looked for
    list_interval_s: float = 5.0  # how often the ModelDeployments are listed


@dataclass
class Outcome:
    """What one evaluation did (for logs and tests)."""

    namespace: str
    name: str
    snapshot: MetricsSnapshot
    decision: Decision
    code: str
    scaled: bool
    replica_limit: int | None


@dataclass
class _Tick:
    """What one round of evaluations shares: one capacity read, one Prometheus outage."""

    capacity: tuple[capacity.Snapshot, capacity.CapacityPlan] | None = None
    capacity_failed: bool = False
    outage: MetricsSnapshot | None = None


class Autoscaler(BackgroundLoop):
    def __init__(self, kube: Kube, reconciler: Reconciler, client: QueryClient | None,
                 metrics: OperatorMetrics, settings: AutoscalerSettings,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__("dedicap-autoscaler", settings.tick_s)
        self.kube = kube
        self.reconciler = reconciler
        self.client = client
        self.metrics = metrics
        self.settings = settings
        self.clock = clock
        self._due: dict[tuple[str, str], float] = {}
        self._seen_replicas: dict[tuple[str, str], int] = {}
        self._listed: list[dict[str, Any]] = []
        self._listed_at = -math.inf
        self._gate = PeeringGate(kube, settings.peering, settings.priority, "autoscaler")

    # ----------------------------------------------------------------- scheduling

    def active(self) -> bool:
        return self._gate.allows()

    def served(self, namespace: str) -> bool:
        return serves(self.settings.namespaces, namespace)

    def tick(self) -> list[Outcome]:
        """Evaluate every autoscaled ModelDeployment that is due."""
        if not self._gate.active():
            # A peer acts; start afresh when it is our turn again.
            self._due.clear()
            self._seen_replicas.clear()
            return []
        mono = time.monotonic()
        if mono - self._listed_at >= self.settings.list_interval_s:
            self._listed = [md for md in self.kube.iter("ModelDeployment")
                            if self.served(md["metadata"].get("namespace", ""))
                            and (md.get("spec") or {}).get("autoscaling")
                            and not md["metadata"].get("deletionTimestamp")]
            self._listed_at = mono
            keys = {(md["metadata"]["namespace"], md["metadata"]["name"]) for md in self._listed}
            for key in set(self._due) - keys:
                self._forget(key)
        ctx = _Tick()
        outcomes = []
        for md in self._listed:
            key = (md["metadata"]["namespace"], md["metadata"]["name"])
            if self._due.get(key, -math.inf) > mono:
                continue
            interval = self.settings.defaults.evaluation_interval_s
            try:
                outcome = self.evaluate(key[0], key[1], ctx)
            except KubeError as err:
                log.warning("autoscaling %s/%s failed: %s", *key, err)
                outcome = None
            if outcome is not None:
                interval = outcome.decision_interval
                outcomes.append(outcome.outcome)
            self._due[key] = mono + interval
        return outcomes

    def _forget(self, key: tuple[str, str]) -> None:
        self._due.pop(key, None)
        self._seen_replicas.pop(key, None)
        self.metrics.forget(*key)

    # ----------------------------------------------------------------- one evaluation

    def evaluate(self, namespace: str, name: str, ctx: _Tick | None = None
                 ) -> _Evaluated | None:
        ctx = ctx or _Tick()
        raw = self.kube.get("ModelDeployment", name, namespace)
        if raw is None or raw["metadata"].get("deletionTimestamp"):
            self._forget((namespace, name))
            return None
        try:
            md = ModelDeployment.model_validate(raw)
        except ValidationError:
            return None  # the reconciler reports the invalid spec
        spec = md.spec.autoscaling
        if spec is None:
            self._forget((namespace, name))
            return None
        with self.metrics.time_evaluation():
            return self._evaluate(raw, md, ctx)

    def _evaluate(self, raw: Mapping[str, Any], md: ModelDeployment, ctx: _Tick) -> _Evaluated:
        spec = md.spec.autoscaling
        assert spec is not None
        defaults = self.settings.defaults
        config = policy_config(spec, defaults)
        namespace, name = md.namespace, md.name
        key = (namespace, name)
        now = self.clock()
        snap = self._observe(namespace, name, config.latency_percentile, now, ctx)
        pods = self.kube.list("Pod", namespace, labels=selector_string(name))
        ready, starting = st.replica_counts(pods)
        current = md.spec.desired_replicas()
        manual = self._seen_replicas.get(key)
        state = _read_state(raw)
        limit, explanation = self._replica_limit(md, spec.max_replicas, ctx)
        window = st.observation_window(snap, ready=ready, starting=starting, current=current)
        decision = decide(config, window, state, now, limit)
        code = st.reason_code(decision, window, config)
        scaled = False
        if decision.replicas != current:
            scaled = self._scale(md, current, decision.replicas)
        self._seen_replicas[key] = decision.replicas if scaled else current

        when = datetime.fromtimestamp(now, UTC)
        events: list[tuple[str, str, str]] = []
        if manual is not None and manual != current:
            events.append(("Normal", "ManualScale", (
                f"spec.replicas went from {manual} to {current} outside the autoscaler; it is "
                "taken as the current count: scale-ups apply at the next evaluation, "
                "scale-downs after the stabilization window")))
        if scaled:
            events.append(("Normal", "ScaledUp" if decision.replicas > current else "ScaledDown",
                           f"{current} -> {decision.replicas} ({code}): {decision.reason}"))
        self._report(raw, md, snap, config, decision, code, scaled, current, limit,
                     explanation, when, events)
        self.metrics.record_decision(namespace, name,
                                     decision.direction if scaled else "hold", code)
        self.metrics.set_modeldeployment(
            namespace, name, desired_replicas=decision.replicas if scaled else current,
            ready_replicas=ready, metrics_available=snap.available,
            latency_ms=snap.latency_quantile_ms if snap.available else math.nan,
            latency_target_ms=config.latency_target_ms, percentile=config.latency_percentile,
            error_ratio=snap.error_ratio if snap.available else math.nan,
            request_rate=snap.request_rate if snap.available else math.nan,
            latency_objective=defaults.latency_objective,
            error_ratio_objective=(spec.slo.error_rate.maximum if spec.slo.error_rate
                                   else math.nan))
        log.info("%s/%s: %s %d -> %d [%s] ready=%d starting=%d limit=%s p%g=%.0fms "
                 "rate=%.1f/s: %s", namespace, name, decision.direction, current,
                 decision.replicas, code, ready, starting, limit, config.latency_percentile,
                 snap.latency_quantile_ms, snap.request_rate, decision.reason)
        return _Evaluated(Outcome(namespace, name, snap, decision, code, scaled, limit),
                          evaluation_interval(spec, defaults))

    def _observe(self, namespace: str, name: str, percentile: float, now: float,
                 ctx: _Tick) -> MetricsSnapshot:
        d = self.settings.defaults
        if self.client is None:
            return MetricsSnapshot(
                available=False, queried_at=now, window_s=d.window_s, percentile=percentile,
                problem=st.NO_PROMETHEUS,
                reason="the operator has no Prometheus address (--prometheus-url or "
                       "DEDICAP_PROMETHEUS_URL)")
        if ctx.outage is not None:
            # Prometheus did not answer this round: do not wait out its timeouts once per
            # ModelDeployment.
            return MetricsSnapshot(available=False, queried_at=now, window_s=d.window_s,
                                   percentile=percentile, problem=ctx.outage.problem,
                                   reason=ctx.outage.reason)
        snap = observe(self.client, namespace, name, d.window_s, now, percentile=percentile,
                       scrape_interval_s=d.scrape_interval_s,
                       stale_after_intervals=d.stale_after_intervals)
        if snap.problem in (PROBLEM_UNAVAILABLE, PROBLEM_QUERY):
            self.metrics.record_query_error(snap.problem)
        if snap.problem == PROBLEM_UNAVAILABLE:
            ctx.outage = snap
        return snap

    def _replica_limit(self, md: ModelDeployment, max_replicas: int, ctx: _Tick
                       ) -> tuple[int | None, str]:
        """The most replicas placeable now under the reservation and in the pools (the
        ModelDeployment's own replicas count as placeable), and why not more."""
        if ctx.capacity is None and not ctx.capacity_failed:
            try:
                snapshot = capacity.read(self.kube)
                ctx.capacity = (snapshot, capacity.plan(snapshot, datetime.now(UTC)))
            except KubeError as err:
                log.warning("cannot read capacity: %s", err)
                ctx.capacity_failed = True
        if ctx.capacity is None:
            return None, ""
        snapshot, plan = ctx.capacity
        wanted = md.model_copy(update={"spec": md.spec.model_copy(
            update={"replicas": max_replicas})})
        placement = capacity.placement_for(wanted, snapshot, plan)
        if not placement.assignments:
            return None, ""  # no eligible pool: the reconciler reports it; do not force 0
        return placement.placed, placement.message

    def _scale(self, md: ModelDeployment, current: int, desired: int) -> bool:
        """Write spec.replicas through the scale subresource, only if it still holds the count
        the decision started from. False when someone else changed it meanwhile."""
        path = f"/apis/dedicap.dev/v1alpha1/namespaces/{md.namespace}/modeldeployments/" \
               f"{md.name}/scale"
        try:
            if md.spec.replicas is None:
                # Unset: the scale subresource reads it as 0, so there is nothing to test.
                self.kube.request("PATCH", path, query={"fieldManager": MANAGER},
                                  body={"spec": {"replicas": desired}},
                                  content_type="application/merge-patch+json")
            else:
                self.kube.request("PATCH", path, query={"fieldManager": MANAGER}, body=[
                    {"op": "test", "path": "/spec/replicas", "value": current},
                    {"op": "replace", "path": "/spec/replicas", "value": desired}],
                    content_type="application/json-patch+json")
        except KubeError as err:
            if err.status in (409, 422):
                log.info("%s/%s: spec.replicas changed meanwhile; not scaling to %d (%s)",
                         md.namespace, md.name, desired, err)
                return False
            raise
        return True

    # ----------------------------------------------------------------- report

    def _report(self, raw: Mapping[str, Any], md: ModelDeployment, snap: MetricsSnapshot,
                config: PolicyConfig, decision: Decision, code: str, scaled: bool, current: int,
                limit: int | None, explanation: str, when: datetime,
                events: list[tuple[str, str, str]]) -> None:
        namespace, name = md.namespace, md.name
        state = json.dumps(decision.state.to_dict(), separators=(",", ":"))
        self.kube.patch_merge("ModelDeployment", name, {"metadata": {
            "annotations": {st.ANNOTATION_STATE: state}}}, namespace=namespace)
        spec = md.spec.autoscaling
        assert spec is not None
        with self.reconciler.lock(namespace, name):
            fresh = self.kube.get("ModelDeployment", name, namespace)
            if fresh is None:
                return
            previous = dict(fresh.get("status") or {})
            old_conditions = previous.get("conditions") or []
            updates = st.autoscaler_conditions(old_conditions, snap, spec, config, decision,
                                               explanation if limit is not None else "")
            generation = int(fresh["metadata"].get("generation", 0))
            merged = c.merge(old_conditions, updates, generation, when)
            patch: dict[str, Any] = {"observed": st.observed_status(snap, when)}
            if scaled:
                patch["lastScale"] = st.last_scale(when, current, decision.replicas, code,
                                                   decision.reason)
            if merged != old_conditions:
                patch["conditions"] = merged
            self.kube.patch_merge("ModelDeployment", name, {"status": patch},
                                  namespace=namespace, subresource="status")
        for cond in c.transitions(old_conditions, updates):
            bad = (cond.status != "True" if cond.type in (c.METRICS_AVAILABLE, c.SLO_MET)
                   else cond.is_true)
            events.append(("Warning" if bad else "Normal", cond.reason,
                           f"{cond.type} is {cond.status}: {cond.message}"))
        for type_, reason, message in events:
            self._event(fresh, type_, reason, message, when)

    def _event(self, body: Mapping[str, Any], type_: str, reason: str, message: str,
               when: datetime) -> None:
        meta = body["metadata"]
        log.info("%s/%s: %s %s: %s", meta["namespace"], meta["name"], type_, reason, message)
        events.post(self.kube, {"apiVersion": "dedicap.dev/v1alpha1", "kind": "ModelDeployment",
                                **body}, type_, reason, message,
                    instance=self.settings.instance, origin="autoscaler", when=when)


@dataclass
class _Evaluated:
    outcome: Outcome
    decision_interval: float


def _read_state(raw: Mapping[str, Any]) -> PolicyState:
    text = ((raw.get("metadata") or {}).get("annotations") or {}).get(st.ANNOTATION_STATE)
    if not text:
        return PolicyState()
    try:
        return PolicyState.from_dict(json.loads(text))
    except (ValueError, TypeError, KeyError) as err:
        log.warning("ignoring unreadable autoscaler state: %s", err)
        return PolicyState()


def make_client(url: str | None, timeout_s: float = 3.0) -> PrometheusClient | None:
    """A Prometheus client for the operator: short timeouts and one retry, so an outage costs
    an evaluation a few seconds, not the client's default worst case."""
    return None if url is None else PrometheusClient(url, timeout_s=timeout_s, retries=1)


# --------------------------------------------------------------------------- `dedicap run` wiring


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The autoscaler's flags of `dedicap run`."""
    g = p.add_argument_group("autoscaling")
    g.add_argument("--prometheus-url", default=None, metavar="URL",
                   help="Prometheus holding Triton's metrics (default: $DEDICAP_PROMETHEUS_URL; "
                   "without one, autoscaled ModelDeployments hold their replicas)")
    g.add_argument("--evaluation-interval", type=float, default=15.0, metavar="SECONDS",
                   help="default autoscaling evaluation interval "
                   "(spec.autoscaling.behavior.evaluationIntervalSeconds overrides it)")
    g.add_argument("--scrape-interval", type=float, default=15.0, metavar="SECONDS",
                   help="Prometheus' scrape interval for Triton; metrics older than three of "
                   "them are stale")
    g.add_argument("--metrics-window", type=float, default=60.0, metavar="SECONDS",
                   help="rate window of the PromQL queries (at least four scrape intervals)")
    g.add_argument("--replica-startup", type=float, default=60.0, metavar="SECONDS",
                   help="how long a new replica takes to serve (the policy forecasts this far)")
    g.add_argument("--burst-memory", type=float, default=AutoscalerDefaults.burst_memory_s,
                   metavar="SECONDS", help="after traffic jumps faster than replicas start, "
                   "keep capacity for the peak this long (default %(default)gs)")
    g.add_argument("--slo-latency-objective", type=float,
                   default=AutoscalerDefaults.latency_objective, metavar="RATIO",
                   help="share of time slices whose slowest replica must meet the latency "
                   "target, for the SLO alerts (default %(default)g)")
    g.add_argument("--metrics-port", type=int,
                   default=int(os.environ.get("DEDICAP_METRICS_PORT", "0") or 0),
                   help="serve the operator's own /metrics on this port (0: off; default "
                   "$DEDICAP_METRICS_PORT)")
    g.add_argument("--metrics-address", default=os.environ.get("DEDICAP_METRICS_ADDRESS",
                                                               "127.0.0.1"),
                   help="address for /metrics (default $DEDICAP_METRICS_ADDRESS or 127.0.0.1; "
                   "in a cluster 0.0.0.0)")


def from_args(args: argparse.Namespace, kube: Kube, reconciler: Reconciler, *,
              namespaces: tuple[str, ...], priority: int, instance: str) -> Autoscaler:
    """Build the autoscaler of `dedicap run` and serve the operator's metrics if asked."""
    url = resolve_url(args.prometheus_url)
    if not 0 < args.slo_latency_objective < 1:
        raise SystemExit("--slo-latency-objective must lie strictly between 0 and 1 (e.g. 0.99), "
                         f"got {args.slo_latency_objective}")
    metrics = OperatorMetrics()
    if args.metrics_port:
        server, _ = serve(metrics, args.metrics_port, args.metrics_address)
        log.info("operator metrics on http://%s:%d/metrics", args.metrics_address,
                 server.server_port)
    defaults = AutoscalerDefaults(
        evaluation_interval_s=args.evaluation_interval, startup_delay_s=args.replica_startup,
        scrape_interval_s=args.scrape_interval, window_s=args.metrics_window,
        burst_memory_s=args.burst_memory, latency_objective=args.slo_latency_objective)
    settings = AutoscalerSettings(
        defaults=defaults, namespaces=namespaces,
        peering=None if args.standalone else args.peering, priority=priority, instance=instance)
    log.info("autoscaler: Prometheus %s, evaluation every %gs", url or "not configured",
             defaults.evaluation_interval_s)
    return Autoscaler(kube, reconciler, make_client(url), metrics, settings)
