"""The autoscaling policy for streaming LLMs: capacity in tokens, learned from the replicas' own
token signals, fed to the same ``decide()`` (pure, like it).

A streaming LLM replica runs continuous batching: every engine step generates one token for each
running sequence, so its time per output token (TPOT) is the step's duration, which grows with
the sequences running beside it, and a sequence holds KV cache for its prompt and the tokens it
generated. What a replica serves within a token-level SLO therefore follows from three curves,
learned from what vLLM's metrics report (``TokenFit``, exponentially forgotten like the
request-level fit):

- the step time against the running sequences per replica, ``tau(n) = s0 + s1*n``, a
  least-squares fit of the points (mean running sequences, mean TPOT) of each window (by
  Little's law the mean running over time and the token-weighted mean TPOT are consistent:
  generated tokens/s = running / TPOT);
- the KV cache one running sequence holds (KV usage over running sequences), so that
  ``kv_target / kv_per_seq`` sequences fit in the cache;
- the part of the time to first token that is not waiting for a step (the prefill of a
  prompt), measured from windows in which no request waited for room.

The largest number of running sequences ``n_slo`` that keeps TPOT (times the learned ratio of
its percentile to its mean) within its target, ``2*tau(n) + prefill`` within the TTFT target (a
request waits for the step in flight, then rides in the next), the cache at ``kv_target`` and
the engine's sequence limit gives the saturated capacity at the SLO: ``n_slo / tau(n_slo)``
generated tokens per second per replica. An objective that no number of replicas can meet (a
TTFT target below one replica's prefill of the prompts, a TPOT target below one sequence's step)
bounds nothing: it is reported, never scaled for.

The seam: ``decide_in_tokens`` states the observation in the request-level policy's vocabulary
with a generated token as the unit of work (offered rate = tokens/s, capacity per replica =
tokens/s at the SLO, latency = the worst token-level SLI relative to its target, offered rate
= tokens generated plus the growth of the waiting queues, unmet demand = requests waiting
beyond one per replica, which a full KV cache causes; no queue to drain, since a backlog stays
with its replica) and runs the very ``decide()`` the request-level models
get: forecast, burst memory, latency feedback, error budget, stabilization and limits are
shared. BACKEND failures are reported, never scaled for; preemptions are reported.

TensorRT-LLM's backend counts no tokens and publishes no per-token latency: there the unit of
work is a request, and a replica's capacity is bounded by its KV cache (sequences that fit, over
the mean request duration) until a breach teaches the latency feedback otherwise.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from dedicap.decide.policy_capacity import BatchFit

if TYPE_CHECKING:
    from dedicap.decide.policy import Decision, ObservationWindow, PolicyConfig, PolicyState

# When at least this share of a replica's KV cache is in use and requests wait, the cache is
# what holds them back (vLLM admits a request while the cache holds its whole prompt, above a
# small watermark, so a cache whose rest cannot hold the next prompt reads well below 100%).
KV_SATURATED = 0.8


@dataclass(frozen=True)
class TokenSLO:
    """The token-level objectives (``spec.autoscaling.slo``) and what is known of the engine."""

    profile: str = "vllm"
    ttft_percentile: float = 95.0
    ttft_target_ms: float = math.inf
    tpot_percentile: float = 95.0
    tpot_target_ms: float = math.inf
    e2e_percentile: float = 95.0  # the request-latency objective, for a stream: to its end
    e2e_target_ms: float = math.inf
    kv_target: float = 0.9  # plan the KV cache this full at most
    # the share of a replica's saturated token throughput to plan for: lower than a batching
    # replica's knee (0.9), because a prompt waits in the prefill queue, whose wait under
    # random arrivals grows steeply past about 80% of its capacity (TTFT's percentile first)
    utilization: float = 0.8
    max_num_seqs: int | None = None  # the engine's sequence limit, when known
    tokens_per_minute_prior: float | None = None  # per replica, before anything is learned


@dataclass(frozen=True)
class TokenSignals:
    """What the LLM backend reported over the window (summed over pods; NaN unknown)."""

    ttft_ms: float = math.nan  # at the TTFT percentile, over every request of the window
    tpot_ms: float = math.nan
    e2e_ms: float = math.nan
    mean_ttft_ms: float = math.nan
    mean_tpot_ms: float = math.nan
    finished_rate: float = math.nan  # requests/s
    prompt_token_rate: float = math.nan
    generation_token_rate: float = math.nan
    running: float = math.nan  # sequences, mean over the window
    running_now: float = math.nan
    waiting: float = math.nan  # requests now
    waiting_max: float = math.nan  # the most any replica had waiting in the window
    waiting_growth: float = math.nan  # requests/s the waiting queues grew by over the window
    kv_usage: float = math.nan  # the fullest replica's, 0..1
    preemption_rate: float = math.nan  # per second (vLLM)
    paused: float = math.nan  # TensorRT-LLM's paused requests now


@dataclass(frozen=True)
class Mean:
    """A weighted mean with exponential forgetting (the decay is applied by ``TokenFit``)."""

    w: float = 0.0
    wx: float = 0.0

    def add(self, x: float, weight: float, decay: float) -> Mean:
        return Mean(self.w * decay + weight, self.wx * decay + weight * x)

    def value(self) -> float | None:
        return self.wx / self.w if self.w > 1e-9 else None


@dataclass(frozen=True)
class TokenFit:
    """What the policy learned of a streaming LLM's replicas (saved in the policy state)."""

    step: BatchFit = field(default_factory=BatchFit)  # step seconds vs running per replica
    kv_per_seq: Mean = field(default_factory=Mean)  # KV-cache share one sequence holds
    prefill_ms: Mean = field(default_factory=Mean)  # TTFT percentile less two steps, unqueued
    tpot_ratio: Mean = field(default_factory=Mean)  # TPOT percentile over its mean
    prompt_per_token: Mean = field(default_factory=Mean)  # prompt tokens per generated token
    tokens_per_request: Mean = field(default_factory=Mean)  # generated tokens per request
    request_s: Mean = field(default_factory=Mean)  # mean request duration (TensorRT-LLM)
    max_running: float = 0.0  # the most sequences per replica seen running
    # prompt tokens/s per replica served while TTFT broke with requests waiting and the KV
    # cache not full: the prefill is what saturated (its time, or the step's token budget)
    prefill_sat: float = 0.0
    prefill_sat_t: float | None = None
    t: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> TokenFit:
        means = {name: Mean(**d[name]) for name in _MEANS if name in d}
        return TokenFit(step=BatchFit(**d.get("step", {})), **means,
                        max_running=float(d.get("max_running", 0.0)),
                        prefill_sat=float(d.get("prefill_sat", 0.0)),
                        prefill_sat_t=d.get("prefill_sat_t"), t=d.get("t"))


_MEANS = ("kv_per_seq", "prefill_ms", "tpot_ratio", "prompt_per_token", "tokens_per_request",
          "request_s")
_STEP_KEYS = ("w", "wb", "wbb", "wy", "wby", "max_batch_seen")


def check_token_fit(d: Any, number: Callable[..., None]) -> None:
    """Strict checks of a stored ``TokenFit`` (``PolicyState.from_dict(strict=True)``):
    `number(value, what, lo, hi)` raises for anything but a finite number in range."""
    if not isinstance(d, dict) or set(d) - {"step", *_MEANS, "max_running", "prefill_sat",
                                            "prefill_sat_t", "t"}:
        raise ValueError(f"tokens: {d!r} is not a token fit")
    step = d.get("step", {})
    if not isinstance(step, dict) or set(step) - {*_STEP_KEYS, "t"}:
        raise ValueError(f"tokens.step: {step!r} is not a step-time fit")
    for key in _STEP_KEYS:
        if key in step:
            number(step[key], f"tokens.step.{key}")
    for name in _MEANS:
        part = d.get(name, {})
        if not isinstance(part, dict) or set(part) - {"w", "wx"}:
            raise ValueError(f"tokens.{name}: {part!r} is not a weighted mean")
        for key in ("w", "wx"):
            if key in part:
                number(part[key], f"tokens.{name}.{key}", 0.0)
    number(d.get("max_running", 0.0), "tokens.max_running", 0.0, 1e6)
    number(d.get("prefill_sat", 0.0), "tokens.prefill_sat", 0.0, 1e12)
    for t in (d.get("t"), step.get("t"), d.get("prefill_sat_t")):
        if t is not None:
            number(t, "tokens.t")


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


# Before the running sequences have spread enough to identify the step time's slope, assume a
# tenth of a step is per-sequence cost: a decode step is mostly the weights read once (the
# data sheets put a sequence's own cost at about 1% of the step for an 8B model); the
# request-level fit's "half fixed" would make a few running sequences look like a full replica.
PRIOR_PER_SEQUENCE_SHARE = 0.1


def step_line(fit: BatchFit) -> tuple[float, float] | None:
    """(s0, s1) of the step time ``s0 + s1*n`` (seconds, n running sequences per replica)."""
    if fit.w <= 0.0:
        return None
    mn, my = fit.wb / fit.w, fit.wy / fit.w
    if fit.wbb / fit.w - mn * mn > 1.0:  # spread enough: the least-squares line
        return fit.coefficients()
    s1 = PRIOR_PER_SEQUENCE_SHARE * my / max(mn, 1.0)
    return max(my - s1 * mn, 0.0), s1


def by_tokens(signals: TokenSignals) -> bool:
    """Whether the backend counts tokens (vLLM): else the unit of work is a request."""
    return _finite(signals.generation_token_rate)


def learn(fit: TokenFit, s: TokenSignals, ready: int, window_s: float, now: float,
          half_life_s: float, request_ms: float = math.nan, served_rps: float = math.nan,
          ttft_target_ms: float = math.inf) -> TokenFit:
    """`fit` with one window's points; what the window cannot tell leaves it as it was.
    `request_ms` (Triton's mean request duration, to the final response) and `served_rps` are
    the unit of work where the backend counts no tokens (TensorRT-LLM)."""
    if ready <= 0:
        return fit
    decay = 1.0 if fit.t is None else 0.5 ** (max(now - fit.t, 0.0) / half_life_s)
    step = fit.step
    changes: dict[str, Any] = {}
    running = s.running / ready if _finite(s.running) else math.nan
    gen = s.generation_token_rate
    if _finite(running) and running >= 0.5 and _finite(s.mean_tpot_ms) and s.mean_tpot_ms > 0:
        weight = min(1.0, gen * window_s / 1000.0) if _finite(gen) else 0.5
        step = step.add(running, s.mean_tpot_ms / 1000.0, weight, now, half_life_s)
        if _finite(s.tpot_ms) and s.tpot_ms > 0:
            changes["tpot_ratio"] = fit.tpot_ratio.add(
                min(max(s.tpot_ms / s.mean_tpot_ms, 1.0), 10.0), weight, decay)
    now_running = s.running_now / ready if _finite(s.running_now) else math.nan
    if _finite(now_running) and now_running >= 1.0 and _finite(s.kv_usage) and s.kv_usage > 0:
        changes["kv_per_seq"] = fit.kv_per_seq.add(min(s.kv_usage / now_running, 1.0),
                                                   now_running, decay)
    coef = step_line(step)
    # the prefill part of TTFT, from windows in which no request waited for room anywhere
    if (coef is not None and _finite(s.ttft_ms) and _finite(s.waiting_max)
            and s.waiting_max < 0.5 and _finite(running)):
        tau_ms = 1000.0 * (coef[0] + coef[1] * max(running, 1.0))
        changes["prefill_ms"] = fit.prefill_ms.add(max(s.ttft_ms - 2.0 * tau_ms, 0.0), 1.0,
                                                   decay)
    finished = s.finished_rate
    if _finite(gen) and gen > 0:
        if _finite(s.prompt_token_rate):
            changes["prompt_per_token"] = fit.prompt_per_token.add(
                s.prompt_token_rate / gen, min(1.0, gen * window_s / 1000.0), decay)
        if _finite(finished) and finished > 0:
            changes["tokens_per_request"] = fit.tokens_per_request.add(
                gen / finished, min(1.0, finished * window_s / 100.0), decay)
    if (not _finite(gen) and _finite(request_ms) and request_ms > 0 and _finite(served_rps)
            and served_rps > 0):
        changes["request_s"] = fit.request_s.add(request_ms / 1000.0,
                                                 min(1.0, served_rps * window_s / 100.0), decay)
    prompt_rate = s.prompt_token_rate / ready if _finite(s.prompt_token_rate) else math.nan
    if (_finite(prompt_rate) and prompt_rate > 0 and _finite(s.ttft_ms)
            and s.ttft_ms > ttft_target_ms and _finite(s.waiting_max) and s.waiting_max >= 1
            and not (_finite(s.kv_usage) and s.kv_usage >= KV_SATURATED)):
        # like the request-level policy's throughput measured with overflowing queues: a
        # floor of the saturated prefill rate, which only ever raises the estimate while valid
        valid = fit.prefill_sat_t is not None and now - fit.prefill_sat_t <= 2 * half_life_s
        fit = replace(fit, prefill_sat=max(fit.prefill_sat if valid else 0.0, prompt_rate),
                      prefill_sat_t=now)
    decayed = {name: getattr(fit, name).add(0.0, 0.0, decay)
               for name in _MEANS if name not in changes}
    peak = max(fit.max_running, running if _finite(running) else 0.0,
               now_running if _finite(now_running) else 0.0)
    return replace(fit, step=step, max_running=peak, t=now, **decayed, **changes)


@dataclass(frozen=True)
class TokenCapacity:
    """What one replica serves within the SLO (saturated, before the policy's headroom)."""

    work_per_s: float  # generated tokens/s (vLLM) or requests/s (TensorRT-LLM)
    sequences: float  # running sequences at that point
    # timePerOutputToken | timeToFirstToken | kvCache | maxSequences | prefill | seen
    limited_by: str
    prompt_tokens_per_s: float = math.nan
    unattainable: tuple[str, ...] = ()  # objectives no replica count can meet

    @property
    def tokens_per_minute(self) -> float:
        """Prompt and generated tokens per minute (NaN where tokens are not counted)."""
        if not _finite(self.prompt_tokens_per_s):
            return math.nan
        return 60.0 * (self.work_per_s + self.prompt_tokens_per_s)


def capacity(slo: TokenSLO, fit: TokenFit, tokens: bool = True) -> TokenCapacity | None:
    """The saturated capacity of one replica at the SLO, as learned so far (None: unknown)."""
    bounds: dict[str, float] = {}
    unattainable: list[str] = []
    kv = fit.kv_per_seq.value()
    if kv is not None and kv > 0:
        bounds["kvCache"] = slo.kv_target / kv
    if slo.max_num_seqs:
        bounds["maxSequences"] = float(slo.max_num_seqs)
    if not tokens:
        per_request = fit.request_s.value()
        if not bounds or per_request is None:
            return None
        name = min(bounds, key=lambda k: bounds[k])
        n = max(bounds[name], 1.0)
        return TokenCapacity(n / per_request, n, name)
    coef = step_line(fit.step)
    if coef is None:
        return None
    s0, s1 = coef
    ratio = fit.tpot_ratio.value() or 1.0
    if math.isfinite(slo.tpot_target_ms):
        budget = slo.tpot_target_ms / 1000.0 / ratio
        if budget <= s0 + s1:
            unattainable.append("timePerOutputToken")
        else:
            bounds["timePerOutputToken"] = (budget - s0) / s1 if s1 > 0 else math.inf
    if math.isfinite(slo.ttft_target_ms):
        budget = (slo.ttft_target_ms - (fit.prefill_ms.value() or 0.0)) / 2000.0
        if budget <= s0 + s1:
            unattainable.append("timeToFirstToken")
        else:
            bounds["timeToFirstToken"] = (budget - s0) / s1 if s1 > 0 else math.inf
    # beyond what was seen the step-time line is an extrapolation: trust it to 4x
    bounds["seen"] = max(4.0 * fit.max_running, 1.0)
    name = min(bounds, key=lambda k: bounds[k])
    n = max(bounds[name], 1.0)
    work = n / (s0 + s1 * n)
    prompt = fit.prompt_per_token.value()
    if fit.prefill_sat > 0 and prompt is not None and prompt > 0:
        # the prefill saturated at this prompt rate: it bounds the tokens generated beside it
        prefill_bound = fit.prefill_sat / prompt
        if prefill_bound < work:
            work, name = prefill_bound, "prefill"
            n = work * (s0 + s1 * n)  # about the sequences running at that rate
    return TokenCapacity(work, n, name, work * prompt if prompt is not None else math.nan,
                         tuple(unattainable))


def normalized_latency(slo: TokenSLO, s: TokenSignals, e2e_ms: float = math.nan) -> float:
    """The worst token-level SLI relative to its target (1 = at the target; NaN: none known).
    `e2e_ms` stands in for a profile without an end-to-end histogram (Triton's summary)."""
    e2e = s.e2e_ms if _finite(s.e2e_ms) else e2e_ms
    ratios = [value / target for value, target in ((s.ttft_ms, slo.ttft_target_ms),
                                                   (s.tpot_ms, slo.tpot_target_ms),
                                                   (e2e, slo.e2e_target_ms))
              if _finite(value) and math.isfinite(target) and target > 0]
    return max(ratios) if ratios else math.nan


def token_breaches(slo: TokenSLO, s: TokenSignals) -> list[str]:
    """The token-level objectives the signals break, in words."""
    out = []
    for name, value, pct, target in (
            ("TTFT", s.ttft_ms, slo.ttft_percentile, slo.ttft_target_ms),
            ("TPOT", s.tpot_ms, slo.tpot_percentile, slo.tpot_target_ms),
            ("latency", s.e2e_ms, slo.e2e_percentile, slo.e2e_target_ms)):
        if _finite(value) and math.isfinite(target) and value > target:
            out.append(f"{name} p{pct:g} {value:.0f}ms > {target:g}ms")
    return out


def kv_saturated(s: TokenSignals, ready: int) -> bool:
    """The KV cache (or the sequence limit) holds requests back: more than one request waits
    per replica, with the fullest cache nearly full."""
    return (_finite(s.waiting) and s.waiting > max(ready, 1) and _finite(s.kv_usage)
            and s.kv_usage >= KV_SATURATED)


def memory_bound(slo: TokenSLO, fit: TokenFit | None, s: TokenSignals) -> bool:
    """Whether what one replica serves is bounded by its KV cache or its sequence limit (as
    learned so far): demand beyond it is demand the replicas' caches cannot hold."""
    cap = capacity(slo, fit, by_tokens(s)) if fit is not None else None
    return cap is not None and cap.limited_by in ("kvCache", "maxSequences")


# The request-level policy's words for its latency and rejections, replaced by the token ones.
_LATENCY_WORDS = re.compile(r"; p[0-9.]+ [0-9]+ms > [0-9]+ms")
_REJECTED_WORDS = re.compile(r"; REJECTED [0-9.]+%")


def decide_in_tokens(config: PolicyConfig, window: ObservationWindow, state: PolicyState,
                     now: float, replica_limit: int | None,
                     base: Callable[..., Decision]) -> Decision:
    """The replicas a streaming LLM needs: `base` (the request-level ``decide``) run in units
    of generated tokens (see the module docstring)."""
    slo = config.tokens
    assert slo is not None
    s = window.tokens or TokenSignals()
    ready = max(window.ready_replicas, 0)
    fit = state.tokens or TokenFit()
    fresh = window.timestamp is not None and now - window.timestamp <= config.staleness_s
    tokens = by_tokens(s)
    if fresh:
        fit = learn(fit, s, ready, window.window_s, now, config.capacity_half_life_s,
                    window.mean_latency_ms, window.success_rate, slo.ttft_target_ms)
    cap = capacity(slo, fit, tokens)
    unit = "tok/s" if tokens else "req/s"
    per_request = (fit.tokens_per_request.value() or 1.0) if tokens else 1.0
    # the work offered: tokens generated (or requests served), and the growth of the waiting
    # queues (arrivals are completions plus what piles up: what Little's law rests on).
    # Requests waiting beyond one per replica, which a full cache, the sequence limit or the
    # prefill budget holds back, count as unmet demand, as rejected requests do for the
    # request-level policy. A backlog is not drained by adding replicas (each replica keeps
    # its own queue behind the Service), so the queue itself adds no demand.
    served = s.generation_token_rate if tokens else window.success_rate
    mix = fit.prompt_per_token.value()
    if tokens and mix and _finite(s.prompt_token_rate) and _finite(served):
        # in generated tokens at the learned prompt mix: a window whose prompts are longer
        # than usual offers more prefill work per generated token than the capacity assumed
        served = max(served, s.prompt_token_rate / mix)
    waiting = s.waiting if _finite(s.waiting) else 0.0
    growth = max(s.waiting_growth, 0.0) * per_request if _finite(s.waiting_growth) else 0.0
    held_back = max(waiting - max(ready, 1), 0.0) * per_request / max(window.window_s, 1.0)
    if _finite(s.waiting_growth) and s.waiting_growth < 0:
        held_back = 0.0  # a backlog that shrinks is being served: no breach to step up for
    requests = window.request_rate

    def error_share(rate: float) -> float:  # of Triton's requests, failing for this reason
        return rate / requests if _finite(requests) and requests > 0 else 0.0

    offered = served + growth if _finite(served) else math.nan
    work_window = replace(
        window, tokens=None, request_rate=offered, request_rate_short=math.nan,
        success_rate=served,
        rejected_rate=(error_share(window.rejected_rate) * served if _finite(served) else 0.0)
        + held_back,
        backend_failure_rate=(error_share(window.backend_failure_rate) * served
                              if _finite(served) else 0.0),
        mean_latency_ms=math.nan,
        latency_quantile_ms=1000.0 * normalized_latency(slo, s, window.latency_quantile_ms),
        queue_depth=0.0, mean_queue_ms=math.nan, mean_compute_ms=math.nan,
        mean_batch_size=math.nan)
    hint = None
    if cap is not None:
        hint = cap.work_per_s * slo.utilization * state.gain * state.budget
    elif slo.tokens_per_minute_prior and tokens:
        hint = slo.tokens_per_minute_prior / 60.0 / (1.0 + (fit.prompt_per_token.value() or 0.0))
    work_config = replace(config, tokens=None, latency_target_ms=1000.0,
                          utilization=slo.utilization,
                          capacity_hint_rps=hint,
                          max_batch_size=max(round(per_request), 1))
    decision = base(work_config, work_window, replace(state, tokens=fit), now, replica_limit)
    return replace(decision, state=replace(decision.state, tokens=fit),
                   reason=_reason(decision.reason, slo, s, ready, cap, unit, held_back > 0))


def _reason(base_reason: str, slo: TokenSLO, s: TokenSignals, ready: int,
            cap: TokenCapacity | None, unit: str, held_back: bool) -> str:
    why = _REJECTED_WORDS.sub("", _LATENCY_WORDS.sub("", base_reason)).replace(" req/s", f" {unit}")
    notes = token_breaches(slo, s)
    if held_back or kv_saturated(s, ready):
        usage = f", KV cache {s.kv_usage:.0%} full" if _finite(s.kv_usage) else ""
        notes.append(f"{s.waiting:.0f} requests waiting{usage}")
    if _finite(s.preemption_rate) and s.preemption_rate > 0:
        notes.append(f"{s.preemption_rate:.2f} preemptions/s (KV cache full)")
    if cap is not None:
        notes.append(f"a replica serves {cap.work_per_s:.0f} {unit} at {cap.sequences:.0f} "
                     f"sequences (limited by {cap.limited_by})")
        if cap.unattainable:
            notes.append("not scaled for " + ", ".join(cap.unattainable)
                         + ": below what one replica's prefill or step allows")
    tail = "; ".join(notes)
    if not tail:
        return why
    # keep the limit's bracket (e.g. "[max replicas]") last
    head, bracket = (why[: why.rindex(" [")], why[why.rindex(" ["):]) if why.endswith("]") \
        else (why, "")
    return f"{head}; {tail}{bracket}"
