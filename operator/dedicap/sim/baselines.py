"""The scalers the simulator can run: dedicap's policy and faithful models of the usual ones.

- ``PolicyScaler``: :func:`dedicap.decide.policy.decide`, unchanged, fed what Prometheus shows.
- ``HPAScaler``: Kubernetes' HorizontalPodAutoscaler (autoscaling/v2) on a utilization target:
  ``desired = ceil(ready * utilization / target)``, 10% tolerance, not-yet-ready pods counted
  as 0% on scale-up, sync every 15 s, default behavior (scale-up: max of 100% and 4 pods per
  15 s, no stabilization; scale-down: 300 s stabilization, 100% per 15 s). The utilization is
  the replicas' busy fraction (what ``nv_gpu_utilization`` approximates).
- ``KEDAScaler``: KEDA's Prometheus scaler: an HPA on an external metric of type AverageValue
  (``desired = ceil(metric / threshold)``, same tolerance and behavior), the metric being the
  offered request rate ``sum(rate(...[1m]))``; KEDA's ``pollingInterval`` (30 s) drives
  activation from zero and ``cooldownPeriod`` (300 s) the return to zero when
  ``minReplicaCount`` is 0; from 1 to N the HPA's 15-s sync drives it, as KEDA documents.
- ``KPAScaler``: Knative's KPA: desired = ceil(observed concurrency / target) over a 60-s
  stable window, a 6-s panic window (10%), panic when the panic-window demand reaches 200% of
  ready pods (no scale-down while panicking, exit after a stable window without trigger),
  tick 2 s, max scale-up rate 1000x, max scale-down rate 2x per tick. Concurrency is read from
  per-second data, as the autoscaler scrapes queue-proxies directly.
- ``StaticScaler``: a fixed count (peak provisioning when sized for the peak).
- ``ScheduleScaler``: a per-minute schedule known in advance (the oracles, see oracle.py).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import replace

import numpy as np

from dedicap.decide.policy import PolicyConfig, PolicyState, decide
from dedicap.sim.simulator import MetricsView


class PolicyScaler:
    def __init__(self, config: PolicyConfig, name: str = "dedicap",
                 replica_limit: int | None = None, roundtrip_state: bool = False) -> None:
        self.name = name
        self.config = config
        self.interval_s = config.evaluation_interval_s
        self.offset_s = config.evaluation_interval_s / 2.0  # evaluations fall between scrapes
        self.replica_limit = replica_limit
        self.state = PolicyState()
        self.roundtrip_state = roundtrip_state  # store/load via JSON each time, as the operator
        self.decisions: list[tuple[float, int, str]] = []

    def desired(self, view: MetricsView, now: float, current: int) -> tuple[int, str]:
        obs = replace(view.prometheus(now), current_replicas=current)
        d = decide(self.config, obs, self.state, now, self.replica_limit)
        self.state = d.state
        if self.roundtrip_state:
            import json

            self.state = PolicyState.from_dict(json.loads(json.dumps(d.state.to_dict())))
        if d.replicas != current:
            self.decisions.append((now, d.replicas, d.reason))
        return d.replicas, d.reason


class _HPABehavior:
    """The HPA's default behavior: stabilization windows and per-period rate limits."""

    def __init__(self, min_replicas: int, max_replicas: int, down_stabilization_s: float = 300.0,
                 tolerance: float = 0.1) -> None:
        self.min, self.max = min_replicas, max_replicas
        self.down_stabilization_s = down_stabilization_s
        self.tolerance = tolerance
        self.recs: deque[tuple[float, int]] = deque()
        self.changes: deque[tuple[float, int]] = deque()  # (time, replicas after)

    def apply(self, now: float, current: int, rec: int) -> int:
        self.recs.append((now, rec))
        while self.recs and now - self.recs[0][0] > self.down_stabilization_s:
            self.recs.popleft()
        desired = rec
        if rec < current:
            desired = min(max(r for _, r in self.recs), current)
        # rate limits over the last 15 s
        while self.changes and now - self.changes[0][0] > 15.0:
            self.changes.popleft()
        base = min([current, *[n for _, n in self.changes]])
        up_cap = base + max(4, base)  # max(4 pods, 100%) per 15 s
        desired = min(desired, max(up_cap, current))
        desired = max(desired, 0)  # scale-down 100% per 15 s: no lower bound above zero
        desired = min(max(desired, self.min), self.max)
        if desired != current:
            self.changes.append((now, desired))
        return desired


class HPAScaler:
    def __init__(self, target_utilization: float, min_replicas: int = 1, max_replicas: int = 1000,
                 name: str | None = None) -> None:
        self.target = target_utilization
        self.name = name or f"hpa util {target_utilization:.0%}"
        self.interval_s = 15.0
        self.offset_s = 7.5
        self.behavior = _HPABehavior(min_replicas, max_replicas)

    def desired(self, view: MetricsView, now: float, current: int) -> tuple[int, str]:
        u = view.utilization(now)
        ready, starting = view.ready, view.starting
        if not math.isfinite(u) or ready == 0:
            return self.behavior.apply(now, current, current), "no metrics"
        ratio = u / self.target
        if abs(ratio - 1.0) <= self.behavior.tolerance:
            rec = current
        elif ratio > 1.0:
            # not-ready pods count as 0% when scaling up; don't scale if that reverses direction
            ratio_all = u * ready / (self.target * max(ready + starting, 1))
            rec = math.ceil(u * ready / self.target) if ratio_all > 1.0 + self.behavior.tolerance \
                else current
            rec = max(rec, current)
        else:
            rec = math.ceil(u * ready / self.target)
        return self.behavior.apply(now, current, rec), f"utilization {u:.0%}"


class KEDAScaler:
    def __init__(self, threshold_rps: float, min_replicas: int = 1, max_replicas: int = 1000,
                 activation_threshold: float = 0.0, polling_interval_s: float = 30.0,
                 cooldown_period_s: float = 300.0, name: str | None = None) -> None:
        self.threshold = threshold_rps
        self.name = name or f"keda {threshold_rps:.0f} rps/replica"
        self.interval_s = 15.0  # the HPA's sync period drives 1<->N
        self.offset_s = 7.5
        self.min = min_replicas
        self.activation = activation_threshold
        self.polling = polling_interval_s
        self.cooldown = cooldown_period_s
        self.behavior = _HPABehavior(max(min_replicas, 1), max_replicas)
        self.last_active: float | None = None
        self.last_poll = -math.inf

    def desired(self, view: MetricsView, now: float, current: int) -> tuple[int, str]:
        metric = view.request_rate(now, 60.0)
        active = math.isfinite(metric) and metric > self.activation
        if active:
            self.last_active = now
        if self.min == 0 and current == 0:
            # activation 0 -> 1 is KEDA's own loop, at its polling interval
            if now - self.last_poll >= self.polling:
                self.last_poll = now
                if active:
                    return 1, "activated"
            return 0, "inactive"
        if self.min == 0 and not active and (self.last_active is None
                                             or now - self.last_active >= self.cooldown):
            return 0, "cooldown elapsed: scale to zero"
        if not math.isfinite(metric):
            return self.behavior.apply(now, current, current), "no metrics"
        ratio = metric / max(current, 1) / self.threshold
        if abs(ratio - 1.0) <= self.behavior.tolerance:
            rec = current
        else:
            rec = math.ceil(metric / self.threshold)
        return self.behavior.apply(now, current, rec), f"request rate {metric:.0f}/s"


class KPAScaler:
    def __init__(self, target_concurrency: float, min_replicas: int = 1, max_replicas: int = 1000,
                 stable_window_s: float = 60.0, panic_window_pct: float = 10.0,
                 panic_threshold_pct: float = 200.0, max_up_rate: float = 1000.0,
                 max_down_rate: float = 2.0, name: str | None = None) -> None:
        self.target = target_concurrency
        self.name = name or f"kpa concurrency {target_concurrency:g}"
        self.interval_s = 2.0
        self.offset_s = 0.0
        self.min, self.max = min_replicas, max_replicas
        self.stable = stable_window_s
        self.panic_window = stable_window_s * panic_window_pct / 100.0
        self.panic_threshold = panic_threshold_pct / 100.0
        self.max_up, self.max_down = max_up_rate, max_down_rate
        self.panic_since: float | None = None
        self.panic_max = 0

    def desired(self, view: MetricsView, now: float, current: int) -> tuple[int, str]:
        ready = max(view.ready, 1)
        stable_c = view.concurrency(now, self.stable)
        panic_c = view.concurrency(now, self.panic_window)
        want_stable = math.ceil(stable_c / self.target)
        want_panic = math.ceil(panic_c / self.target)
        if self.panic_since is None and want_panic / ready >= self.panic_threshold:
            self.panic_since, self.panic_max = now, 0
        elif self.panic_since is not None and want_panic / ready >= self.panic_threshold:
            self.panic_since = now  # re-triggered: stay in panic
        if self.panic_since is not None and now - self.panic_since >= self.stable:
            self.panic_since = None
        if self.panic_since is not None:
            self.panic_max = max(self.panic_max, want_panic, current)
            want, why = self.panic_max, f"panic: concurrency {panic_c:.0f}"
        else:
            want, why = want_stable, f"concurrency {stable_c:.0f}"
        want = min(want, math.ceil(self.max_up * ready))
        want = max(want, math.floor(ready / self.max_down))
        return min(max(want, self.min), self.max), why


class StaticScaler:
    def __init__(self, replicas: int, name: str | None = None) -> None:
        self.replicas = replicas
        self.name = name or f"static {replicas}"
        self.interval_s = 3600.0
        self.offset_s = 0.0

    def desired(self, view: MetricsView, now: float, current: int) -> tuple[int, str]:
        return self.replicas, "static"


class ScheduleScaler:
    """Follows ``per_minute`` replicas, asking ``lead_s`` ahead so each is ready in time."""

    def __init__(self, per_minute: np.ndarray, lead_s: float, name: str) -> None:
        self.per_minute = np.asarray(per_minute, dtype=int)
        self.lead = lead_s
        self.name = name
        self.interval_s = 1.0
        self.offset_s = 0.0

    def desired(self, view: MetricsView, now: float, current: int) -> tuple[int, str]:
        m0 = int(now // 60)
        m1 = int((now + self.lead) // 60)
        n = len(self.per_minute)
        if m0 >= n:
            return int(self.per_minute[-1]), "schedule"
        return int(self.per_minute[m0:min(m1, n - 1) + 1].max()), "schedule"
