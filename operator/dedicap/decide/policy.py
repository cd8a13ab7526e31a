"""The SLO autoscaling policy: how many replicas a ModelDeployment needs now.

``decide(config, window, state, now, replica_limit=None) -> Decision`` is a pure, deterministic
function: no I/O, no clock (``now`` is passed in), no randomness. The operator calls it every
evaluation interval with what it read from Prometheus; the simulator calls the very same
function with what a simulated Prometheus would have scraped.

Inputs
  ``PolicyConfig`` (from ``spec.autoscaling``): min/max replicas, the latency SLO (percentile,
  target ms) and the error-ratio SLO, the scale-up/scale-down behaviour (stabilization windows,
  step limits per period), the evaluation interval, the start-up delay estimate and the
  model's max batch size when known.
  ``ObservationWindow``: Triton's signals over the last window (rates are per second): request
  rate, successes, failures by reason (``REJECTED``: the queue timed out, a capacity problem;
  ``BACKEND``: the model failed, which replicas cannot fix), mean latency, the latency at the SLO
  percentile (the max of the per-pod summaries, since summaries cannot be averaged; NaN when
  idle), queue depth, mean queue and compute time, mean batch size, ready and starting
  replicas, the replicas currently asked for, and the timestamp of the newest sample.
  ``PolicyState``: what must survive between evaluations (JSON round-trip via ``to_dict`` /
  ``from_dict``, stored in the resource's status so a restarted operator converges).
  ``replica_limit``: the most replicas the reservation's headroom allows right now.

Output
  ``Decision``: the desired replica count, the direction, a human-readable reason, the new
  state, and the figures behind it (demand, forecast, capacity per replica).

Algorithm
  1. Freshness. Missing or stale data (no sample, or older than ``staleness_s``, or a NaN
     rate) -> hold the current count (raised to min, lowered only to a hard limit). Never scale
     down blind.
  2. Capacity per replica at the SLO, learned (``policy_capacity.py``): a decayed fit of the
     batch compute time vs batch size (Triton's per-request compute time is size-biased, and
     corrected for it) gives the saturated throughput at the largest batch that keeps
     ``delay + 2*S(b)`` within the target; a throughput measured while queues overflowed
     replaces the extrapolation. The policy plans for ``utilization`` of it (the knee of the
     latency curve; less where the model's max batch binds and the knee measured for the
     replica's shape lies lower, ``knee.py``) times a feedback gain: lowered when the latency
     breaks at a load believed safe, raised back while the latency stays low at high load.
     Over hours a second, slow factor spends the SLO's error budget: once per window the
     policy judges what it sees like an SLO-minute; a met one at high load raises it a little,
     a missed one at steady load lowers it by ``budget_step``, sized so that it settles where
     about ``miss_budget`` of the steady minutes miss (never above the saturated throughput at
     the SLO). A new deployment
     starts at the knee; one whose traffic proves smooth runs closer to its capacity.
  3. Demand: the offered rate (successes + all failures, so rejected requests count as unmet
     demand); its Holt forecast one start-up delay plus one evaluation ahead (a replica asked
     for now serves only after start-up); during a breach, the queued requests to drain; after
     a burst (a rise by half, and by a replica's worth, within one start-up delay), the
     decaying peak for ``burst_memory_s``, since bursts cluster.
  4. Replicas = ceil(demand / capacity). On a breach still going on (deep queues or REJECTED
     over the error budget) with nothing already starting, at least one more; so too on a
     latency over the target with shallow queues once the fleet has been calm for longer than
     Triton's summaries look back and the batch-time fit says smaller batches would meet it.
     BACKEND failures are reported, never scaled for.
  5. Behaviour: scale up at once (step limit per period); scale down only on fresh, healthy
     data, never back to a load per replica where a steady fleet's capacity broke (at the knee
     of it), to the highest recommendation of the stabilization window, within the step limit.
  6. Clamp to [min, max] and to the reservation limit (the limit wins over min).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from dedicap.decide import policy_tokens
from dedicap.decide.forecast import HoltState, holt_forecast, holt_update
from dedicap.decide.knee import knee_share
from dedicap.decide.policy_capacity import BatchFit, learn_batch_time, slo_batch_capacity
from dedicap.decide.policy_tokens import TokenFit, TokenSignals, TokenSLO

Direction = Literal["up", "down", "hold"]

BURST_RISE = 1.5  # a rise by this factor within one start-up delay is a burst
# How far back Triton's summary quantiles look (prometheus-cpp's time window, which Triton
# does not let one set): a quantile read now still holds requests this old.
SUMMARY_LOOKBACK_S = 60.0


@dataclass(frozen=True)
class Behavior:
    """How fast the replica count may move (the HPA's ``behavior``, same meaning)."""

    scale_up_stabilization_s: float = 0.0
    # per period, of the count at the start of the period, or a number of replicas: the larger
    # limit applies. Generous: the count comes from measured demand, and a burst from one
    # replica to a dozen must not wait for several periods (the reservation caps the cost).
    scale_up_max_percent: float = 200.0
    scale_up_max_replicas: int = 16
    scale_up_period_s: float = 15.0
    scale_down_stabilization_s: float = 180.0
    scale_down_max_percent: float = 20.0
    scale_down_max_replicas: int = 1
    scale_down_period_s: float = 60.0


@dataclass(frozen=True)
class PolicyConfig:
    min_replicas: int = 1
    max_replicas: int = 10
    latency_percentile: float = 95.0
    latency_target_ms: float = 200.0
    error_rate_max: float = 0.001
    behavior: Behavior = field(default_factory=Behavior)
    evaluation_interval_s: float = 15.0
    startup_delay_s: float = 60.0
    staleness_s: float = 90.0  # samples older than this are stale
    max_batch_size: int | None = None  # the model's Triton max_batch_size when known
    max_queue_delay_ms: float = 2.0  # the dynamic batcher's max_queue_delay
    # Fraction of the saturated throughput at the SLO to plan for: the knee of a batching
    # replica's latency curve under random arrivals.
    utilization: float = 0.9
    capacity_hint_rps: float | None = None  # a prior per replica before anything is measured
    forecast_level_tau_s: float = 30.0
    forecast_trend_tau_s: float = 180.0
    capacity_half_life_s: float = 3600.0
    burst_memory_s: float = 1800.0
    # after a burst, hold capacity for this multiple of its (decaying) peak: the next burst of
    # a cluster is rarely the same height
    burst_headroom: float = 1.25
    # Error-budget feedback: the share of steady-load windows the budget factor may let miss
    # the SLO while it tightens (half of a 99% SLO-minute objective's budget), and its step
    # down on a miss (small: a factor that swings costs more than it saves); 0 disables it.
    # How much headroom a tenant needs depends on how its traffic moves within one start-up
    # delay, which only the outcome measures.
    miss_budget: float = 0.005
    budget_step: float = 0.01
    # Burst-aware headroom: enough replicas that this quantile of the fast path's arrival
    # rates over the last `burst_memory_s` runs at the saturated throughput at the SLO (the
    # mean forecast runs at the knee, `utilization`). Where bursts take more than the rest of
    # the time, their level is held rather than chased; rarer ones are chased. 0 disables it.
    burst_quantile: float = 0.95
    # Panic when the fast path's arrivals exceed this multiple of what the ready replicas
    # serve at the SLO (or queues deeper than a batch per replica grow); 0 disables it.
    panic_threshold: float = 1.5
    # A streaming LLM's token-level objectives: then the policy runs in tokens
    # (policy_tokens.py); None for request-level models.
    tokens: TokenSLO | None = None


@dataclass(frozen=True)
class ObservationWindow:
    """Triton's signals for one ModelDeployment over the last window (rates per second)."""

    timestamp: float | None  # time of the newest sample; None when nothing was read
    window_s: float = 60.0
    request_rate: float = math.nan  # offered: successes + failures
    # The fast path: the same over a short window (a few scrapes, e.g. rate(...[37s]) with a
    # 15-s scrape), which sees a step or a burst a window sooner; NaN when not queried.
    request_rate_short: float = math.nan
    success_rate_short: float = math.nan
    mean_queue_ms_short: float = math.nan
    # how fast the queues grow over the short window (deriv of the pending-request gauge),
    # requests/s: Triton counts a request when it completes, so while queues build, arrivals
    # are the completions plus this
    queue_growth: float = math.nan
    # arrivals over the last scrape interval alone (requests completed in it plus the queues'
    # change across it, over the interval): the first view of a step that the short window
    # still averages with the level before it
    arrivals_last: float = math.nan
    success_rate: float = math.nan
    rejected_rate: float = 0.0  # failures with reason REJECTED (queue timeout / full)
    backend_failure_rate: float = 0.0  # failures with reason BACKEND (model errors)
    mean_latency_ms: float = math.nan
    latency_quantile_ms: float = math.nan  # at the SLO percentile, max over pods
    queue_depth: float = math.nan  # pending requests, summed over pods
    mean_queue_ms: float = math.nan
    mean_compute_ms: float = math.nan  # per request = per batch
    mean_batch_size: float = math.nan
    ready_replicas: int = 0
    starting_replicas: int = 0
    current_replicas: int = 0  # the count asked for now (spec.replicas)
    tokens: TokenSignals | None = None  # a streaming LLM's token signals


@dataclass(frozen=True)
class PolicyState:
    """What survives between evaluations; ``to_dict``/``from_dict`` round-trip through JSON."""

    holt: HoltState | None = None
    fit: BatchFit = field(default_factory=BatchFit)
    gain: float = 1.0
    budget: float = 1.0  # the error-budget factor (slow), beside the latency gain (fast)
    peak: float = 0.0  # decayed peak of offered rate (burst memory)
    peak_t: float | None = None
    last_jump_t: float | None = None  # when the rate last rose faster than start-up allows
    last_burst_t: float | None = None  # when such a rise last fell back below half its peak
    recent: tuple[tuple[float, float], ...] = ()  # (time, offered rate) over one start-up
    saturated_rps: float = 0.0  # per-replica throughput measured while queues overflowed
    saturated_t: float | None = None
    # the lowest per-replica offered rate at which a steady fleet's capacity broke (deep
    # queues or rejections); 0: none on record. Scale-down never goes back above its knee.
    breach_rps: float = 0.0
    breach_t: float | None = None
    # The model's max batch as learned where the spec does not give it: the mean batch of a
    # window through which the queues held more than a batch per replica (so every batch ran
    # full), rounded up; a floor of the true one (0: none yet). `deep_since`: since when the
    # queues have held that much, the fleet unchanged.
    full_batch: int = 0
    deep_since: float | None = None
    since: float | None = None  # first evaluation with fresh data
    recommendations: tuple[tuple[float, int], ...] = ()
    history: tuple[tuple[float, int], ...] = ()  # (time, desired) for step limits
    last_eval: float | None = None
    verdict_t: float | None = None  # when a window was last judged for the error budget
    last_queue: float | None = None  # queued requests at the last evaluation with fresh data
    last_queue_t: float | None = None
    last_ready: int | None = None  # ready replicas at that evaluation
    # since when the fleet has been calm (the same ready replicas, nothing starting, queues
    # within a batch per replica, a steady load) and since when the latency quantile has
    # stayed over the target; None: not now
    calm_since: float | None = None
    over_target_since: float | None = None
    # (time, fast-path arrival rate) over `burst_memory_s`: the burst-aware headroom's sample
    fast: tuple[tuple[float, float], ...] = ()
    tokens: TokenFit | None = None  # a streaming LLM's learned token capacity

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["recommendations"] = [list(x) for x in self.recommendations]
        d["history"] = [list(x) for x in self.history]
        d["recent"] = [list(x) for x in self.recent]
        d["fast"] = [list(x) for x in self.fast]
        return d

    @staticmethod
    def from_dict(d: dict[str, Any] | None, *, strict: bool = False) -> PolicyState:
        """The state `to_dict` wrote. With `strict`, anything else — a wrong type, a number
        that is not finite or out of range, an overlong list — raises ValueError instead of
        being coerced: a state read back from storage is input, and a bad one must cost a
        fresh start, never a wrong decision."""
        if strict:
            _check_state(d)
        if not d:
            return PolicyState()
        holt = d.get("holt")
        return PolicyState(
            holt=HoltState(**holt) if holt else None,
            fit=BatchFit(**d.get("fit", {})),
            gain=float(d.get("gain", 1.0)),
            budget=float(d.get("budget", 1.0)),
            peak=float(d.get("peak", 0.0)),
            peak_t=d.get("peak_t"),
            last_jump_t=d.get("last_jump_t"),
            last_burst_t=d.get("last_burst_t"),
            recent=tuple((float(t), float(r)) for t, r in d.get("recent", [])),
            saturated_rps=float(d.get("saturated_rps", 0.0)),
            saturated_t=d.get("saturated_t"),
            breach_rps=float(d.get("breach_rps", 0.0)),
            breach_t=d.get("breach_t"),
            full_batch=int(d.get("full_batch", 0)),
            deep_since=d.get("deep_since"),
            since=d.get("since"),
            recommendations=tuple((float(t), int(n)) for t, n in d.get("recommendations", [])),
            history=tuple((float(t), int(n)) for t, n in d.get("history", [])),
            last_eval=d.get("last_eval"),
            verdict_t=d.get("verdict_t"),
            last_queue=d.get("last_queue"),
            last_queue_t=d.get("last_queue_t"),
            last_ready=int(d["last_ready"]) if d.get("last_ready") is not None else None,
            calm_since=d.get("calm_since"),
            over_target_since=d.get("over_target_since"),
            fast=tuple((float(t), float(r)) for t, r in d.get("fast", [])),
            tokens=TokenFit.from_dict(d["tokens"]) if d.get("tokens") else None,
        )


_MAX_POINTS = 10_000


def _number(value: Any, what: str, lo: float = -math.inf, hi: float = math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what}: {value!r} is not a finite number")
    if not lo <= value <= hi:
        raise ValueError(f"{what}: {value!r} is outside [{lo:g}, {hi:g}]")


def _check_state(d: Any) -> None:
    """Strict shape and range checks of a stored state (`PolicyState.from_dict`)."""
    if not isinstance(d, dict):
        raise ValueError(f"the state is a {type(d).__name__}, not an object")
    for name, lo, hi in (("gain", 1e-3, 1e3), ("budget", 1e-3, 1e3), ("peak", 0.0, math.inf),
                         ("saturated_rps", 0.0, math.inf), ("breach_rps", 0.0, math.inf),
                         ("full_batch", 0, 1_000_000)):
        if name in d:
            _number(d[name], name, lo, hi)
    if isinstance(d.get("full_batch"), float):
        raise ValueError(f"full_batch: {d['full_batch']!r} is not a whole number")
    for name in ("peak_t", "last_jump_t", "last_burst_t", "saturated_t", "breach_t", "since",
                 "deep_since",
                 "last_eval", "verdict_t", "last_queue", "last_queue_t", "last_ready",
                 "calm_since", "over_target_since"):
        if d.get(name) is not None:
            _number(d[name], name)
    for name, keys in (("holt", ("level", "trend", "t")),
                       ("fit", ("w", "wb", "wbb", "wy", "wby", "max_batch_seen"))):
        part = d.get(name)
        if part is None and name == "holt":
            continue
        if not isinstance(part, dict) or set(part) - {*keys, "t"}:
            raise ValueError(f"{name}: {part!r} is not a {name} record")
        for key in keys:
            if key in part or name == "holt":
                _number(part.get(key), f"{name}.{key}")
        if part.get("t") is not None:
            _number(part["t"], f"{name}.t")
    if d.get("tokens") is not None:
        policy_tokens.check_token_fit(d["tokens"], _number)
    for name, integer in (("recent", False), ("recommendations", True), ("history", True),
                          ("fast", False)):
        points = d.get(name, [])
        if not isinstance(points, list) or len(points) > _MAX_POINTS:
            raise ValueError(f"{name}: not a list of at most {_MAX_POINTS} points")
        for point in points:
            if not isinstance(point, list) or len(point) != 2:
                raise ValueError(f"{name}: {point!r} is not a [time, value] pair")
            _number(point[0], f"{name} time")
            _number(point[1], f"{name} value", 0.0, 1e6)
            if integer and not isinstance(point[1], int):
                raise ValueError(f"{name}: {point[1]!r} is not a whole number")


@dataclass(frozen=True)
class Decision:
    replicas: int
    direction: Direction
    reason: str
    state: PolicyState
    demand_rps: float = math.nan
    forecast_rps: float = math.nan
    capacity_rps: float = math.nan  # per replica, at the SLO
    limited_by: str | None = None


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _limits(config: PolicyConfig, replica_limit: int | None) -> tuple[int, int]:
    hi = config.max_replicas if replica_limit is None else min(config.max_replicas, replica_limit)
    hi = max(hi, 0)
    lo = min(max(config.min_replicas, 0), hi)
    return lo, hi


def _offered(window: ObservationWindow) -> float:
    if _finite(window.request_rate):
        return max(window.request_rate, 0.0)
    parts = [window.success_rate, window.rejected_rate, window.backend_failure_rate]
    if all(_finite(p) for p in parts):
        return max(sum(parts), 0.0)
    return math.nan


def model_max_batch(config: PolicyConfig, state: PolicyState) -> int | None:
    """The model's max batch: the spec's, else the one learned from full batches (a floor of
    the true one, so never a belief of more than a replica serves), else None."""
    return config.max_batch_size or (state.full_batch if state.full_batch > 0 else None)


def capacity_per_replica(
    config: PolicyConfig, state: PolicyState, now: float | None = None
) -> float | None:
    """Requests/s one replica serves within the SLO, as learned so far (None: unknown)."""
    sat = saturated_at_slo(config, state, now)
    if sat is None:
        return config.capacity_hint_rps
    return max(sat * planned_utilization(config, state, now) * state.gain * state.budget, 1e-6)


def saturated_at_slo(
    config: PolicyConfig, state: PolicyState, now: float | None = None
) -> float | None:
    """Requests/s one replica serves running the largest batches that keep the SLO back to
    back, from the batch-time fit and a throughput measured with overflowing queues (None
    before the fit has a point)."""
    coef = state.fit.coefficients()
    if coef is None:
        return None
    s0, s1 = coef
    max_batch = model_max_batch(config, state)
    sat = slo_batch_capacity(
        s0, s1, max_batch, config.latency_target_ms / 1000.0,
        config.max_queue_delay_ms / 1000.0, state.fit.max_batch_seen,
    )
    if _saturation_valid(config, state, now):
        # a throughput measured with overflowing queues is a floor of the saturated capacity
        # (the window may hold unsaturated seconds too, so it only ever raises the estimate);
        # it applies where the SLO allows full batches
        full = slo_batch_capacity(s0, s1, max_batch, math.inf, 0.0, state.fit.max_batch_seen)
        if sat >= full - 1e-9:
            sat = max(sat, state.saturated_rps)
    return sat


def planned_utilization(config: PolicyConfig, state: PolicyState, now: float | None = None
                        ) -> float:
    """The share of the saturated throughput at the SLO to plan per replica: `utilization`,
    or less where random arrivals fill batches up to the max and push the latency percentile
    over the target sooner (the knee measured for the replica's shape, `knee.py`)."""
    coef = state.fit.coefficients()
    max_batch = model_max_batch(config, state)
    if coef is None or max_batch is None:
        return config.utilization
    s0, s1 = coef
    knee = knee_share(s0, s1, max_batch, config.latency_target_ms / 1000.0,
                      config.max_queue_delay_ms / 1000.0, config.latency_percentile)
    if knee is None:
        return config.utilization
    # The knee is a share of full batches back to back. Where the target leaves room for
    # less than two of them, the saturated throughput at the SLO is a smaller batch's, and the
    # knee's load a larger share of it (planning 0.9 of that smaller batch's throughput put a
    # replica past its p95 at 0.7 of saturation: 26% more than the knee a full batch 3%
    # shorter was given)
    full = max_batch / max(s0 + s1 * max_batch, 1e-12)
    sat = saturated_at_slo(config, state, now)
    if sat is not None and 0.0 < sat < full:
        knee *= full / sat
    return min(config.utilization, knee)


def fast_arrivals(window: ObservationWindow) -> float:
    """Requests/s arriving over the short window: the completions (Triton counts a request
    when it completes) plus the queues' growth (minus their shrinking: a draining backlog is
    completed, not offered, again); NaN when the short window was not read."""
    short = window.request_rate_short
    if not _finite(short):
        return math.nan
    growth = window.queue_growth if _finite(window.queue_growth) else 0.0
    return max(short + growth, 0.0)


def arrivals_seen(window: ObservationWindow, fast: float) -> float:
    """The short window's arrivals (`fast`), or the last scrape interval's where they are more:
    a step that began within the short window is averaged there with the level before it and
    whole only in the newest interval."""
    return max(fast, window.arrivals_last) if _finite(window.arrivals_last) else fast


def burst_level(config: PolicyConfig, fast: tuple[tuple[float, float], ...]) -> float | None:
    """The `burst_quantile` of the fast arrival rates kept (None: off, or nothing kept)."""
    if config.burst_quantile <= 0.0 or not fast:
        return None
    rates = sorted(r for _, r in fast)
    k = min(math.ceil(config.burst_quantile * len(rates)) - 1, len(rates) - 1)
    return rates[max(k, 0)]


def _load_explains_latency(config: PolicyConfig, state: PolicyState, per_replica: float
                           ) -> bool:
    """Whether more replicas would lower a latency over the target by the batch-time fit: a
    lone request's batch fits the target's budget (the capacity's own rule), so smaller
    batches meet it, and each replica carries at least half of what it saturates at. A model
    slower than the target, or a latency that no load explains (a slow network, a starved
    host), gets nothing from more replicas: each step halves the load, so steps stop."""
    fit = state.fit
    coef = fit.coefficients()
    if coef is None or not _finite(per_replica):
        return False
    s0, s1 = coef
    target_s = config.latency_target_ms / 1000.0
    delay_s = config.max_queue_delay_ms / 1000.0
    if delay_s + 2.0 * (s0 + s1) >= target_s:
        return False
    sat = slo_batch_capacity(s0, s1, model_max_batch(config, state), target_s, delay_s,
                             fit.max_batch_seen)
    return per_replica >= 0.5 * sat


def _saturation_valid(config: PolicyConfig, state: PolicyState, now: float | None) -> bool:
    if state.saturated_rps <= 0.0 or state.saturated_t is None:
        return False
    age = 0.0 if now is None else max(now - state.saturated_t, 0.0)
    return age <= 2.0 * config.capacity_half_life_s


def _spend_error_budget(
    config: PolicyConfig, budget: float, missed: bool, load: float, steady_load: bool
) -> float:
    """The budget factor after judging one window like an SLO-minute (module docstring).

    Up ``budget_step * b / (1 - b)`` per met window at high load and down ``budget_step`` per
    missed window at steady load: the factor stops drifting where a share ``b`` of those
    windows miss. A miss during a rise faster than replicas start says nothing about the
    steady-state headroom (the burst memory handles those), and a met window at low load
    proves nothing.
    """
    b = min(max(config.miss_budget, 0.0), 0.5)
    ceiling = 1.0 / max(config.utilization, 1e-6)  # plan at most the saturated throughput
    if missed and steady_load:
        return max(0.5, budget * (1.0 - config.budget_step))
    if not missed and load >= 0.8:
        return min(max(budget, ceiling), budget * (1.0 + config.budget_step * b / (1.0 - b)))
    return budget


def _hold(
    config: PolicyConfig, window: ObservationWindow, state: PolicyState, now: float,
    replica_limit: int | None, why: str,
) -> Decision:
    lo, hi = _limits(config, replica_limit)
    current = window.current_replicas
    desired = min(max(current, lo), hi)
    direction: Direction = "up" if desired > current else "down" if desired < current else "hold"
    reason = why
    if desired != current:
        reason += f"; {'raised to the minimum' if desired > current else 'lowered to the limit'}"
    history = _trim((*state.history, (now, desired)), now, _history_span(config))
    return Decision(
        replicas=desired, direction=direction, reason=reason,
        state=replace(state, history=history, last_eval=now),
        limited_by="stale" if desired == current else ("min" if desired > current else "max"),
    )


def _history_span(config: PolicyConfig) -> float:
    b = config.behavior
    return max(b.scale_up_period_s, b.scale_down_period_s, b.scale_down_stabilization_s,
               b.scale_up_stabilization_s, 1.0)


def _trim(
    items: tuple[tuple[float, int], ...], now: float, span: float
) -> tuple[tuple[float, int], ...]:
    return tuple((t, n) for t, n in items if now - t <= span + 1e-9)


def decide(
    config: PolicyConfig,
    window: ObservationWindow,
    state: PolicyState,
    now: float,
    replica_limit: int | None = None,
) -> Decision:
    """The desired replica count for one evaluation (see the module docstring)."""
    if config.tokens is not None:
        # a streaming LLM: the same policy with a generated token as the unit of work
        return policy_tokens.decide_in_tokens(config, window, state, now, replica_limit, decide)
    current = max(window.current_replicas, 0)
    lo, hi = _limits(config, replica_limit)
    offered = _offered(window)

    # 1. Freshness: without fresh data, hold.
    if window.timestamp is None:
        return _hold(config, window, state, now, replica_limit, "no metrics: holding")
    age = now - window.timestamp
    if age > config.staleness_s:
        return _hold(config, window, state, now, replica_limit,
                     f"metrics stale ({age:.0f}s old): holding")
    if not _finite(offered):
        return _hold(config, window, state, now, replica_limit, "request rate missing: holding")

    ready = max(window.ready_replicas, 0)
    starting = max(window.starting_replicas, 0)
    target_ms = config.latency_target_ms
    lat = window.latency_quantile_ms
    latency_breach = _finite(lat) and lat > target_ms
    rejected_ratio = (window.rejected_rate / offered) if offered > 0 else 0.0
    backend_ratio = (window.backend_failure_rate / offered) if offered > 0 else 0.0
    reject_breach = rejected_ratio > config.error_rate_max
    breach = latency_breach or reject_breach

    # 2. Learn the batch curve (and the saturated throughput) from this window.
    since = state.since if state.since is not None else now
    fit = state.fit
    b, comp = window.mean_batch_size, window.mean_compute_ms
    served = window.success_rate if _finite(window.success_rate) else offered
    fit = learn_batch_time(fit, b, comp, served, window.window_s, now,
                           config.capacity_half_life_s)
    sat_rps, sat_t = state.saturated_rps, state.saturated_t
    queue_now = window.queue_depth if _finite(window.queue_depth) else 0.0
    batch_cap = (model_max_batch(config, state)
                 or max(2.0 * (b if _finite(b) else 1.0), 2.0))
    steady = all(n == current for t, n in state.history if now - t <= window.window_s + 1e-9)
    overflowing = (ready > 0 and starting == 0 and steady and queue_now > ready * batch_cap
                   and _finite(window.success_rate) and window.success_rate > 0)
    if overflowing:
        measured = window.success_rate / ready
        previous = sat_rps if _saturation_valid(config, state, now) else 0.0
        sat_rps, sat_t = max(previous, measured), now
    deep_since = ((now if state.deep_since is None else state.deep_since) if overflowing
                  else None)
    full_batch = state.full_batch
    if (config.max_batch_size is None and deep_since is not None and _finite(b)
            and now - deep_since >= window.window_s - 1e-9):
        # queues deeper than a batch per replica at every evaluation of a whole window: the
        # window's batches ran full, so its mean batch is the max (less by a moment of
        # shallower queue between evaluations: the max is a whole number, at least this)
        full_batch = max(full_batch, min(math.ceil(b - 1e-9), 1_000_000))
    state = replace(state, fit=fit, saturated_rps=sat_rps, saturated_t=sat_t, since=since,
                    deep_since=deep_since, full_batch=full_batch)
    cap = capacity_per_replica(config, state, now)
    per_replica = offered / ready if ready > 0 else math.nan
    gain = state.gain
    span = config.startup_delay_s + window.window_s
    seen = [r for t, r in state.recent if now - t <= span] + [offered]
    steady_load = max(seen) <= 1.2 * min(seen)
    fast = fast_arrivals(window)
    # A latency over the target with shallow queues is, most of the time, a quantile still
    # showing an overload the fleet has caught up with (Triton's summaries look back a
    # minute). Not once the fleet has been calm for longer than the summary looks back and
    # the latency has stayed over the target all along: then it is what this fleet does at
    # this load (a replica slow rather than queued: large batches at random arrivals), and
    # it counts as a capacity breach where the fit says smaller batches would meet the target.
    deep = queue_now > ready * batch_cap
    # (the first evaluation with fresh data may start the calm span: a settled fleet's state
    # is then a fixed point from that evaluation on, and costs no further status write)
    calm = (ready > 0 and starting == 0 and not deep and not reject_breach and steady_load
            and state.last_ready in (None, ready)
            and not (_finite(fast) and fast > BURST_RISE * offered))
    calm_since = (now if state.calm_since is None else state.calm_since) if calm else None
    over_since = ((now if state.over_target_since is None else state.over_target_since)
                  if latency_breach else None)
    look = SUMMARY_LOOKBACK_S + config.evaluation_interval_s
    slow_breach = (calm_since is not None and now - calm_since >= look - 1e-9
                   and over_since is not None and now - over_since >= look - 1e-9
                   and _load_explains_latency(config, state, per_replica))
    state = replace(state, calm_since=calm_since, over_target_since=over_since)
    capacity_breach = reject_breach or (latency_breach and deep) or slow_breach
    if cap is not None and _finite(per_replica):
        load = per_replica / cap
        if capacity_breach and 0.5 <= load <= 1.0 and starting == 0 and steady_load and steady:
            # the latency broke while a steady load was within what we believed a replica
            # serves: we believed too much. Not evidence: a breach at a burst's onset, one whose
            # window began before the fleet last changed, or a quantile over shallow queues
            # that may still show what the fleet went through before it caught up (above)
            gain = max(0.5, gain * 0.9)
        elif (not breach and _finite(lat) and lat < 0.65 * target_ms and load >= 0.85
              and rejected_ratio == 0.0):
            # comfortably within the SLO at high load: the fit is conservative, creep back up
            gain = min(1.0, gain * 1.01)
    # The scale-down's evidence: the per-replica load at which a steady fleet's capacity broke
    # under a steady load. The capacity above is a belief (a fit of batch times); this is what
    # the replicas did. A met window at a higher steady load proves it a fluke and clears it.
    breach_rps, breach_t = state.breach_rps, state.breach_t
    if breach_t is not None and now - breach_t > 2.0 * config.capacity_half_life_s:
        breach_rps, breach_t = 0.0, None
    if _finite(per_replica) and starting == 0 and steady and steady_load:
        # (a breach within a burst says what the burst needed, which the burst memory holds)
        # at the load the replicas had: a burst shorter than the rate window shows in the
        # short one (a window's average would blame the burst on the quiet before it)
        at = max(offered, fast) / ready if _finite(fast) else per_replica
        if capacity_breach and at > 0.0:
            if breach_rps <= 0.0 or at < breach_rps:
                breach_rps, breach_t = at, now
        elif breach_rps > 0.0 and not breach and _finite(lat) and per_replica > breach_rps:
            breach_rps, breach_t = 0.0, None
    state = replace(state, breach_rps=breach_rps, breach_t=breach_t)
    # the error budget moves its own, slow factor: the fast creep above must not undo it
    budget, verdict_t = state.budget, state.verdict_t
    if (config.miss_budget > 0.0 and cap is not None and _finite(per_replica)
            and (verdict_t is None or now - verdict_t >= window.window_s - 1e-9)):
        verdict_t = now
        budget = _spend_error_budget(config, budget, breach, per_replica / cap, steady_load)
    state = replace(state, gain=gain, budget=budget, verdict_t=verdict_t)
    cap = capacity_per_replica(config, state, now)

    # 3. Demand: now, forecast one start-up ahead, backlog, burst memory.
    # the fast path's rate counts only when it says a burst is under way: on smooth traffic
    # its extra noise would only buy replicas
    burst_now = _finite(fast) and fast > BURST_RISE * offered
    if burst_now:
        # a jump is a new level, not a slope: the rate window still averages the old level,
        # and a trend learned from its catching up forecasts a rise that is not coming (it
        # took a second scale-up, a minute after a step had been met)
        holt = HoltState(level=fast, trend=0.0, t=now)
    else:
        # while the rate window catches up with a level the fast path already sees, it
        # ramps: the forecast follows the higher of the two, so the ramp is no trend
        followed = max(offered, fast) if _finite(fast) else offered
        holt = holt_update(state.holt, followed, now, config.forecast_level_tau_s,
                           config.forecast_trend_tau_s)
    horizon = config.startup_delay_s + config.evaluation_interval_s + window.window_s / 2.0
    forecast = holt_forecast(holt, horizon)
    rate_now = fast if burst_now else offered
    backlog = breach and queue_now > ready * batch_cap
    if burst_now and backlog:
        # a step the short window still blends with the level before it (the panic sized for
        # what its first view held, and those replicas are ready now, so it does not fire
        # again). Only while a breach leaves queues deep: one interval's count is noisy, and
        # on a met SLO noise would only buy replicas
        rate_now = arrivals_seen(window, fast)
    demand = max(rate_now, forecast)
    if backlog:
        # drain what waits in the queues over one start-up delay (replicas asked for now
        # serve only after it; within one 5-s evaluation, as before, asked for twice the
        # replicas a step needed on the local stack)
        demand += queue_now / max(config.startup_delay_s, config.evaluation_interval_s, 1.0)
    # Burst memory: a rise of more than half within one start-up delay (and worth at least a
    # replica) cannot be followed by starting replicas. After one, keep capacity for the
    # (slowly decaying) peak for burst_memory_s: bursts come in clusters, and the next one
    # would otherwise find the fleet scaled down again. The peak is the sustained level (the
    # rate window's), not a spike of the fast path's: held for half an hour, 1.25x a spike of
    # a few seconds cost more than any other rule on production-like bursty traffic.
    recent = (*((t, r) for t, r in state.recent if now - t <= span), (now, offered))
    low = min(r for _, r in recent)
    last_jump_t = state.last_jump_t
    if cap is not None and rate_now > BURST_RISE * low and rate_now - low >= cap:
        last_jump_t = now
    peak = state.peak
    if state.peak_t is not None:
        peak *= 0.5 ** (max(now - state.peak_t, 0.0) / max(config.burst_memory_s, 1.0))
    peak = max(peak, offered)
    # a burst is a rise that falls back: a step up that stays is a new level, which the
    # forecast and the stabilization handle without holding extra capacity
    last_burst_t = state.last_burst_t
    if (last_jump_t is not None and now - last_jump_t <= config.burst_memory_s
            and rate_now < 0.5 * peak
            and (last_burst_t is None or last_burst_t < last_jump_t)):
        last_burst_t = now  # the fall that completes the latest burst: hold from here
    bursty = last_burst_t is not None and now - last_burst_t <= config.burst_memory_s
    fast_seen = (*((t, r) for t, r in state.fast if now - t <= config.burst_memory_s),
                 (now, round(fast if _finite(fast) else offered, 3)))
    state = replace(state, holt=holt, peak=peak, peak_t=now, recent=recent,
                    last_jump_t=last_jump_t, last_burst_t=last_burst_t, fast=fast_seen)
    if bursty and peak * config.burst_headroom > demand:
        demand = peak * config.burst_headroom
        burst_note = (f"; holding for {config.burst_headroom:g}x a burst peak of "
                      f"{peak:.0f} req/s")
    else:
        burst_note = ""
    level = burst_level(config, fast_seen)
    jumped = last_jump_t is not None and now - last_jump_t <= config.burst_memory_s
    if level is not None and jumped and max(r for _, r in recent) > 0.0:
        # Burst-aware headroom: the q-quantile of the recent fast rates, at the saturated
        # throughput at the SLO. The knee's margin covers what smooth traffic does, so this
        # binds only where bursts are frequent enough to hold their level rather than chase it
        held = level * config.utilization
        if held > demand:
            demand = held
            burst_note += (f"; holding for {level:.0f} req/s (p{100 * config.burst_quantile:g} "
                           f"of the last {config.burst_memory_s / 60:g} min)")

    # 4. Replicas for the demand.
    idle = demand <= 0.0 and queue_now <= 0.0 and max(r for _, r in recent) <= 0.0
    if (cap is None or cap <= 0) and idle:
        # fresh data saying nobody called for a whole start-up delay: whatever a replica
        # serves, none is needed beyond the minimum (the stabilization window still applies)
        need = 0
        why = "no traffic"
    elif cap is None or cap <= 0:
        # nothing learned yet and no hint: the current count is the only safe assumption,
        # plus one on a breach.
        need = current + (1 if breach and starting == 0 else 0)
        why = "capacity not yet measured"
    else:
        need = math.ceil(demand / cap - 1e-9) if demand > 0 else 0
        why = (f"demand {demand:.0f} req/s (now {rate_now:.0f}, forecast {forecast:.0f}) "
               f"/ {cap:.0f} req/s per replica{burst_note}")
        if need < current:
            # careful scale-down: a replica given up now takes a start-up delay to come back,
            # so keep enough for the highest rate of the last start-up delay
            recent_max = max(r for _, r in recent)
            floor = min(math.ceil(recent_max / cap - 1e-9), current)
            if floor > need:
                need = floor
                why += f"; kept for {recent_max:.0f} req/s seen within one start-up delay"
            if state.breach_rps > 0.0:
                # nor back to a load per replica where the capacity broke (at its knee): a
                # scale-down is the one move that tests the belief with the SLO at stake
                ratio = recent_max / (state.breach_rps * config.utilization)
                held = min(math.ceil(ratio - 1e-9), current) if math.isfinite(ratio) else current
                if held > need:
                    need = held
                    why += (f"; kept: the latency broke at {state.breach_rps:.0f} req/s "
                            "per replica")
    # Panic (in the spirit of Knative's): the fast path sees arrivals beyond what the ready
    # replicas serve at the SLO, or a backlog beyond a batch per replica that takes longer
    # than half the latency target to work off (Little's law: the queue over the rate it is
    # served at) and grows. Then the count follows the fast arrival rate at once, plus one
    # replica to drain the backlog, without waiting for the rate window or the summaries to
    # catch up. (Scale-down waits at least the stabilization window after it, as after any
    # rise.)
    if cap is not None and cap > 0 and ready > 0 and _finite(fast) and config.panic_threshold > 0:
        saturated = cap / max(planned_utilization(config, state, now), 1e-6)
        served_fast = window.request_rate_short
        wait_s = queue_now / served_fast if served_fast > 0 else math.inf if queue_now else 0.0
        # (a batch per replica waiting is what batching holds anyway, at any load)
        deep = queue_now > ready * batch_cap and wait_s > 0.5 * target_ms / 1000.0
        growing = _finite(window.queue_growth) and window.queue_growth > 0.0
        if fast > config.panic_threshold * ready * saturated or (deep and growing):
            # size for the newest scrape interval where it sees more: a step that began within
            # the short window is averaged there with the level before it, and the count
            # would follow it in several decisions (the last one after the SLO was back)
            arriving = arrivals_seen(window, fast)
            panic = math.ceil(arriving / cap - 1e-9) + (1 if deep else 0)
            if panic > need:
                need = panic
                why += (f"; panic: {arriving:.0f} req/s arriving (served "
                        f"{window.request_rate_short:.0f}, queues {queue_now:.0f})")
    # the summary quantile looks back a whole window: a breach counts only while the queues
    # are still deep (or requests are being rejected), not after the backlog has drained, nor
    # while it drains: a backlog that shrank since the last evaluation is being served, and
    # stepping up again before it is gone only buys replicas the demand does not need
    draining = (state.last_queue is not None and state.last_queue_t is not None
                and now - state.last_queue_t <= 2.0 * config.evaluation_interval_s + 1e-9
                and queue_now < state.last_queue)
    # Nor when replicas became ready since: the queues have not had an evaluation interval
    # with them yet (after a scale-up, the backlog of the old fleet still grew at first).
    settling = state.last_ready is not None and state.last_ready != ready
    breach_now = slow_breach or reject_breach or (latency_breach and deep
                                                  and not draining and not settling)
    state = replace(state, last_queue=queue_now, last_queue_t=now, last_ready=ready)
    if breach_now and starting == 0 and need <= ready:
        need = ready + max(1, math.ceil(0.1 * ready))
        why += "; capacity breach with nothing starting: one step up"
    if backend_ratio > config.error_rate_max:
        why += f"; BACKEND failures {backend_ratio:.2%} (model errors: replicas cannot fix them)"
    if latency_breach:
        why += f"; p{config.latency_percentile:g} {lat:.0f}ms > {target_ms:.0f}ms"
    if reject_breach:
        why += f"; REJECTED {rejected_ratio:.2%}"
    need = min(max(need, lo), hi)

    # 5. Behaviour: stabilization windows and step limits.
    beh = config.behavior
    recs = _trim((*state.recommendations, (now, need)), now, _history_span(config))
    history = state.history
    limited_by: str | None = None
    desired = need
    if need > current:
        up_window = [n for t, n in recs if now - t <= beh.scale_up_stabilization_s + 1e-9]
        desired = min(up_window) if up_window else need
        desired = max(desired, current)
        base_hist = [n for t, n in history if now - t <= beh.scale_up_period_s + 1e-9]
        base = min([*base_hist, current])
        step_cap = base + max(beh.scale_up_max_replicas,
                              math.ceil(base * beh.scale_up_max_percent / 100.0))
        if desired > step_cap:
            desired, limited_by = max(step_cap, current), "scale-up step limit"
    elif need < current:
        healthy = not breach and not (_finite(lat) and lat > 0.8 * target_ms)
        if not healthy:
            desired, limited_by = current, "latency near target: no scale-down"
        elif now - since < beh.scale_down_stabilization_s:
            desired, limited_by = current, "observing for one stabilization window first"
        else:
            down_window = [n for t, n in recs if now - t <= beh.scale_down_stabilization_s + 1e-9]
            desired = min(max(down_window) if down_window else need, current)
            if desired < current:
                base_hist = [n for t, n in history if now - t <= beh.scale_down_period_s + 1e-9]
                base = max([*base_hist, current])
                step = max(beh.scale_down_max_replicas,
                           math.floor(base * beh.scale_down_max_percent / 100.0))
                floor = base - step
                if desired < floor:
                    desired, limited_by = min(floor, current), "scale-down step limit"
            elif need < current:
                limited_by = "scale-down stabilization"
    # 6. Hard limits (the reservation wins over everything).
    desired = min(max(desired, lo), hi)
    if desired == hi and need >= hi and hi < config.max_replicas:
        limited_by = "reservation limit"
    elif desired == hi and need >= hi:
        limited_by = limited_by or "max replicas"
    direction: Direction = "up" if desired > current else "down" if desired < current else "hold"
    history = _trim((*history, (now, desired)), now, _history_span(config))
    state = replace(state, recommendations=recs, history=history, last_eval=now)
    return Decision(
        replicas=desired, direction=direction,
        reason=why + (f" [{limited_by}]" if limited_by else ""),
        state=state, demand_rps=demand, forecast_rps=forecast,
        capacity_rps=cap if cap is not None else math.nan, limited_by=limited_by,
    )
