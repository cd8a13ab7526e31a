"""A decoupled (streaming) Triton Python-backend model that behaves like one replica of an LLM
served by Triton's vLLM backend: continuous batching on a budget, tokens streamed one response
each, and vLLM's own metric families published through Triton's custom-metrics API.

A request carries two INT32 scalars, ``PROMPT_TOKENS`` and ``MAX_TOKENS`` (a token trace's
columns: no text is tokenized), and gets ``MAX_TOKENS`` responses of one ``TOKEN`` each, then an
empty final response. Behind them runs the continuous-batching engine of
``dedicap.sim.llm_replica`` (the simulator's, step by step in real time): a cost per prompt
token, a decode step shared by the running sequences, and a KV-cache budget that makes requests
wait (and preempts when decoding outgrows it).

Metrics, with the names, types, labels (``model``, ``version``) and buckets of the vLLM backend
(triton-inference-server/vllm_backend, src/utils/metrics.py):

- counters ``vllm:prompt_tokens_total``, ``vllm:generation_tokens_total``,
  ``vllm:num_preemptions_total``;
- histograms ``vllm:time_to_first_token_seconds``, ``vllm:time_per_output_token_seconds``,
  ``vllm:e2e_request_latency_seconds``, ``vllm:request_queue_time_seconds``,
  ``vllm:request_prompt_tokens``, ``vllm:request_generation_tokens``;
- gauges ``vllm:num_requests_running``, ``vllm:num_requests_waiting``,
  ``vllm:gpu_cache_usage_perc`` (0..1).

Triton 2.51's Python backend publishes histograms natively (``MetricFamily.HISTOGRAM``, with
``_bucket{le}``, ``_sum`` and ``_count``), measured on the local stack's tritonserver.

Failures: ``fail_ratio`` of the requests raise in ``execute``, which Triton counts as
``nv_inference_request_failure{reason="BACKEND"}`` (an error *response* would count as a success).
Behaviour comes from the model config's parameters and a live control file (see
``LLMBehaviour``); this file is copied into the generated repository as ``<model>/1/model.py``.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

from dedicap.sim.llm_replica import ContinuousBatcher, LLMCost, Sequence, StepResult
from dedicap_local.models.control import ControlFile, parameter, with_overrides

try:  # only inside Triton's Python backend stub
    import numpy as np
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported for its pure parts (tests, docs)
    pb_utils = None

PROMPT_INPUT = "PROMPT_TOKENS"
MAX_TOKENS_INPUT = "MAX_TOKENS"
TOKEN_OUTPUT = "TOKEN"

# vllm_backend's buckets (src/utils/metrics.py)
TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0]
TPOT_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5]
REQUEST_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                   60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]


def token_buckets(max_model_len: int) -> list[float]:
    """vLLM's build_1_2_5_buckets: 1, 2, 5, 10, 20, 50, ... up to `max_model_len`."""
    out: list[float] = []
    exponent = 0
    while True:
        for m in (1, 2, 5):
            value = m * 10 ** exponent
            if value > max_model_len:
                return out
            out.append(float(value))
        exponent += 1


@dataclass(frozen=True)
class LLMBehaviour:
    """The replica's cost and budgets (the engine's ``LLMCost``, in friendlier units)."""

    step_ms: float = 50.0  # fixed cost of an engine step
    per_seq_ms: float = 5.0  # per decoding sequence in a step
    per_ctx_token_us: float = 0.0  # per token of KV cache read in a step
    prefill_ms_per_token: float = 0.05
    kv_tokens: float = 6000.0
    max_num_seqs: float = 16.0
    chunk_tokens: float = 512.0
    fail_ratio: float = 0.0

    def cost(self) -> LLMCost:
        return LLMCost(name="local", step_base_s=self.step_ms / 1000.0,
                       per_seq_s=self.per_seq_ms / 1000.0,
                       per_ctx_token_s=self.per_ctx_token_us / 1e6,
                       prefill_per_token_s=self.prefill_ms_per_token / 1000.0,
                       kv_tokens=max(int(self.kv_tokens), 1),
                       max_num_seqs=max(int(self.max_num_seqs), 1),
                       chunk_tokens=max(int(self.chunk_tokens), 1))

    def with_overrides(self, values: dict[str, Any]) -> LLMBehaviour:
        """A copy with the known keys of `values` applied; malformed values are ignored."""
        return with_overrides(self, values)


def behaviour_from_parameters(parameters: dict[str, Any]) -> LLMBehaviour:
    return LLMBehaviour().with_overrides({k: parameter(parameters, k) for k in parameters})


# (attribute, family, help, kind, buckets) of vLLM's families as the vLLM backend declares them
_FAMILIES: tuple[tuple[str, str, str, str, str], ...] = (
    ("prompt_tokens", "vllm:prompt_tokens_total", "Number of prefill tokens processed.",
     "COUNTER", ""),
    ("generation_tokens", "vllm:generation_tokens_total",
     "Number of generation tokens processed.", "COUNTER", ""),
    ("preemptions", "vllm:num_preemptions_total", "Number of preemption tokens processed.",
     "COUNTER", ""),
    ("ttft", "vllm:time_to_first_token_seconds",
     "Histogram of time to first token in seconds.", "HISTOGRAM", "ttft"),
    ("tpot", "vllm:time_per_output_token_seconds",
     "Histogram of time per output token in seconds.", "HISTOGRAM", "tpot"),
    ("e2e", "vllm:e2e_request_latency_seconds",
     "Histogram of end to end request latency in seconds.", "HISTOGRAM", "request"),
    ("queue", "vllm:request_queue_time_seconds",
     "Histogram of time spent in WAITING phase for request.", "HISTOGRAM", "request"),
    ("prompt_len", "vllm:request_prompt_tokens", "Number of prefill tokens processed.",
     "HISTOGRAM", "tokens"),
    ("generation_len", "vllm:request_generation_tokens",
     "Number of generation tokens processed.", "HISTOGRAM", "tokens"),
    ("running", "vllm:num_requests_running", "Number of requests currently running on GPU.",
     "GAUGE", ""),
    ("waiting", "vllm:num_requests_waiting", "Number of requests waiting to be processed.",
     "GAUGE", ""),
    ("kv_usage", "vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.",
     "GAUGE", ""),
)


class _Metrics:
    """vLLM's families as attributes; the family objects are kept, since a family must
    outlive its metrics."""

    def __init__(self, labels: dict[str, str], max_model_len: int) -> None:
        buckets = {"ttft": TTFT_BUCKETS, "tpot": TPOT_BUCKETS, "request": REQUEST_BUCKETS,
                   "tokens": token_buckets(max_model_len)}
        self._families: list[Any] = []
        for attr, name, description, kind, bucket in _FAMILIES:
            family = pb_utils.MetricFamily(name=name, description=description,
                                           kind=getattr(pb_utils.MetricFamily, kind))
            self._families.append(family)
            metric = (family.Metric(labels=labels, buckets=buckets[bucket]) if bucket
                      else family.Metric(labels=labels))
            setattr(self, attr, metric)

    def __getattr__(self, name: str) -> Any:  # the metrics set above (for type checkers)
        raise AttributeError(name)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = config.get("parameters", {}) or {}
        self._configured = behaviour_from_parameters(parameters)
        self._behaviour = self._configured
        self._control = ControlFile(parameter(parameters, "control_file"))
        self._rng = random.Random(os.getpid())
        self._engine = ContinuousBatcher(self._behaviour.cost())
        self._metrics = _Metrics({"model": args["model_name"], "version": args["model_version"]},
                                 max_model_len=int(parameter(parameters, "max_model_len")
                                                   or 8192))
        self._inbox: list[Sequence] = []
        self._wake = threading.Condition()
        self._stopping = False
        self._origin = time.monotonic()
        self._next_id = 0
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._thread.start()

    def _now(self) -> float:
        return time.monotonic() - self._origin

    def execute(self, requests: list[Any]) -> None:
        self._refresh()
        if self._behaviour.fail_ratio > 0 and self._rng.random() < self._behaviour.fail_ratio:
            # an exception fails these requests with reason BACKEND (see the docstring)
            raise RuntimeError("simulated model failure (fail_ratio)")
        arrivals = []
        for request in requests:
            prompt = int(pb_utils.get_input_tensor_by_name(request, PROMPT_INPUT).as_numpy()[0])
            wanted = int(pb_utils.get_input_tensor_by_name(request, MAX_TOKENS_INPUT).as_numpy()[0])
            sender = request.get_response_sender()
            if not self._engine.fits(prompt, wanted):
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"{PROMPT_INPUT} and {MAX_TOKENS_INPUT} must be at least 1 and fit the KV "
                    f"cache ({self._engine.cost.kv_tokens} tokens)")),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            self._next_id += 1
            arrivals.append(Sequence(self._next_id, prompt, wanted, self._now(), tag=sender))
        with self._wake:
            self._inbox.extend(arrivals)
            self._wake.notify()

    def _refresh(self) -> None:
        if self._control.poll():
            self._behaviour = self._configured.with_overrides(self._control.values)

    def _loop(self) -> None:
        engine = self._engine
        while True:
            with self._wake:
                while not self._inbox and engine.idle() and not self._stopping:
                    self._publish_gauges()
                    self._wake.wait(timeout=1.0)
                if self._stopping:
                    return
                arrivals, self._inbox = self._inbox, []
            self._refresh()
            engine.cost = self._behaviour.cost()
            for seq in arrivals:
                engine.submit(seq)
            result = engine.step(self._now())
            self._publish_gauges()
            if result.steps == 0:
                # everything waits for room: nothing to do until a request arrives
                with self._wake:
                    self._wake.wait(timeout=0.05)
                continue
            delay = result.end - self._now()
            if delay > 0:
                time.sleep(delay)  # the step's duration, as a GPU would take it
            self._deliver(result)

    def _publish_gauges(self) -> None:
        e, m = self._engine, self._metrics
        m.running.set(float(len(e.running)))
        m.waiting.set(float(len(e.waiting)))
        m.kv_usage.set(e.kv_usage)

    def _deliver(self, result: StepResult) -> None:
        m = self._metrics
        if result.prefill_tokens:
            m.prompt_tokens.increment(float(result.prefill_tokens))
        generated = len(result.first_tokens) + len(result.tokens)
        if generated:
            m.generation_tokens.increment(float(generated))
        if result.preemptions:
            m.preemptions.increment(float(result.preemptions))
        for seq in result.first_tokens:
            m.ttft.observe(max(result.end - seq.arrival, 0.0))
            self._send(seq, seq.generated)
        for seq, _, gap in result.tokens:
            m.tpot.observe(gap)
            self._send(seq, seq.generated)
        for seq in result.finished:
            m.e2e.observe(max(result.end - seq.arrival, 0.0))
            m.queue.observe(max((seq.admitted or seq.arrival) - seq.arrival, 0.0))
            m.prompt_len.observe(float(seq.prompt))
            m.generation_len.observe(float(seq.generated))
            seq.tag.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    @staticmethod
    def _send(seq: Sequence, index: int) -> None:
        seq.tag.send(pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor(TOKEN_OUTPUT, np.array([index], dtype=np.int32))]))

    def finalize(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=5.0)
