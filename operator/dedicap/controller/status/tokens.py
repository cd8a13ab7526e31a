"""A streaming LLM's part of the status: its token signals in `status.observed`, the token
capacity the policy learned in `status.tokenCapacity`, its token objectives in the SLOMet
verdict, and what each reservation's GPUs buy in tokens. Pure."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from dedicap.api import conditions as c
from dedicap.api.models import CapacityReservation
from dedicap.decide import policy_tokens
from dedicap.decide.policy import PolicyConfig, PolicyState
from dedicap.decide.policy_tokens import TokenSignals
from dedicap.decide.reservations import ReservationUsage
from dedicap.metrics.snapshot_tokens import TokenSnapshot


def _or_none(x: float, digits: int, hi: float = math.inf) -> float | None:
    return round(min(max(x, 0.0), hi), digits) if math.isfinite(x) else None


def signals(tokens: TokenSnapshot | None) -> TokenSignals | None:
    """The policy's view of a token snapshot (None when it could not be read)."""
    if tokens is None or not tokens.available:
        return None
    return TokenSignals(**{name: getattr(tokens, name)
                           for name in TokenSignals.__dataclass_fields__})


def observed(tokens: TokenSnapshot | None, e2e_percentile: float = 95.0) -> dict[str, Any]:
    """The token fields of `status.observed` (null when unknown, so the columns go blank).
    Where the backend has an end-to-end histogram (vLLM), the request latency is the stream's
    whole duration from it: Triton's own request summary of a decoupled model ends when
    `execute` returns, long before the last token."""
    t = tokens if tokens is not None and tokens.available else TokenSnapshot("")
    e2e: dict[str, Any] = {}
    if t.profile == "vllm":
        latency = _or_none(t.e2e_ms, 1)
        e2e = {"latencyMs": latency, "p95Ms": latency if e2e_percentile == 95 else None}
    return {
        **e2e,
        "ttftMs": _or_none(t.ttft_ms, 1),
        "tpotMs": _or_none(t.tpot_ms, 1),
        "promptTokensPerSecond": _or_none(t.prompt_token_rate, 1),
        "generationTokensPerSecond": _or_none(t.generation_token_rate, 1),
        "kvCacheUsage": _or_none(t.kv_usage, 3, hi=1.0),
        "waitingRequests": _or_none(t.waiting, 1),
    }


def capacity_status(config: PolicyConfig, state: PolicyState, ready: int, gpus_per_replica: int,
                    now: datetime) -> dict[str, Any] | None:
    """`status.tokenCapacity`: what the policy plans a replica to serve within the SLO (the
    learned capacity times its headroom factors), once learned from traffic; None before."""
    if config.tokens is None or state.tokens is None:
        return None
    cap = policy_tokens.capacity(config.tokens, state.tokens)
    if cap is None or not math.isfinite(cap.tokens_per_minute):
        return None
    share = config.tokens.utilization * state.gain * state.budget
    per_replica = cap.tokens_per_minute * share
    return {
        "promptTokensPerSecond": round(cap.prompt_tokens_per_s * share, 1),
        "generationTokensPerSecond": round(cap.work_per_s * share, 1),
        "tokensPerMinutePerReplica": round(per_replica),
        "tokensPerMinutePerGPU": round(per_replica / max(gpus_per_replica, 1)),
        "tokensPerMinute": round(per_replica * max(ready, 0)),
        "limitedBy": cap.limited_by,
        "measuredAt": c.timestamp(now),
    }


def verdict_problems(tokens: TokenSnapshot | None, config: PolicyConfig) -> list[str]:
    """The token objectives the snapshot shows broken, in words (for SLOMet)."""
    s = signals(tokens)
    if config.tokens is None or s is None:
        return []
    return policy_tokens.token_breaches(config.tokens, s)


def reservation_capacity(cr: CapacityReservation, usage: ReservationUsage,
                         modeldeployments: Mapping[str, Mapping[str, Any]]
                         ) -> list[dict[str, Any]]:
    """`status.tokenCapacity` of a reservation: for each streaming LLM using it whose capacity
    was measured, tokens per minute per GPU, on the reserved GPUs it uses now, and were all the
    reservation's GPUs running it. `modeldeployments` maps `<namespace>/<name>` to objects."""
    out = []
    for owner in sorted(usage.by_owner):
        raw = modeldeployments.get(owner) or {}
        measured = (raw.get("status") or {}).get("tokenCapacity") or {}
        per_gpu = measured.get("tokensPerMinutePerGPU")
        if not isinstance(per_gpu, int | float) or not per_gpu > 0:
            continue
        reserved_used = usage.by_owner[owner][0]
        out.append({"modelDeployment": owner, "tokensPerMinutePerGPU": per_gpu,
                    "tokensPerMinute": round(per_gpu * reserved_used),
                    "tokensPerMinuteReserved": round(per_gpu * cr.spec.gpus)})
    return out[:64]
