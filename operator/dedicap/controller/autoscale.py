"""The live autoscaler: every evaluation interval, for each ModelDeployment with
`spec.autoscaling`, read Triton's signals from Prometheus, run the policy
(`dedicap.decide.policy.decide`, unchanged) and act on its answer.

One round (the loop ticks every second and takes the ModelDeployments that are due):

1. observe: every due ModelDeployment's signals in one PromQL query per (window, percentile)
   (`metrics.observe_many`), its pods from the view -> ready and starting replicas, the
   reservation and pools -> the most replicas that can be placed now (`replica_limit`, so the
   policy never asks for pods that would sit Pending);
2. decide: the policy, with its state read back from `status.autoscaler` (so a restarted or
   newly elected operator continues where the last one stopped);
3. act: a changed count is written to `spec.replicas` through the scale subresource, as the
   HPA does, guarded by a JSON-patch `test` of the count the decision started from (a
   concurrent `kubectl scale` wins; the next evaluation starts from it);
4. report: `status.observed`, `status.lastScale`, `status.autoscaler`, the conditions
   MetricsAvailable and SLOMet (and Degraded / CapacityConstrained, see status/autoscaling.py),
   an Event per scale and per condition change, and the operator's own metrics. The status is
   written only when something in it changed (figures, conditions, a scale, the policy's
   learned state), so a quiet fleet costs no API write.

Isolation: each ModelDeployment is evaluated on its own. Whatever goes wrong in one (a bug, an
unreadable state, a refused write) is reported on that ModelDeployment's condition and Events
and costs the others nothing.

The policy's state lives in `status.autoscaler.state`, which only the operator can write (the
status subresource), never in an annotation a tenant could edit. It is checked when read; an
unreadable one is replaced by a fresh start, with a Warning Event.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from dedicap.api import conditions as c
from dedicap.api.models import ModelDeployment
from dedicap.controller import status
from dedicap.controller.events import EventRecorder
from dedicap.controller.kube import Kube, KubeError
from dedicap.controller.loop import BackgroundLoop
from dedicap.controller.peering import PeeringGate
from dedicap.controller.policy_config import (
    AutoscalerDefaults,
    batch_in_requests,
    evaluation_interval,
    policy_config,
)
from dedicap.controller.reconcile import Reconciler
from dedicap.controller.status import autoscaling as st
from dedicap.controller.status import tokens as st_tokens
from dedicap.controller.view import ClusterView
from dedicap.decide.cluster import PodInfo
from dedicap.decide.policy import Decision, ObservationWindow, PolicyConfig, PolicyState, decide
from dedicap.decide.render import MANAGER
from dedicap.metrics.exporter import OperatorMetrics, serve
from dedicap.metrics.prometheus import PrometheusClient, resolve_url
from dedicap.metrics.snapshot import (
    PROBLEM_QUERY,
    PROBLEM_UNAVAILABLE,
    MetricsSnapshot,
    QueryClient,
    observe_many,
)
from dedicap.metrics.snapshot_tokens import TokenSnapshot, observe_tokens_many

# With nothing due and no ModelDeployment changed, the tick looks at them all only this often
# (to notice a namespace another installation stopped serving).
RESCAN_S = 5.0

log = logging.getLogger(__name__)

STATE_VERSION = 1
# The learned state is saved when it changed in substance, and at least this often while
# metrics flow (a newly elected operator continues from at most this old a state).
STATE_REFRESH_S = 600.0
# Metrics missing for fewer evaluation intervals than this leave MetricsAvailable and the last
# figures as they were (the replicas are held all the same).
METRICS_GRACE_EVALUATIONS = 2
# State fields that move at every evaluation by construction (clocks, recent samples): a change
# there alone is no reason to write.
_VOLATILE = ("history", "recommendations", "recent", "last_eval", "verdict_t", "last_queue",
             "last_queue_t", "last_ready", "fast")


@dataclass(frozen=True)
class AutoscalerSettings:
    defaults: AutoscalerDefaults = field(default_factory=AutoscalerDefaults)
    tick_s: float = 1.0  # how often due evaluations are looked for


@dataclass
class Outcome:
    """What one evaluation did (for logs and tests)."""

    namespace: str
    name: str
    snapshot: MetricsSnapshot | None
    decision: Decision | None
    code: str
    scaled: bool
    replica_limit: int | None
    error: str = ""


# ----------------------------------------------------------------------------- pure inputs


def replica_counts(pods: Iterable[PodInfo]) -> tuple[int, int]:
    """(ready, starting) replicas among a ModelDeployment's pods. Terminating and finished pods
    count as neither; any other pod that is not serving yet is starting (pending included: it
    is on its way, and counting it keeps the policy from stacking another step on top)."""
    ready = starting = 0
    for pod in pods:
        if pod.terminating or pod.finished:
            continue
        if pod.serving:
            ready += 1
        else:
            starting += 1
    return ready, starting


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def observation_window(snap: MetricsSnapshot, *, ready: int, starting: int,
                       current: int, tokens: TokenSnapshot | None = None) -> ObservationWindow:
    """The policy's view of a snapshot (and of a streaming LLM's token snapshot). An
    unavailable snapshot has no timestamp, so the policy holds (it never acts on figures the
    snapshot says must not be trusted)."""
    if not snap.available:
        return ObservationWindow(timestamp=None, window_s=snap.window_s, ready_replicas=ready,
                                 starting_replicas=starting, current_replicas=current)
    # Triton counts a batch in rows; the policy's batch is in requests.
    batch = snap.mean_batch_size
    if _finite(snap.mean_request_rows) and snap.mean_request_rows > 0 and _finite(batch):
        batch = batch / snap.mean_request_rows
    return ObservationWindow(
        timestamp=snap.timestamp,
        window_s=snap.window_s,
        request_rate=snap.request_rate,
        success_rate=snap.success_rate,
        rejected_rate=snap.rejected_rate,
        backend_failure_rate=snap.backend_failure_rate,
        mean_latency_ms=snap.mean_latency_ms,
        latency_quantile_ms=snap.latency_quantile_ms,
        queue_depth=snap.queue_depth,
        mean_queue_ms=snap.mean_queue_ms,
        mean_compute_ms=snap.mean_compute_ms,
        mean_batch_size=batch,
        ready_replicas=ready,
        starting_replicas=starting,
        current_replicas=current,
        request_rate_short=snap.request_rate_short,
        success_rate_short=snap.success_rate_short,
        mean_queue_ms_short=snap.mean_queue_ms_short,
        queue_growth=snap.queue_growth,
        arrivals_last=snap.arrivals_last,
        tokens=st_tokens.signals(tokens),
    )


def read_state(autoscaler_status: Mapping[str, Any] | None) -> tuple[PolicyState, str]:
    """The policy state saved in `status.autoscaler`, and "" — or a fresh state and why the
    saved one was not used (then the caller posts an Event)."""
    saved = autoscaler_status or {}
    text = saved.get("state")
    if not text:
        return PolicyState(), ""
    if saved.get("version") != STATE_VERSION:
        return PolicyState(), f"saved in format {saved.get('version')!r}, not {STATE_VERSION}"
    try:
        return PolicyState.from_dict(json.loads(text), strict=True), ""
    except (ValueError, TypeError, KeyError) as err:
        return PolicyState(), f"unreadable ({str(err)[:200]})"


def _figures(fields: Mapping[str, Any], time_key: str = "sampledAt") -> dict[str, Any]:
    """A status object (`observed`, a capacity) without its time and its unknowns (a merge
    patch stores a null as nothing), to tell whether a figure changed."""
    return {k: v for k, v in fields.items() if k != time_key and v is not None}


def material(state: PolicyState) -> dict[str, Any]:
    """What of the state is worth a write when it changes: the learned figures (capacity fit,
    gains, peaks, levels), not the bookkeeping that moves at every evaluation (clocks, recent
    samples, times of the last update), with floats rounded so that noise is no change. A saved
    state is then an older but consistent record: a value is always saved with its time."""
    def keep(key: str) -> bool:
        return key not in _VOLATILE and key != "t" and not key.endswith("_t") and key != "since"

    def rounded(x: Any) -> Any:
        if isinstance(x, float):
            return round(x, 2) if math.isfinite(x) else None
        if isinstance(x, dict):
            return {k: rounded(v) for k, v in x.items() if keep(k)}
        if isinstance(x, list | tuple):
            return [rounded(v) for v in x]
        return x
    return {k: rounded(v) for k, v in state.to_dict().items() if keep(k)}


# ----------------------------------------------------------------------------- the loop


class Autoscaler(BackgroundLoop):
    def __init__(self, kube: Kube, view: ClusterView, reconciler: Reconciler,
                 events: EventRecorder, client: QueryClient | None, metrics: OperatorMetrics,
                 settings: AutoscalerSettings, gate: PeeringGate,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__("dedicap-autoscaler", settings.tick_s)
        self.kube = kube
        self.view = view
        self.reconciler = reconciler
        self.events = events
        self.client = client
        self.metrics = metrics
        self.settings = settings
        self.gate = gate
        self.clock = clock
        self._due: dict[tuple[str, str], float] = {}
        self._seen_replicas: dict[tuple[str, str], int] = {}
        self._saved: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self._parsed: dict[tuple[str, str], tuple[Any, tuple[ModelDeployment, PolicyConfig,
                                                               float]]] = {}
        # What a blind evaluation (no usable metrics) saw: the same again decides the same hold.
        self._blind: dict[tuple[str, str], tuple[Any, ...]] = {}
        # When each ModelDeployment's metrics went missing (METRICS_GRACE_EVALUATIONS)
        self._missing_since: dict[tuple[str, str], float] = {}
        # The ModelDeployments as last listed and the earliest due time among them: a second
        # in which none is due and none changed costs nothing (at a thousand, the pass that
        # found nothing to do was a tenth of an idle operator's work).
        self._listed_version: int | None = None
        self._next_due = -math.inf

    # ----------------------------------------------------------------- scheduling

    def tick(self) -> list[Outcome]:
        """Evaluate every autoscaled ModelDeployment that is due."""
        if not self.view.synced or not self.gate.active("autoscaler"):
            # A peer acts; start afresh when it is our turn again.
            self._due.clear()
            self._seen_replicas.clear()
            self._saved.clear()
            self._blind.clear()
            self._missing_since.clear()
            self._listed_version = None
            return []
        mono = time.monotonic()
        version = self.view.modeldeployments_version()
        if version == self._listed_version and mono < self._next_due:
            return []
        listed: dict[tuple[str, str], dict[str, Any]] = {}
        acting: dict[str, bool] = {}  # per namespace: this runs every second, over every MD
        for raw in self.view.modeldeployments():
            meta = raw["metadata"]
            if not (raw.get("spec") or {}).get("autoscaling") or meta.get("deletionTimestamp"):
                continue
            namespace = meta.get("namespace", "")
            if namespace not in acting:
                acting[namespace] = self.gate.acts_for(namespace)
            if acting[namespace]:
                listed[(namespace, meta["name"])] = raw
        for key in set(self._due) - set(listed):
            self._forget(key)
        due = [(k, raw) for k, raw in listed.items() if self._due.get(k, -math.inf) <= mono]
        outcomes = self.evaluate_all(due, mono) if due else []
        # Which namespaces this installation acts for can change with the clock alone (a peer's
        # announcement expires): asked again at the next due time, and at least every RESCAN_S.
        self._listed_version = version
        self._next_due = min([*(self._due.get(k, -math.inf) for k in listed), mono + RESCAN_S])
        return outcomes

    def _forget(self, key: tuple[str, str]) -> None:
        self._due.pop(key, None)
        self._seen_replicas.pop(key, None)
        self._saved.pop(key, None)
        self._parsed.pop(key, None)
        self._blind.pop(key, None)
        self._missing_since.pop(key, None)
        self.metrics.forget(*key)

    def evaluate_all(self, due: list[tuple[tuple[str, str], dict[str, Any]]],
                     mono: float | None = None) -> list[Outcome]:
        """One round over `due`: one metrics query per (window, percentile), then each
        ModelDeployment on its own."""
        mono = time.monotonic() if mono is None else mono
        now = self.clock()
        parsed: list[tuple[tuple[str, str], dict[str, Any], ModelDeployment, PolicyConfig]] = []
        for key, raw in due:
            interval = self.settings.defaults.evaluation_interval_s
            try:
                md, config, interval = self._parse(key, raw)
                parsed.append((key, raw, md, config))
            except ValidationError:
                pass  # the reconcile reports the invalid spec
            # Aligned to the interval, so ModelDeployments of one interval share a query.
            self._due[key] = (math.floor(mono / interval) + 1) * interval
        snaps = self._observe_all(parsed, now)
        tokens = self._observe_tokens(parsed, snaps, now)
        outcomes = []
        for key, raw, md, config in parsed:
            started = time.monotonic()
            try:
                outcomes.append(self._evaluate(raw, md, config, snaps[key], now,
                                               tokens.get(key)))
            except Exception as err:  # one ModelDeployment's failure is its own
                log.exception("autoscaling %s/%s failed", *key)
                outcomes.append(self._failed(raw, key, err))
            finally:
                self.metrics.evaluation_seconds.observe(time.monotonic() - started)
        return outcomes

    def _parse(self, key: tuple[str, str], raw: Mapping[str, Any]
               ) -> tuple[ModelDeployment, PolicyConfig, float]:
        """The ModelDeployment, its policy config and interval, parsed once per version of the
        object (a quiet fleet is not validated again at every evaluation)."""
        version = (raw.get("metadata") or {}).get("resourceVersion")
        cached = self._parsed.get(key)
        if cached is not None and version is not None and cached[0] == version:
            return cached[1]
        md = ModelDeployment.model_validate(raw)
        assert md.spec.autoscaling is not None
        parsed = (md, policy_config(md.spec.autoscaling, self.settings.defaults,
                                    md.spec.model.metrics_profile, md.spec.model),
                  evaluation_interval(md.spec.autoscaling, self.settings.defaults))
        self._parsed[key] = (version, parsed)
        return parsed

    def _observe_all(self, parsed: list[tuple[tuple[str, str], dict[str, Any],
                                              ModelDeployment, PolicyConfig]],
                     now: float) -> dict[tuple[str, str], MetricsSnapshot]:
        d = self.settings.defaults
        keys = [p[0] for p in parsed]
        if self.client is None:
            return {k: MetricsSnapshot(
                available=False, queried_at=now, window_s=d.window_s,
                percentile=cfg.latency_percentile, problem=st.NO_PROMETHEUS,
                reason="the operator has no Prometheus address (--prometheus-url or "
                       "DEDICAP_PROMETHEUS_URL)") for k, _, _, cfg in parsed}
        groups: dict[float, list[tuple[str, str]]] = {}
        for key, _, _, cfg in parsed:
            groups.setdefault(cfg.latency_percentile, []).append(key)
        snaps: dict[tuple[str, str], MetricsSnapshot] = {}
        outage: MetricsSnapshot | None = None
        for percentile, group in sorted(groups.items()):
            if outage is not None:
                # Prometheus did not answer this round: do not wait out its timeouts again.
                snaps.update({k: outage for k in group})
                continue
            got = observe_many(self.client, group, d.window_s, now, percentile=percentile,
                               scrape_interval_s=d.scrape_interval_s,
                               stale_after_intervals=d.stale_after_intervals,
                               short_window_s=d.short_window())
            problems = {s.problem for s in got.values()}
            for problem in problems & {PROBLEM_UNAVAILABLE, PROBLEM_QUERY}:
                self.metrics.record_query_error(problem)
            if PROBLEM_UNAVAILABLE in problems:
                outage = next(iter(got.values()))
            snaps.update(got)
        assert set(keys) <= set(snaps)
        return snaps

    def _observe_tokens(self, parsed: list[tuple[tuple[str, str], dict[str, Any],
                                                 ModelDeployment, PolicyConfig]],
                        snaps: Mapping[tuple[str, str], MetricsSnapshot], now: float
                        ) -> dict[tuple[str, str], TokenSnapshot]:
        """Streaming LLMs' token signals: one query per (profile, percentiles), beside the
        request-level one (skipped when Prometheus did not answer that one)."""
        groups: dict[tuple[str, float, float, float], list[tuple[str, str]]] = {}
        for key, _, _, cfg in parsed:
            t = cfg.tokens
            if t is not None and self.client is not None and snaps[key].problem not in (
                    PROBLEM_UNAVAILABLE, st.NO_PROMETHEUS):
                groups.setdefault((t.profile, t.ttft_percentile, t.tpot_percentile,
                                   t.e2e_percentile), []).append(key)
        out: dict[tuple[str, str], TokenSnapshot] = {}
        for (profile, ttft, tpot, e2e), group in sorted(groups.items()):
            assert self.client is not None
            got = observe_tokens_many(self.client, group, profile,
                                      self.settings.defaults.window_s, now,
                                      ttft_percentile=ttft, tpot_percentile=tpot,
                                      e2e_percentile=e2e)
            for problem in {t.problem for t in got.values()} & {PROBLEM_UNAVAILABLE,
                                                                  PROBLEM_QUERY}:
                self.metrics.record_query_error(problem)
            out.update(got)
        return out

    # ----------------------------------------------------------------- one evaluation

    def _evaluate(self, raw: Mapping[str, Any], md: ModelDeployment, config: PolicyConfig,
                  snap: MetricsSnapshot, now: float,
                  tokens: TokenSnapshot | None = None) -> Outcome:
        spec = md.spec.autoscaling
        assert spec is not None
        namespace, name = md.namespace, md.name
        key = (namespace, name)
        ready, starting = replica_counts(self.view.pods_of(namespace, name))
        current = md.spec.desired_replicas()
        manual = self._seen_replicas.get(key)
        limit, explanation = self._replica_limit(md, spec.max_replicas)
        # A missed scrape or a slow query is not an outage worth two writes (conditions to False
        # and back) per ModelDeployment: the replicas are held at once, the status says so once
        # the metrics have been missing for a while.
        brief = False
        if snap.available:
            self._missing_since.pop(key, None)
        else:
            missing_for = now - self._missing_since.setdefault(key, now)
            brief = (_metrics_were_available(raw)
                     and missing_for < METRICS_GRACE_EVALUATIONS * config.evaluation_interval_s)
        # Blind (no usable metrics) exactly as at the last evaluation, with the same spec,
        # replicas and limit: the policy can only hold again, and the status says so already.
        blind = (None if snap.available else
                 (md.generation, ready, starting, current, limit, snap.problem, snap.reason,
                  tokens.problem if tokens is not None else None))
        if blind is not None and self._blind.get(key) == blind and manual == current \
                and not brief:
            self.metrics.record_decision(namespace, name, "hold", st.CODE_METRICS_UNAVAILABLE)
            return Outcome(namespace, name, snap, None, st.CODE_METRICS_UNAVAILABLE, False,
                           limit)
        self._blind.pop(key, None)
        saved = (raw.get("status") or {}).get("autoscaler")
        state, unreadable = read_state(saved)
        window = observation_window(snap, ready=ready, starting=starting, current=current,
                                    tokens=tokens)
        config = batch_in_requests(config, snap.mean_request_rows)
        decision = decide(config, window, state, now, limit)
        code = st.reason_code(decision, window, config)
        scaled = False
        if decision.replicas != current:
            scaled = self._scale(md, current, decision.replicas)
        self._seen_replicas[key] = decision.replicas if scaled else current

        events: list[tuple[str, str, str]] = []
        if unreadable:
            events.append(("Warning", "AutoscalerStateReset", (
                f"the autoscaler's saved state was {unreadable}; it starts afresh (learned "
                "capacity and burst memory are relearned)")))
        if manual is not None and manual != current:
            events.append(("Normal", "ManualScale", (
                f"spec.replicas went from {manual} to {current} outside the autoscaler; it is "
                "taken as the current count: scale-ups apply at the next evaluation, "
                "scale-downs after the stabilization window")))
        if scaled:
            events.append(("Normal", "ScaledUp" if decision.replicas > current else "ScaledDown",
                           f"{current} -> {decision.replicas} ({code}): {decision.reason}"))
        understated = st.max_batch_understated(md.spec.model.max_batch_size, snap)
        if understated is not None:
            events.append(("Warning", "MaxBatchSizeUnderstated", understated))
        self._report(md, snap, config, decision, code, scaled, current, limit, explanation,
                     now, events, force_state=bool(unreadable), tokens=tokens, ready=ready,
                     brief_outage=brief)
        if blind is not None and not scaled and decision.replicas == current and not brief:
            self._blind[key] = blind
        self.metrics.record_decision(namespace, name,
                                     decision.direction if scaled else "hold", code)
        self.metrics.set_modeldeployment(
            namespace, name, desired_replicas=decision.replicas if scaled else current,
            ready_replicas=ready, metrics_available=snap.available,
            latency_ms=snap.latency_quantile_ms if snap.available else math.nan,
            latency_target_ms=config.latency_target_ms, percentile=config.latency_percentile,
            error_ratio=snap.error_ratio if snap.available else math.nan,
            request_rate=snap.request_rate if snap.available else math.nan,
            latency_objective=self.settings.defaults.latency_objective,
            error_ratio_objective=(spec.slo.error_rate.maximum if spec.slo.error_rate
                                   else math.nan),
            max_batch_size=md.spec.model.max_batch_size,
            max_queue_delay_s=(md.spec.model.max_queue_delay_microseconds / 1e6
                               if md.spec.model.max_queue_delay_microseconds is not None
                               else None))
        log.info("%s/%s: %s %d -> %d [%s] ready=%d starting=%d limit=%s p%g=%.0fms "
                 "rate=%.1f/s: %s", namespace, name, decision.direction, current,
                 decision.replicas, code, ready, starting, limit, config.latency_percentile,
                 snap.latency_quantile_ms, snap.request_rate, decision.reason)
        return Outcome(namespace, name, snap, decision, code, scaled, limit)

    def _failed(self, raw: Mapping[str, Any], key: tuple[str, str], err: Exception) -> Outcome:
        """Report a broken evaluation on the ModelDeployment itself (best effort)."""
        text = f"{type(err).__name__}: {err}"
        try:
            with self.reconciler.lock(*key):
                fresh = self.view.modeldeployment(*key) or dict(raw)
                self._write_status(fresh, {}, [st.evaluation_failed(text)], [])
            self.events.record(raw, "Warning", st.EVALUATION_FAILED,
                               f"evaluation failed, replicas held: {text}")
        except Exception:
            log.exception("cannot report the failed evaluation of %s/%s", *key)
        self.metrics.record_decision(key[0], key[1], "hold", st.EVALUATION_FAILED)
        return Outcome(key[0], key[1], None, None, st.EVALUATION_FAILED, False, None,
                       error=text)

    def _replica_limit(self, md: ModelDeployment, max_replicas: int) -> tuple[int | None, str]:
        """The most replicas placeable now under the reservation and in the pools (the
        ModelDeployment's own replicas count as placeable), and why not more."""
        placement = self.reconciler.placement(md, self.view.state(), replicas=max_replicas)
        if not placement.assignments:
            return None, ""  # no eligible pool: the reconcile reports it; do not force 0
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

    def _report(self, md: ModelDeployment, snap: MetricsSnapshot, config: PolicyConfig,
                decision: Decision, code: str, scaled: bool, current: int,
                limit: int | None, explanation: str, now: float,
                events: list[tuple[str, str, str]], *, force_state: bool,
                tokens: TokenSnapshot | None = None, ready: int = 0,
                brief_outage: bool = False) -> None:
        spec = md.spec.autoscaling
        assert spec is not None
        key = (md.namespace, md.name)
        when = datetime.fromtimestamp(now, UTC)
        fields: dict[str, Any] = {}
        with self.reconciler.lock(*key):
            fresh = self.view.modeldeployment(*key)
            if fresh is None:
                return
            previous = fresh.get("status") or {}
            conds: list[c.Cond] = []
            if brief_outage:
                # the last figures and conditions stand until the outage lasts (see _evaluate)
                observed = dict(previous.get("observed") or {})
            else:
                conds = st.autoscaler_conditions(previous.get("conditions") or [], snap, spec,
                                                 config, decision,
                                                 explanation if limit is not None else "",
                                                 st_tokens.verdict_problems(tokens, config))
                observed = st.observed_status(snap, when)
            if not brief_outage:
                gpus = md.spec.resources.gpus_per_replica
                if config.tokens is not None:
                    observed.update(st_tokens.observed(tokens if snap.available else None,
                                                       config.tokens.e2e_percentile))
                    name = "tokenCapacity"
                    capacity = st_tokens.capacity_status(config, decision.state, ready, gpus,
                                                         when)
                else:
                    name = "requestCapacity"
                    capacity = st.capacity_status(config, decision.state, ready, gpus, when)
                # a new figure is written, not a new time alone (a write per evaluation)
                if capacity is not None and _figures(capacity, "measuredAt") != _figures(
                        previous.get(name) or {}, "measuredAt"):
                    fields[name] = capacity
            if _figures(observed) != _figures(previous.get("observed") or {}):
                fields["observed"] = observed
            if scaled:
                fields["lastScale"] = st.last_scale(when, current, decision.replicas, code,
                                                    decision.reason)
            if self._state_due(key, decision.state, snap.available, now, force_state or scaled):
                fields["autoscaler"] = {
                    "state": json.dumps(decision.state.to_dict(), separators=(",", ":")),
                    "version": STATE_VERSION, "savedAt": c.timestamp(when)}
            transitions = self._write_status(fresh, fields, conds, events)
            if "autoscaler" in fields:
                self._saved[key] = (now, material(decision.state))
        for cond in transitions:
            events.append((status.event_type(cond), cond.reason,
                           f"{cond.type} is {cond.status}: {cond.message}"))
        for type_, reason, message in events:
            self.events.record(fresh, type_, reason, message, when=when)

    def _state_due(self, key: tuple[str, str], state: PolicyState, live: bool, now: float,
                   force: bool) -> bool:
        saved = self._saved.get(key)
        if force or saved is None:
            return True
        at, what = saved
        if material(state) != what:
            return True
        return live and now - at >= STATE_REFRESH_S

    def _write_status(self, fresh: Mapping[str, Any], fields: Mapping[str, Any],
                      conds: list[c.Cond], events: list[tuple[str, str, str]]
                      ) -> tuple[c.Cond, ...]:
        generation = int(fresh["metadata"].get("generation", 0))
        upd = status.update(fresh.get("status"), fields, conds, generation,
                            datetime.fromtimestamp(self.clock(), UTC))
        if upd.patch:
            meta = fresh["metadata"]
            try:
                written = self.kube.patch_merge("ModelDeployment", meta["name"],
                                                {"status": upd.patch},
                                                namespace=meta["namespace"],
                                                subresource="status")
            except KubeError as err:
                if err.not_found:  # deleted since the view showed it: nothing to report
                    return ()
                raise
            self.view.observe_write("ModelDeployment", written)
        return upd.transitions


def _metrics_were_available(raw: Mapping[str, Any]) -> bool:
    cond = c.find((raw.get("status") or {}).get("conditions") or [], c.METRICS_AVAILABLE)
    return cond is not None and cond.get("status") == "True"


def make_client(url: str | None, timeout_s: float = 3.0) -> PrometheusClient | None:
    """A Prometheus client for the operator: short timeouts and one retry, so an outage costs
    an evaluation round a few seconds, not the client's default worst case."""
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
    g.add_argument("--short-window", type=float, default=None, metavar="SECONDS",
                   help="rate window of the fast path, which sees a step or a burst before the "
                   "main window does (default: 2.5 scrape intervals; at least two)")
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


def defaults_from_args(args: argparse.Namespace) -> AutoscalerDefaults:
    if not 0 < args.slo_latency_objective < 1:
        raise SystemExit("--slo-latency-objective must lie strictly between 0 and 1 (e.g. 0.99), "
                         f"got {args.slo_latency_objective}")
    if args.short_window is not None and args.short_window < 2 * args.scrape_interval:
        # a rate needs two samples in its window
        raise SystemExit(f"--short-window {args.short_window:g}: must be at least two scrape "
                         f"intervals (--scrape-interval {args.scrape_interval:g}), e.g. "
                         f"{2.5 * args.scrape_interval:g}")
    return AutoscalerDefaults(
        evaluation_interval_s=args.evaluation_interval, startup_delay_s=args.replica_startup,
        scrape_interval_s=args.scrape_interval, window_s=args.metrics_window,
        short_window_s=args.short_window, burst_memory_s=args.burst_memory,
        latency_objective=args.slo_latency_objective)


def metrics_from_args(args: argparse.Namespace) -> OperatorMetrics:
    """The operator's metrics registry, served on /metrics when asked."""
    metrics = OperatorMetrics()
    if args.metrics_port:
        server, _ = serve(metrics, args.metrics_port, args.metrics_address)
        log.info("operator metrics on http://%s:%d/metrics", args.metrics_address,
                 server.server_port)
    return metrics


def client_from_args(args: argparse.Namespace) -> PrometheusClient | None:
    url = resolve_url(args.prometheus_url)
    log.info("autoscaler: Prometheus %s, evaluation every %gs", url or "not configured",
             args.evaluation_interval)
    return make_client(url)
