"""Streaming LLMs' token-level signals at one moment: :func:`observe_tokens_many` ->
:class:`TokenSnapshot` per ModelDeployment, one query per (profile, percentiles) for all of them.

The token query runs beside the request-level one (``snapshot.observe_many``), which still says
whether the pods report, how fresh the data is and how many requests fail by reason (a
streaming model's requests are Triton requests too). This one adds what the LLM backend
publishes; a signal it lacks (no traffic, a family the profile has not) is NaN: unknown.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from dedicap.metrics import promql, promql_tokens
from dedicap.metrics.prometheus import PrometheusUnavailable, QueryError, Sample
from dedicap.metrics.promql_tokens import TokenSignal
from dedicap.metrics.snapshot import (
    PROBLEM_QUERY,
    PROBLEM_UNAVAILABLE,
    QueryClient,
    by_modeldeployment,
)


@dataclass(frozen=True)
class TokenSnapshot:
    """One ModelDeployment's token signals (ms, per second, summed over pods; NaN unknown)."""

    profile: str
    available: bool = True
    problem: str = ""
    reason: str = ""
    ttft_ms: float = math.nan
    tpot_ms: float = math.nan
    e2e_ms: float = math.nan
    mean_ttft_ms: float = math.nan
    mean_tpot_ms: float = math.nan
    finished_rate: float = math.nan
    prompt_token_rate: float = math.nan
    generation_token_rate: float = math.nan
    running: float = math.nan
    running_now: float = math.nan
    waiting: float = math.nan
    waiting_max: float = math.nan
    waiting_growth: float = math.nan
    kv_usage: float = math.nan
    preemption_rate: float = math.nan
    paused: float = math.nan


def token_snapshot(samples: Iterable[Sample], profile: str) -> TokenSnapshot:
    values = {str(s.labels.get(promql.LABEL_SIGNAL, "")): s.value for s in samples}
    figures: dict[str, Any] = {signal.name.lower(): values.get(signal.value, math.nan)
                               for signal in TokenSignal}
    return replace(TokenSnapshot(profile), **figures)


def observe_tokens_many(client: QueryClient, keys: Iterable[tuple[str, str]], profile: str,
                        window_s: float, now: float, *, ttft_percentile: float = 95.0,
                        tpot_percentile: float = 95.0, e2e_percentile: float = 95.0
                        ) -> dict[tuple[str, str], TokenSnapshot]:
    """The token signals of several ModelDeployments of one profile in one query; an outage or
    a refused query makes every snapshot unavailable with the same problem."""
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    expr = promql_tokens.combined_tokens(promql.Selection(tuple(wanted)), profile, window_s,
                                         ttft_percentile, tpot_percentile, e2e_percentile)
    try:
        samples = client.query(expr, at=now)
    except PrometheusUnavailable as err:
        down = TokenSnapshot(profile, False, PROBLEM_UNAVAILABLE, str(err))
        return {k: down for k in wanted}
    except QueryError as err:
        refused = TokenSnapshot(profile, False, PROBLEM_QUERY,
                                f"Prometheus rejected the query ({err.error_type}: {err.error})")
        return {k: refused for k in wanted}
    return {k: token_snapshot(v, profile)
            for k, v in by_modeldeployment(samples, wanted).items()}
