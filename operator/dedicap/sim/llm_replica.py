"""One LLM replica as a continuous-batching engine: what a vLLM or TensorRT-LLM replica does with
its GPU, at the level of engine iterations. Pure: no clock, no I/O; time is passed in.

Every iteration (an engine *step*) the scheduler, in the manner of vLLM's:

1. gives each running sequence past its prompt one decode token; a sequence whose next token
   finds no room in the KV cache preempts the most recently admitted one (recompute: its cache
   is freed and it goes back to the head of the waiting queue, to prefill its prompt and what it
   has generated again), counted as a preemption;
2. continues the prompts being prefilled, in chunks, within ``chunk_tokens`` tokens per step
   (decode tokens included: chunked prefill);
3. admits waiting sequences first come, first served while fewer than ``max_num_seqs`` run and
   the KV cache holds their whole prompt above a 1% watermark: a full KV cache makes requests
   wait, which is what time to first token feels first.

The step lasts ``LLMCost.step_s(decoding, context, prefill)``: a fixed cost (the weights read
once per step), a cost per decoding sequence, one per token of KV cache the decoding sequences
read, and one per prompt token prefilled. A sequence emits its first token at the end of the
step that completes its prompt and one more at the end of every later step, so its time per
output token is the duration of the steps it rides in: it grows with the number of sequences
running beside it, which is the trade-off continuous batching makes.

Two ways to run it, with the same results (tests check that they agree): ``step()`` one
iteration at a time (the local stack's streaming Triton model streams each token in real time)
and ``advance(until)``, which jumps over runs of steps in which nothing but decoding happens
(the simulator replays hours of traffic). The cost constants of an 8B-class Llama on an H100 or
an H200 are in :data:`PRESETS`: derived from public data sheets and the model's configuration,
not measured (``benchmarks/llm_calibrate.py`` measures them on a GPU).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

KV_WATERMARK = 0.01  # share of the KV cache admission keeps free (vLLM's default watermark)


@dataclass(frozen=True)
class LLMCost:
    """What one engine step of a replica costs, and the replica's budgets."""

    name: str
    step_base_s: float  # fixed cost of a step: the weights are read once per step
    per_seq_s: float  # per decoding sequence in the step
    per_ctx_token_s: float  # per token of KV cache the decoding sequences attend to
    prefill_per_token_s: float  # per prompt token prefilled in the step
    kv_tokens: int  # tokens the KV cache holds
    max_num_seqs: int = 256  # sequences running at once (vLLM's default)
    chunk_tokens: int = 512  # tokens (decode + prefill) one step processes at most
    source: str = ""  # where the constants come from

    def step_s(self, decoding: int, context: float, prefill: int) -> float:
        """Seconds one step takes with `decoding` sequences attending to `context` tokens of
        KV cache and `prefill` prompt tokens."""
        return (self.step_base_s + self.per_seq_s * decoding + self.per_ctx_token_s * context
                + self.prefill_per_token_s * prefill)

    def scaled(self, speed: float) -> LLMCost:
        """The same replica on a GPU `speed` times as fast (budgets unchanged)."""
        from dataclasses import replace

        return replace(self, step_base_s=self.step_base_s / speed,
                       per_seq_s=self.per_seq_s / speed,
                       per_ctx_token_s=self.per_ctx_token_s / speed,
                       prefill_per_token_s=self.prefill_per_token_s / speed)


# An 8B-class Llama (Llama-3-8B's configuration: 32 layers, hidden 4096, 8 KV heads of 128, so
# 2 x 32 x 8 x 128 x 2 bytes = 128 KiB of KV cache per token in bf16; 8.0e9 parameters, 16 GB
# of bf16 weights), on one GPU, from the data sheets by a roofline with efficiency factors.
# NOT MEASURED HERE: `benchmarks/llm_calibrate.py` measures them where a GPU is available.
#
# - step_base_s: the weights read once per step at 70% of the HBM bandwidth (H100 SXM 3.35 TB/s:
#   16e9 / 2.35e12 = 6.8 ms; H200 4.8 TB/s: 4.8 ms);
# - per_seq_s: 2 x 8e9 FLOP per token at 50% of dense bf16 (989 TFLOP/s on both): 0.032 ms,
#   plus about 0.01 ms of sampling and scheduling per sequence;
# - per_ctx_token_s: 128 KiB of KV cache read per context token at 70% of the bandwidth:
#   131072 / 2.35e12 = 0.056 us (H100), 0.039 us (H200);
# - prefill_per_token_s: 16 GFLOP per prompt token at 40% of dense bf16 (prefill reaches a
#   lower share than the peak: attention, norms, launch gaps): 0.040 ms, 25,000 tokens/s;
# - kv_tokens: vLLM's gpu_memory_utilization 0.9 of 80 GB (H100) or 141 GB (H200), less the
#   weights and ~4 GB of activations and CUDA graphs, over 128 KiB per token.
PRESETS: dict[str, LLMCost] = {
    "llama-8b-h100": LLMCost(
        name="llama-8b-h100", step_base_s=6.8e-3, per_seq_s=4.2e-5, per_ctx_token_s=5.6e-8,
        prefill_per_token_s=4.0e-5, kv_tokens=420_000,
        source="derived from the H100 SXM data sheet (3.35 TB/s, 989 TFLOP/s bf16) and "
               "Llama-3-8B's config; not measured"),
    "llama-8b-h200": LLMCost(
        name="llama-8b-h200", step_base_s=4.8e-3, per_seq_s=4.2e-5, per_ctx_token_s=3.9e-8,
        prefill_per_token_s=4.0e-5, kv_tokens=860_000,
        source="derived from the H200 data sheet (4.8 TB/s, 141 GB, 989 TFLOP/s bf16) and "
               "Llama-3-8B's config; not measured"),
}


@dataclass(eq=False)
class Sequence:
    """One request in the engine. Times are the engine's (seconds). While a sequence decodes,
    its `generated` and `kv` are kept lazily by the engine (``ContinuousBatcher.sync``): a
    decode step costs the engine O(1), not O(sequences)."""

    rid: int
    prompt: int  # prompt tokens
    max_tokens: int  # tokens to generate
    arrival: float
    generated: int = 0
    to_prefill: int = 0  # prompt tokens (and, after a preemption, generated ones) left to prefill
    kv: int = 0  # KV-cache tokens it holds
    admitted: float | None = None  # when it first left the waiting queue
    first_token: float | None = None
    last_token: float | None = None
    finished: float | None = None
    preemptions: int = 0
    tag: Any = None  # the caller's (e.g. a response sender)
    mark: int = 0  # the engine's decode-step count when it started decoding
    version: int = 0  # invalidates its stale entries in the engine's finish heap

    @property
    def context(self) -> int:
        return self.prompt + self.generated


@dataclass
class StepResult:
    """What one step (or a run of steps, from ``advance``) did."""

    start: float
    end: float
    steps: int = 0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    preemptions: int = 0
    first_tokens: list[Sequence] = field(default_factory=list)
    # (sequence, time of the token, seconds since its token before): each decoding sequence's
    # token with ``record_tokens``, and a preempted sequence's first token after its recompute
    tokens: list[tuple[Sequence, float, float]] = field(default_factory=list)
    finished: list[Sequence] = field(default_factory=list)
    # runs of identical decode steps: (sequences, first step's end, step seconds, growth of
    # the step per step, steps): their tokens without listing each (one step is a run of one)
    runs: list[tuple[int, float, float, float, int]] = field(default_factory=list)

    @property
    def generated(self) -> int:
        """Tokens generated: first tokens, listed tokens and the runs' tokens."""
        return len(self.first_tokens) + len(self.tokens) + sum(n * k for n, _, _, _, k in self.runs)


class ContinuousBatcher:
    """The scheduler and KV cache of one replica (see the module docstring). With
    `record_tokens`, every decode token is listed in the step's result (the live model streams
    each); without, decode steps are counted as runs (the simulator)."""

    def __init__(self, cost: LLMCost, record_tokens: bool = True) -> None:
        self.cost = cost
        self.record_tokens = record_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order (preemption takes the newest)
        self.prefilling: list[Sequence] = []  # running, prompt not yet complete
        self.decoding: dict[int, Sequence] = {}  # running, past the prompt (by id)
        self.decode_steps = 0  # steps in which every decoding sequence got a token
        self._kv_lazy = 0  # sum over decoding sequences of (kv - decode steps at their mark)
        self._kv_prefilling = 0
        self._finish: list[tuple[int, int, int, Sequence]] = []  # (due step, version, id, seq)
        self.now = 0.0
        self.busy_until = 0.0

    # ------------------------------------------------------------------ inputs and gauges

    def fits(self, prompt: int, max_tokens: int) -> bool:
        """Whether a request of this shape can ever run here (its whole sequence fits the KV
        cache; vLLM refuses a longer one, as exceeding the model's length)."""
        reserve = math.ceil(KV_WATERMARK * self.cost.kv_tokens)
        return prompt >= 1 and max_tokens >= 1 and prompt + max_tokens <= (
            self.cost.kv_tokens - reserve)

    def submit(self, seq: Sequence) -> None:
        """Queue a request that arrived at `seq.arrival` (not before the engine's time)."""
        if not self.fits(seq.prompt, seq.max_tokens):
            raise ValueError(f"request {seq.rid} ({seq.prompt} prompt + {seq.max_tokens} tokens) "
                             f"cannot fit a KV cache of {self.cost.kv_tokens} tokens")
        if self.idle():
            # nothing runs: the next step starts when this request arrives, not before
            self.busy_until = max(self.busy_until, seq.arrival)
        seq.to_prefill = seq.prompt
        self.waiting.append(seq)

    def idle(self) -> bool:
        return not self.running and not self.waiting

    @property
    def context(self) -> int:
        """KV-cache tokens the decoding sequences attend to."""
        return self._kv_lazy + len(self.decoding) * self.decode_steps

    @property
    def kv_used(self) -> int:
        return self._kv_prefilling + self.context

    @property
    def kv_usage(self) -> float:
        return self.kv_used / self.cost.kv_tokens

    def sync(self, seq: Sequence) -> Sequence:
        """`seq` with its lazily kept `generated` and `kv` brought up to date."""
        if seq.rid in self.decoding and self.decoding[seq.rid] is seq:
            done = self.decode_steps - seq.mark
            seq.generated += done
            seq.kv += done
            seq.mark = self.decode_steps  # (kv - mark) is unchanged: the sum stays right
        return seq

    # ------------------------------------------------------------------ bookkeeping

    def _start_decoding(self, seq: Sequence) -> None:
        seq.mark = self.decode_steps
        seq.version += 1
        self.decoding[seq.rid] = seq
        self._kv_lazy += seq.kv - seq.mark
        heapq.heappush(self._finish, (seq.mark + seq.max_tokens - seq.generated, seq.version,
                                      seq.rid, seq))

    def _stop_decoding(self, seq: Sequence) -> None:
        self.sync(seq)
        del self.decoding[seq.rid]
        self._kv_lazy -= seq.kv - seq.mark
        seq.version += 1  # its finish entry is stale now

    def _remove(self, seq: Sequence) -> None:
        self.running.remove(seq)
        if seq.rid in self.decoding:
            self._stop_decoding(seq)
        else:
            self.prefilling.remove(seq)
            self._kv_prefilling -= seq.kv

    # ------------------------------------------------------------------ one step

    def _admit(self, budget: int) -> list[tuple[Sequence, int]]:
        """Prefill chunks of the prompts under way, then admit waiting sequences, within
        `budget` tokens."""
        chunks: list[tuple[Sequence, int]] = []
        for seq in self.prefilling:
            if budget <= 0:
                break
            n = min(seq.to_prefill, budget)
            chunks.append((seq, n))
            budget -= n
        reserve = math.ceil(KV_WATERMARK * self.cost.kv_tokens)
        while self.waiting and budget > 0 and len(self.running) < self.cost.max_num_seqs:
            seq = self.waiting[0]
            need = seq.to_prefill
            if self.kv_used + need > self.cost.kv_tokens - reserve:
                break  # first come, first served: the head waits for room, and so do the rest
            self.waiting.popleft()
            self.running.append(seq)
            self.prefilling.append(seq)
            self._kv_prefilling += need
            seq.kv = need
            if seq.admitted is None:
                seq.admitted = self.now
            n = min(need, budget)
            chunks.append((seq, n))
            budget -= n
        return chunks

    def _preempt(self, start: float) -> int:
        """Free room for one token per decoding sequence, preempting the newest sequences."""
        preempted = 0
        while self.decoding and self.kv_used + len(self.decoding) > self.cost.kv_tokens:
            victim = self.running[-1]
            was_decoding = victim.rid in self.decoding
            self._remove(victim)
            victim.kv = 0
            victim.to_prefill = victim.prompt + victim.generated  # recompute
            victim.preemptions += 1
            if was_decoding and not self.record_tokens:
                # its last token came at the end of the step before (steps run back to back
                # while it decodes); kept lazily, so set here
                victim.last_token = start
            self.waiting.appendleft(victim)
            preempted += 1
        return preempted

    def step(self, now: float) -> StepResult:
        """Run one engine step starting at `now` (or when the previous one ended)."""
        start = max(now, self.busy_until)
        self.now = start
        preempted = self._preempt(start)
        n = len(self.decoding)
        chunks = self._admit(self.cost.chunk_tokens - n)
        prefill = sum(k for _, k in chunks)
        if not n and not chunks:
            return StepResult(start, start, preemptions=preempted)
        duration = self.cost.step_s(n, self.context, prefill)
        end = start + duration
        result = StepResult(start, end, steps=1, prefill_tokens=prefill, decode_tokens=n,
                            preemptions=preempted)
        if n:
            self.decode_steps += 1
            if self.record_tokens:
                for seq in self.decoding.values():
                    result.tokens.append((seq, end, end - _before(seq, start)))
                    self.sync(seq).last_token = end
            else:
                result.runs.append((n, end, duration, 0.0, 1))
        for seq, k in chunks:
            seq.to_prefill -= k
            if seq.to_prefill == 0:
                # the step that completes the prompt samples a token (the first, or after a
                # recompute the next one)
                self.prefilling.remove(seq)
                self._kv_prefilling -= seq.kv
                seq.generated += 1
                seq.kv += 1
                if seq.first_token is None:
                    seq.first_token = end
                    result.first_tokens.append(seq)
                else:
                    result.tokens.append((seq, end, end - _before(seq, start)))
                seq.last_token = end
                self._start_decoding(seq)
        self._finish_due(result, end)
        self.busy_until = end
        self.now = end
        return result

    def _finish_due(self, result: StepResult, end: float) -> None:
        while self._finish and self._finish[0][0] <= self.decode_steps:
            _, version, _, seq = heapq.heappop(self._finish)
            if version != seq.version or seq.rid not in self.decoding:
                continue  # stale: preempted (or restarted) since
            self._remove(seq)
            seq.last_token = end
            seq.kv = 0
            seq.finished = end
            result.finished.append(seq)

    # ------------------------------------------------------------------ many steps at once

    def _pure_decode_run(self, until: float, next_arrival: float) -> int:
        """How many identical decode-only steps can run from now before anything else happens:
        no prefill, nothing admissible, no finish, no KV overflow, no arrival, `until`."""
        n = len(self.decoding)
        if not n or self.prefilling:
            return 0
        if self.waiting and len(self.running) < self.cost.max_num_seqs:
            reserve = math.ceil(KV_WATERMARK * self.cost.kv_tokens)
            if self.kv_used + self.waiting[0].to_prefill <= self.cost.kv_tokens - reserve:
                return 0
        while self._finish and (self._finish[0][1] != self._finish[0][3].version
                                or self._finish[0][3].rid not in self.decoding):
            heapq.heappop(self._finish)  # drop stale entries
        k = (self._finish[0][0] - self.decode_steps) - 1 if self._finish else 0  # last: a step
        k = min(k, (self.cost.kv_tokens - self.kv_used) // n)
        if k <= 1:
            return 0
        horizon = min(until, next_arrival) - self.busy_until
        if horizon <= 0:
            return 0
        if math.isinf(horizon):
            return k
        c = self.cost
        a = c.step_base_s + c.per_seq_s * n + c.per_ctx_token_s * self.context
        b = c.per_ctx_token_s * n  # each step reads n more tokens of context
        # largest k with k*a + b*k*(k-1)/2 < horizon (steps that start before the horizon)
        root = ((-(a - b / 2) + math.sqrt((a - b / 2) ** 2 + 2 * b * horizon)) / b if b > 0
                else horizon / a)
        fit = math.ceil(root) - 1
        return max(min(k, fit), 0)

    def advance(self, until: float, next_arrival: float = math.inf) -> StepResult:
        """Run steps until the engine is idle, or its next step would start at or after
        `until` or `next_arrival`; runs of identical decode steps are jumped over."""
        total = StepResult(self.busy_until, self.busy_until)
        limit = min(until, next_arrival)
        while not self.idle() and self.busy_until < limit:
            k = self._pure_decode_run(until, next_arrival)
            if k >= 2:
                self._jump(k, total)
                continue
            r = self.step(self.busy_until)
            if r.steps == 0:
                break  # everything waits for room that only a finish would free: idle
            _merge(total, r)
        total.end = self.busy_until
        return total

    def _jump(self, k: int, total: StepResult) -> None:
        c = self.cost
        n = len(self.decoding)
        a = c.step_base_s + c.per_seq_s * n + c.per_ctx_token_s * self.context
        b = c.per_ctx_token_s * n
        start = self.busy_until
        end = start + k * a + b * k * (k - 1) / 2
        self.decode_steps += k
        if self.record_tokens:
            for seq in self.decoding.values():
                self.sync(seq).last_token = end
        total.runs.append((n, start + a, a, b, k))
        total.steps += k
        total.decode_tokens += n * k
        self.busy_until = end
        self.now = end


def _before(seq: Sequence, start: float) -> float:
    return start if seq.last_token is None else seq.last_token


def _merge(total: StepResult, r: StepResult) -> None:
    total.steps += r.steps
    total.prefill_tokens += r.prefill_tokens
    total.decode_tokens += r.decode_tokens
    total.preemptions += r.preemptions
    total.first_tokens += r.first_tokens
    total.tokens += r.tokens
    total.finished += r.finished
    total.runs += r.runs


def run_times(first_end: float, a: float, b: float, k: int) -> Iterable[float]:
    """The end times of a jumped run's steps (each step's tokens arrive then)."""
    t = first_end
    for j in range(k):
        yield t
        t += a + b * (j + 1)


def token_gaps(result: StepResult) -> list[tuple[float, int]]:
    """(seconds, tokens) pairs: the time-per-output-token observations of a result, every
    token after a sequence's first with the time since that sequence's token before (a run's
    step j gives its `n` sequences a gap of ``a + b*j`` each)."""
    out = [(gap, 1) for _, _, gap in result.tokens]
    for n, _first, a, b, k in result.runs:
        out.extend((a + b * j, n) for j in range(k))
    return out
