"""PromQL for a streaming LLM's token-level signals, per metrics profile (pure).

Triton's LLM backends publish their own families beside Triton's request-level ones:

- ``vllm`` (triton-inference-server/vllm_backend, src/utils/metrics.py, with custom metrics on):
  vLLM's names, types and buckets: histograms ``vllm:time_to_first_token_seconds``,
  ``vllm:time_per_output_token_seconds``, ``vllm:e2e_request_latency_seconds``; counters
  ``vllm:prompt_tokens_total``, ``vllm:generation_tokens_total``, ``vllm:num_preemptions_total``;
  gauges ``vllm:num_requests_running``, ``vllm:num_requests_waiting`` and the KV-cache usage
  ``vllm:gpu_cache_usage_perc`` (0..1; vLLM's V1 engine renamed it ``vllm:kv_cache_usage_perc``,
  so both names are read);
- ``tensorrtllm`` (TensorRT-LLM's inflight_batcher_llm backend, custom_metrics_reporter.cc):
  gauges only: ``nv_trt_llm_request_metrics{request_type}`` (``active``, ``max``, ``scheduled``,
  ``context``, ``waiting``), ``nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type}``
  (``used``, ``max``, ``free``, ``tokens_per``, ...), ``nv_trt_llm_inflight_batcher_metrics``
  (``paused_requests``); no token latency and no token counters. Its time to first token is
  Triton's own histogram of a decoupled model's time to first response,
  ``nv_inference_first_response_histogram_ms`` (``--metrics-config histogram_latencies=true``,
  which the operator sets for this profile; Triton 2.52 and later).

Histograms give event-based SLIs that aggregate across pods correctly: the quantile is
``histogram_quantile`` over the buckets' rates summed over pods (``by (..., le)``), i.e. over
every request (or token) of the ModelDeployment in the window, not an average of per-pod
figures. A quantile beyond the highest finite bucket reads as that bucket's bound (vLLM's TTFT
buckets stop at 10 s), and a window without observations reads NaN ("unknown").

Every aggregation keeps ``namespace`` and ``modeldeployment``, as the request-level queries do
(``promql.Target`` or ``promql.Selection``), so one query answers for every ModelDeployment of
a profile and percentiles; its signals are told apart by the ``signal`` label.
"""

from __future__ import annotations

from enum import StrEnum

from dedicap.metrics.promql import BY_MD, Scope, duration, tagged

VLLM, TENSORRTLLM = "vllm", "tensorrtllm"
PROFILES = (VLLM, TENSORRTLLM)

# vLLM (through Triton's vLLM backend)
VLLM_TTFT = "vllm:time_to_first_token_seconds"
VLLM_TPOT = "vllm:time_per_output_token_seconds"
VLLM_E2E = "vllm:e2e_request_latency_seconds"
VLLM_PROMPT_TOKENS = "vllm:prompt_tokens_total"
VLLM_GENERATION_TOKENS = "vllm:generation_tokens_total"
VLLM_PREEMPTIONS = "vllm:num_preemptions_total"
VLLM_RUNNING = "vllm:num_requests_running"
VLLM_WAITING = "vllm:num_requests_waiting"
VLLM_KV_USAGE = ("vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc")  # V0, V1 names
# TensorRT-LLM (its Triton backend) and Triton's own first-response histogram
TRT_REQUESTS = "nv_trt_llm_request_metrics"
TRT_KV_BLOCKS = "nv_trt_llm_kv_cache_block_metrics"
TRT_IFB = "nv_trt_llm_inflight_batcher_metrics"
FIRST_RESPONSE_MS = "nv_inference_first_response_histogram_ms"


class TokenSignal(StrEnum):
    """One signal of the token query; the value of its ``signal`` label."""

    TTFT_MS = "ttft_ms"  # at the TTFT percentile
    TPOT_MS = "tpot_ms"  # at the TPOT percentile
    E2E_MS = "e2e_ms"  # whole request, at the latency percentile
    MEAN_TTFT_MS = "mean_ttft_ms"
    MEAN_TPOT_MS = "mean_tpot_ms"
    FINISHED_RATE = "finished_rate"  # requests/s that completed
    PROMPT_TOKEN_RATE = "prompt_token_rate"
    GENERATION_TOKEN_RATE = "generation_token_rate"
    RUNNING = "running"  # sequences running, mean over the window, summed over pods
    RUNNING_NOW = "running_now"
    WAITING = "waiting"  # requests waiting now, summed over pods
    WAITING_MAX = "waiting_max"  # the most any pod had waiting at a scrape of the window
    WAITING_GROWTH = "waiting_growth"  # requests/s the waiting queues grew by (deriv)
    KV_USAGE = "kv_usage"  # the fullest pod's KV cache, 0..1
    PREEMPTION_RATE = "preemption_rate"  # vLLM's preemptions per second
    PAUSED = "paused"  # TensorRT-LLM's paused (preempted) requests now


def _quantile_ms(target: Scope, histogram: str, percentile: float, window: str,
                 scale: float) -> str:
    """The `percentile` of a histogram over every pod's observations in the window, in ms."""
    if not 0 < percentile < 100:
        raise ValueError(f"a percentile must lie strictly between 0 and 100, got {percentile!r}")
    buckets = f"rate({target.selector(histogram + '_bucket')}[{window}])"
    q = f"histogram_quantile({percentile / 100:g}, sum by ({BY_MD}, le) ({buckets}))"
    return f"{q} * {scale:g}"


def _mean_ms(target: Scope, histogram: str, window: str, scale: float) -> str:
    """The mean of a histogram's observations in the window, in ms (0/0: NaN, unknown)."""
    total = f"sum by ({BY_MD}) (rate({target.selector(histogram + '_sum')}[{window}]))"
    count = f"sum by ({BY_MD}) (rate({target.selector(histogram + '_count')}[{window}]))"
    return f"{total} / {count} * {scale:g}"


def _rate(target: Scope, metric: str, window: str) -> str:
    return f"sum by ({BY_MD}) (rate({target.selector(metric)}[{window}]))"


def _names(names: tuple[str, ...]) -> str:
    return '__name__=~"' + "|".join(names) + '"'


def vllm_signals(target: Scope, window_s: float, ttft_percentile: float,
                 tpot_percentile: float, e2e_percentile: float) -> dict[TokenSignal, str]:
    """The vLLM backend's signals for `target` over `window_s`."""
    w = duration(window_s)
    return {
        TokenSignal.TTFT_MS: _quantile_ms(target, VLLM_TTFT, ttft_percentile, w, 1000),
        TokenSignal.TPOT_MS: _quantile_ms(target, VLLM_TPOT, tpot_percentile, w, 1000),
        TokenSignal.E2E_MS: _quantile_ms(target, VLLM_E2E, e2e_percentile, w, 1000),
        TokenSignal.MEAN_TTFT_MS: _mean_ms(target, VLLM_TTFT, w, 1000),
        TokenSignal.MEAN_TPOT_MS: _mean_ms(target, VLLM_TPOT, w, 1000),
        TokenSignal.FINISHED_RATE: _rate(target, VLLM_E2E + "_count", w),
        TokenSignal.PROMPT_TOKEN_RATE: _rate(target, VLLM_PROMPT_TOKENS, w),
        TokenSignal.GENERATION_TOKEN_RATE: _rate(target, VLLM_GENERATION_TOKENS, w),
        TokenSignal.RUNNING: (f"sum by ({BY_MD}) (avg_over_time("
                              f"{target.selector(VLLM_RUNNING)}[{w}]))"),
        TokenSignal.RUNNING_NOW: f"sum by ({BY_MD}) ({target.selector(VLLM_RUNNING)})",
        TokenSignal.WAITING: f"sum by ({BY_MD}) ({target.selector(VLLM_WAITING)})",
        TokenSignal.WAITING_MAX: (f"max by ({BY_MD}) (max_over_time("
                                  f"{target.selector(VLLM_WAITING)}[{w}]))"),
        TokenSignal.WAITING_GROWTH: (f"sum by ({BY_MD}) (deriv("
                                     f"{target.selector(VLLM_WAITING)}[{w}]))"),
        TokenSignal.KV_USAGE: f"max by ({BY_MD}) ({{{target.matchers(_names(VLLM_KV_USAGE))}}})",
        TokenSignal.PREEMPTION_RATE: _rate(target, VLLM_PREEMPTIONS, w),
    }


def tensorrtllm_signals(target: Scope, window_s: float, ttft_percentile: float
                        ) -> dict[TokenSignal, str]:
    """TensorRT-LLM's signals: TTFT from Triton's first-response histogram, the batcher's
    gauges and the KV cache's blocks (no per-token latency, no token counters)."""
    w = duration(window_s)

    def requests(kind: str) -> str:
        return target.selector(TRT_REQUESTS, f'request_type="{kind}"')

    used = target.selector(TRT_KV_BLOCKS, 'kv_cache_block_type="used"')
    most = target.selector(TRT_KV_BLOCKS, 'kv_cache_block_type="max"')
    paused = target.selector(TRT_IFB, 'inflight_batcher_specific_metric="paused_requests"')
    return {
        TokenSignal.TTFT_MS: _quantile_ms(target, FIRST_RESPONSE_MS, ttft_percentile, w, 1),
        TokenSignal.MEAN_TTFT_MS: _mean_ms(target, FIRST_RESPONSE_MS, w, 1),
        TokenSignal.RUNNING: f"sum by ({BY_MD}) (avg_over_time({requests('scheduled')}[{w}]))",
        TokenSignal.RUNNING_NOW: f"sum by ({BY_MD}) ({requests('scheduled')})",
        TokenSignal.WAITING: f"sum by ({BY_MD}) ({requests('waiting')})",
        TokenSignal.WAITING_MAX: f"max by ({BY_MD}) (max_over_time({requests('waiting')}[{w}]))",
        TokenSignal.WAITING_GROWTH: f"sum by ({BY_MD}) (deriv({requests('waiting')}[{w}]))",
        TokenSignal.KV_USAGE: (f"max by ({BY_MD}) ({used} / ignoring(kv_cache_block_type) "
                               f"({most} > 0))"),
        TokenSignal.PAUSED: f"sum by ({BY_MD}) ({paused})",
    }


def token_signals(target: Scope, profile: str, window_s: float, ttft_percentile: float = 95.0,
                  tpot_percentile: float = 95.0, e2e_percentile: float = 95.0
                  ) -> dict[TokenSignal, str]:
    if profile == VLLM:
        return vllm_signals(target, window_s, ttft_percentile, tpot_percentile, e2e_percentile)
    if profile == TENSORRTLLM:
        return tensorrtllm_signals(target, window_s, ttft_percentile)
    raise ValueError(f"unknown LLM metrics profile {profile!r}; known: {', '.join(PROFILES)}")


def combined_tokens(target: Scope, profile: str, window_s: float, ttft_percentile: float = 95.0,
                    tpot_percentile: float = 95.0, e2e_percentile: float = 95.0) -> str:
    """Every token signal of `profile` in one expression (see ``promql.combined``)."""
    return " or ".join(tagged(expr, signal) for signal, expr in token_signals(
        target, profile, window_s, ttft_percentile, tpot_percentile, e2e_percentile).items())
