"""Token-trace replay for streaming LLMs: continuous-batching replicas (``llm_replica``), a
Prometheus-like view of vLLM's signals, and an autoscaler in the loop.

A token trace is a list of requests: arrival time, prompt tokens, tokens to generate (the
Azure LLM inference trace's ``TIMESTAMP, ContextTokens, GeneratedTokens``). Time advances in
ticks (1 s). Each tick:

1. every scaler due evaluates; new replicas are ready one start-up delay after they are asked
   for (and billed from the request), removed ones stop receiving requests and finish theirs;
2. the tick's requests go to the ready replicas in turn (a Service), each replica's engine
   running up to the arrival before taking it; a request that finds no ready replica fails;
3. every engine runs to the tick's end; its first tokens, later tokens and finished requests
   feed histograms of TTFT, TPOT and end-to-end time per scrape interval and per minute, and
   counters of prompt and generated tokens, as vLLM's metrics would.

The policy sees what Prometheus would show it (``LLMMetricsView``): histogram quantiles over
the rate window as of the last scrape, token rates, running and waiting requests, the fullest
replica's KV cache. A minute *meets the SLO* when its TTFT and TPOT at their percentiles are
within target and its error ratio within budget (minutes without requests are not scored).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, cast

import numpy as np

from dedicap.decide.policy import ObservationWindow
from dedicap.decide.policy_tokens import TokenSignals, TokenSLO
from dedicap.sim import latency as lh
from dedicap.sim.llm_replica import PRESETS, ContinuousBatcher, LLMCost, Sequence, token_gaps
from dedicap.sim.simulator import MetricsView, ScaleEvent, Scaler, SimResult

COUNTERS = ("arrivals", "finished", "unavailable", "backend", "prompt_tokens", "gen_tokens",
            "preemptions", "running", "waiting", "waiting_max", "kv_max", "ready", "held")


@dataclass(frozen=True)
class TokenTrace:
    """Requests with their token counts, sorted by arrival (seconds from the start)."""

    name: str
    duration: float
    times: np.ndarray
    prompt: np.ndarray  # prompt tokens per request
    output: np.ndarray  # tokens to generate per request

    @property
    def requests(self) -> int:
        return len(self.times)

    def minute_rates(self) -> np.ndarray:
        n = int(np.ceil(self.duration / 60.0))
        return np.bincount((self.times // 60.0).astype(int), minlength=n)[:n] / 60.0

    def minute_tokens(self) -> np.ndarray:
        """Prompt and generated tokens arriving per minute."""
        n = int(np.ceil(self.duration / 60.0))
        return np.bincount((self.times // 60.0).astype(int), weights=self.prompt + self.output,
                           minlength=n)[:n]

    def scaled(self, factor: float, seed: int = 0, spread_s: float = 30.0) -> TokenTrace:
        """A tenant `factor` times larger: each request repeated ``floor(factor)`` times (one
        more with the fraction's probability), the copies spread uniformly over `spread_s`
        around it, so the shape above that scale and the token mix are kept."""
        if factor <= 0:
            raise ValueError(f"a scale factor must be positive, got {factor!r}")
        if factor == 1.0:
            return self
        rng = np.random.default_rng(seed)
        copies = np.floor(factor) + (rng.random(len(self.times)) < factor % 1.0)
        idx = np.repeat(np.arange(len(self.times)), copies.astype(int))
        times = self.times[idx] + rng.uniform(-spread_s / 2, spread_s / 2, len(idx))
        times = np.clip(times, 0.0, self.duration - 1e-6)
        order = np.argsort(times, kind="stable")
        return TokenTrace(f"{self.name} x{factor:g}", self.duration, times[order],
                          self.prompt[idx][order], self.output[idx][order])

    def window(self, start_s: float, end_s: float) -> TokenTrace:
        keep = (self.times >= start_s) & (self.times < end_s)
        return TokenTrace(self.name, end_s - start_s, self.times[keep] - start_s,
                          self.prompt[keep], self.output[keep])


def token_trace(times: np.ndarray, prompt: np.ndarray, output: np.ndarray, name: str,
                duration: float | None = None) -> TokenTrace:
    order = np.argsort(times, kind="stable")
    t = np.asarray(times, dtype=float)[order]
    span = float(duration) if duration is not None else (float(t[-1]) + 1e-6 if len(t) else 0.0)
    return TokenTrace(name, span, t, np.maximum(np.asarray(prompt)[order], 1).astype(np.int64),
                      np.maximum(np.asarray(output)[order], 1).astype(np.int64))


@dataclass(frozen=True)
class LLMSimConfig:
    cost: LLMCost = field(default_factory=lambda: PRESETS["llama-8b-h100"])
    slo: TokenSLO = field(default_factory=lambda: TokenSLO(ttft_target_ms=500.0,
                                                           tpot_target_ms=50.0))
    error_max: float = 0.001
    startup_delay_s: float = 60.0
    tick_s: float = 1.0
    scrape_interval_s: float = 15.0
    window_s: float = 60.0
    initial_replicas: int = 1
    max_replicas: int = 10_000
    gpus_per_replica: int = 1
    price_per_gpu_hour: float = 2.5
    backend_error_ratio: float = 0.0
    seed: int = 0


class _Histograms:
    """TTFT, TPOT and end-to-end histograms per scrape interval (what the policy reads) and
    TTFT and TPOT per minute (what is scored), plus their sums."""

    def __init__(self, n_scrapes: int, n_minutes: int) -> None:
        self.scrape = {k: np.zeros((n_scrapes, lh.N_BINS)) for k in ("ttft", "tpot", "e2e")}
        self.sums = {k: np.zeros(n_scrapes) for k in ("ttft", "tpot", "e2e")}
        self.minute = {k: np.zeros((n_minutes, lh.N_BINS)) for k in ("ttft", "tpot")}

    def add(self, kind: str, scrape: int, minute: int, values: np.ndarray,
            weights: np.ndarray | float = 1.0) -> None:
        if values.size == 0:
            return
        lh.add(self.scrape[kind][scrape], values, weights)
        self.sums[kind][scrape] += float(np.sum(values * weights))
        if kind in self.minute:
            lh.add(self.minute[kind][minute], values, weights)


class LLMSimulation:
    def __init__(self, trace: TokenTrace, scaler: Scaler, cfg: LLMSimConfig) -> None:
        self.trace, self.scaler, self.cfg = trace, scaler, cfg
        self.n_ticks = max(math.ceil(trace.duration / cfg.tick_s), 1)
        self.series = {name: np.zeros(self.n_ticks) for name in COUNTERS}
        self.per_scrape = max(round(cfg.scrape_interval_s / cfg.tick_s), 1)
        self.n_minutes = math.ceil(self.n_ticks * cfg.tick_s / 60.0)
        self.hist = _Histograms(self.n_ticks // self.per_scrape + 2, self.n_minutes)
        self.rng = np.random.default_rng(cfg.seed)
        self.engines: dict[int, ContinuousBatcher] = {}
        self.next_id = 0
        self.starting: list[tuple[int, float]] = []
        self.ready: list[int] = []
        self.draining: list[int] = []
        self.events: list[ScaleEvent] = []
        self.rr = 0
        self._buffer: dict[str, tuple[list[float], list[float]]] = {
            kind: ([], []) for kind in ("ttft", "tpot", "e2e")}
        self.view = LLMMetricsView(self)
        for _ in range(min(cfg.initial_replicas, cfg.max_replicas)):
            self.ready.append(self._new_replica())

    def _new_replica(self) -> int:
        self.next_id += 1
        self.engines[self.next_id] = ContinuousBatcher(self.cfg.cost, record_tokens=False)
        return self.next_id

    def _apply(self, desired: int, now: float, reason: str) -> None:
        desired = max(0, min(desired, self.cfg.max_replicas))
        current = len(self.starting) + len(self.ready)
        if desired == current:
            return
        self.events.append(ScaleEvent(now, current, desired, reason))
        if desired > current:
            for _ in range(desired - current):
                self.next_id += 1
                self.starting.append((self.next_id, now + self.cfg.startup_delay_s))
            return
        surplus = current - desired
        while surplus and self.starting:
            self.starting.pop()
            surplus -= 1
        while surplus and self.ready:
            self.draining.append(self.ready.pop())
            surplus -= 1

    def _absorb(self, k: int, result: Any) -> None:
        s = self.series
        s["prompt_tokens"][k] += result.prefill_tokens
        s["gen_tokens"][k] += result.generated
        s["preemptions"][k] += result.preemptions
        buf = self._buffer
        buf["ttft"][0].extend(q.first_token - q.arrival for q in result.first_tokens)
        for gap, n in token_gaps(result):
            buf["tpot"][0].append(gap)
            buf["tpot"][1].append(n)
        if result.finished:
            s["finished"][k] += len(result.finished)
            buf["e2e"][0].extend(q.finished - q.arrival for q in result.finished)

    def _flush(self, k: int) -> None:
        """The tick's observations into the histograms: one addition per kind and tick."""
        scrape = k // self.per_scrape
        minute = min(int(k * self.cfg.tick_s // 60), self.n_minutes - 1)
        for kind, (values, weights) in self._buffer.items():
            if values:
                self.hist.add(kind, scrape, minute, np.array(values),
                              np.array(weights) if weights else 1.0)
                values.clear()
                weights.clear()

    def run(self) -> SimResult:
        cfg, tr = self.cfg, self.trace
        t_wall = time.perf_counter()
        next_eval = float(getattr(self.scaler, "offset_s", 0.0))
        bounds = np.searchsorted(tr.times, np.arange(self.n_ticks + 1) * cfg.tick_s)
        s = self.series
        for k in range(self.n_ticks):
            t0, t1 = k * cfg.tick_s, (k + 1) * cfg.tick_s
            if t0 + 1e-9 >= next_eval:
                current = len(self.starting) + len(self.ready)
                want, why = self.scaler.desired(cast(MetricsView, self.view), t0, current)
                self._apply(want, t0, why)
                next_eval += self.scaler.interval_s
            if self.starting:
                now_ready = [rid for rid, at in self.starting if at <= t0 + 1e-9]
                self.starting = [(rid, at) for rid, at in self.starting if at > t0 + 1e-9]
                for rid in now_ready:
                    self.engines[rid] = ContinuousBatcher(cfg.cost, record_tokens=False)
                    self.ready.append(rid)
            for i in range(bounds[k], bounds[k + 1]):
                s["arrivals"][k] += 1
                if not self.ready:
                    s["unavailable"][k] += 1
                    continue
                if cfg.backend_error_ratio > 0 and self.rng.random() < cfg.backend_error_ratio:
                    s["backend"][k] += 1
                    continue
                rid = self.ready[self.rr % len(self.ready)]
                self.rr += 1
                engine = self.engines[rid]
                at = float(tr.times[i])
                self._absorb(k, engine.advance(at, at))
                prompt, output = int(tr.prompt[i]), int(tr.output[i])
                if not engine.fits(prompt, output):
                    s["backend"][k] += 1  # vLLM refuses a request longer than the model
                    continue
                engine.submit(Sequence(i, prompt, output, at))
            running = waiting = 0
            kv = wmax = 0.0
            for rid in (*self.ready, *self.draining):
                engine = self.engines[rid]
                self._absorb(k, engine.advance(t1))
                running += len(engine.running)
                waiting += len(engine.waiting)
                wmax = max(wmax, len(engine.waiting))
                kv = max(kv, engine.kv_usage)
            self._flush(k)
            self.draining = [rid for rid in self.draining if not self.engines[rid].idle()]
            s["running"][k], s["waiting"][k], s["waiting_max"][k] = running, waiting, wmax
            s["kv_max"][k] = kv
            s["ready"][k] = len(self.ready)
            s["held"][k] = len(self.ready) + len(self.starting) + len(self.draining)
        return self._result(time.perf_counter() - t_wall)

    def _result(self, wall: float) -> SimResult:
        cfg, s = self.cfg, self.series
        per_min = round(60.0 / cfg.tick_s)
        n = self.n_minutes
        pad = n * per_min - self.n_ticks

        def by_minute(x: np.ndarray, how: str = "sum") -> np.ndarray:
            y = np.concatenate([x, np.full(pad, np.nan if how == "mean" else 0.0)])
            y = y.reshape(n, per_min)
            return np.nanmean(y, axis=1) if how == "mean" else y.sum(axis=1)

        arrivals = by_minute(s["arrivals"])
        errors = by_minute(s["unavailable"] + s["backend"])
        slo = cfg.slo
        ttft = 1000.0 * lh.quantiles_rows(self.hist.minute["ttft"], slo.ttft_percentile / 100)
        tpot = 1000.0 * lh.quantiles_rows(self.hist.minute["tpot"], slo.tpot_percentile / 100)
        err_ratio = np.where(arrivals > 0, errors / np.maximum(arrivals, 1e-12), 0.0)
        scored = arrivals > 0
        met = (scored & ~(ttft > slo.ttft_target_ms) & ~(tpot > slo.tpot_target_ms)
               & (err_ratio <= cfg.error_max + 1e-12))
        gpu_hours = float(s["held"].sum()) * cfg.tick_s * cfg.gpus_per_replica / 3600.0
        self.minute_tpot_ms = tpot
        self.minute_tokens = by_minute(s["prompt_tokens"] + s["gen_tokens"])
        return SimResult(
            scaler=self.scaler.name, trace=self.trace.name, engine="llm",
            startup_delay_s=cfg.startup_delay_s, slo_target_ms=slo.ttft_target_ms,
            slo_percentile=slo.ttft_percentile, minutes=n, scored=int(scored.sum()),
            met=int(met.sum()), gpu_hours=gpu_hours, cost=gpu_hours * cfg.price_per_gpu_hour,
            requests=float(arrivals.sum()), errors=float(errors.sum()),
            scale_events=self.events, minute_rate=arrivals / 60.0,
            minute_held=by_minute(s["held"], "mean"), minute_ready=by_minute(s["ready"], "mean"),
            minute_latency_ms=ttft, minute_error_ratio=err_ratio,
            minute_met=np.where(scored, met.astype(int), -1),
            mean_latency_ms=float(self.hist.sums["ttft"].sum()) * 1000.0
            / max(float(self.hist.scrape["ttft"].sum()), 1.0),
            mean_inflight=float(s["running"].mean() + s["waiting"].mean()),
            throughput=float(s["gen_tokens"].sum()) / (self.n_ticks * cfg.tick_s),
            wall_s=wall,
        )


class LLMMetricsView:
    """What a scaler sees of a streaming LLM: vLLM's signals as Prometheus would show them (as
    of the last scrape, over the rate window), and ready / starting replicas from the API."""

    def __init__(self, sim: LLMSimulation) -> None:
        self.sim = sim

    def last_scrape(self, now: float) -> float | None:
        k = math.floor(now / self.sim.cfg.scrape_interval_s + 1e-9)
        return k * self.sim.cfg.scrape_interval_s if k >= 1 else None

    def prometheus(self, now: float) -> ObservationWindow:
        sim, cfg = self.sim, self.sim.cfg
        ready, starting = len(sim.ready), len(sim.starting)
        ts = self.last_scrape(now)
        if ts is None:
            return ObservationWindow(timestamp=None, ready_replicas=ready,
                                     starting_replicas=starting, current_replicas=ready + starting)
        hi = round(ts / cfg.tick_s)
        lo = max(hi - round(cfg.window_s / cfg.tick_s), 0)
        span = max((hi - lo) * cfg.tick_s, 1e-9)
        s = sim.series

        def rate(name: str) -> float:
            return float(s[name][lo:hi].sum()) / span

        sc_hi = hi // sim.per_scrape
        sc_lo = max(sc_hi - round(cfg.window_s / cfg.scrape_interval_s), 0)
        slo = cfg.slo

        def quantile(kind: str, pct: float) -> float:
            return 1000.0 * lh.quantile(sim.hist.scrape[kind][sc_lo:sc_hi].sum(axis=0),
                                        pct / 100.0)

        def mean(kind: str) -> float:
            count = float(sim.hist.scrape[kind][sc_lo:sc_hi].sum())
            return 1000.0 * float(sim.hist.sums[kind][sc_lo:sc_hi].sum()) / count \
                if count > 0 else math.nan

        last = hi - 1 if hi > 0 else 0
        # deriv() of the waiting gauge over the window's scrapes: their least-squares slope
        scrapes = np.arange(hi - 1, lo - 1, -sim.per_scrape)[::-1]
        growth = (float(np.polyfit(scrapes * cfg.tick_s, s["waiting"][scrapes], 1)[0])
                  if len(scrapes) >= 2 else math.nan)
        finished, backend = rate("finished"), rate("backend")
        tokens = TokenSignals(
            ttft_ms=quantile("ttft", slo.ttft_percentile),
            tpot_ms=quantile("tpot", slo.tpot_percentile),
            e2e_ms=quantile("e2e", slo.e2e_percentile), mean_ttft_ms=mean("ttft"),
            mean_tpot_ms=mean("tpot"), finished_rate=finished,
            prompt_token_rate=rate("prompt_tokens"), generation_token_rate=rate("gen_tokens"),
            running=float(s["running"][lo:hi].mean()) if hi > lo else math.nan,
            running_now=float(s["running"][last]), waiting=float(s["waiting"][last]),
            waiting_max=float(s["waiting_max"][lo:hi].max()) if hi > lo else math.nan,
            waiting_growth=growth,
            kv_usage=float(s["kv_max"][last]), preemption_rate=rate("preemptions"))
        return ObservationWindow(
            timestamp=ts, window_s=span, request_rate=finished + backend,
            success_rate=finished, backend_failure_rate=backend, ready_replicas=ready,
            starting_replicas=starting, current_replicas=ready + starting, tokens=tokens)


def simulate_llm(trace: TokenTrace, scaler: Scaler, cfg: LLMSimConfig) -> SimResult:
    return LLMSimulation(trace, scaler, cfg).run()


# ----------------------------------------------------------------------------- capacity, oracle


def meets(cost: LLMCost, slo: TokenSLO, trace: TokenTrace, replicas: int) -> bool:
    """Whether `replicas` fresh replicas serve `trace` (requests to them in turn, each run to
    completion) with TTFT and TPOT at their percentiles within target."""
    engines = [ContinuousBatcher(cost, record_tokens=False) for _ in range(max(replicas, 1))]
    ttft: list[float] = []
    gaps: list[tuple[float, int]] = []

    def absorb(result: Any) -> None:
        ttft.extend(q.first_token - q.arrival for q in result.first_tokens)
        gaps.extend(token_gaps(result))

    for i, at in enumerate(trace.times):
        engine = engines[i % len(engines)]
        absorb(engine.advance(float(at), float(at)))
        prompt, output = int(trace.prompt[i]), int(trace.output[i])
        if engine.fits(prompt, output):
            engine.submit(Sequence(i, prompt, output, float(at)))
    for engine in engines:
        absorb(engine.advance(math.inf))
    if (ttft and math.isfinite(slo.ttft_target_ms)
            and 1000.0 * float(np.percentile(ttft, slo.ttft_percentile)) > slo.ttft_target_ms):
        return False
    if gaps and math.isfinite(slo.tpot_target_ms):
        g = np.array(gaps)
        order = np.argsort(g[:, 0])
        cum = np.cumsum(g[order, 1])
        q = g[order, 0][np.searchsorted(cum, slo.tpot_percentile / 100.0 * cum[-1])]
        if 1000.0 * float(q) > slo.tpot_target_ms:
            return False
    return True


def minute_minimum(trace: TokenTrace, cost: LLMCost, slo: TokenSLO, min_replicas: int = 1,
                   most: int = 1000) -> np.ndarray:
    """``n*(m)``: the fewest replicas that serve each minute's requests within the SLO,
    replayed alone from idle replicas (the oracles' schedule)."""
    n_min = math.ceil(trace.duration / 60.0)
    out = np.full(n_min, max(min_replicas, 1), dtype=int)
    previous = 1
    for m in range(n_min):
        minute = trace.window(60.0 * m, 60.0 * (m + 1))
        if minute.requests == 0:
            continue
        lo, hi = max(min_replicas, 1), max(previous, 1)
        while not meets(cost, slo, minute, hi) and hi < most:
            lo, hi = hi + 1, min(2 * hi, most)
        while lo < hi:  # the fewest that meet it, between a count that fails and one that meets
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if meets(cost, slo, minute, mid) else (mid + 1, hi)
        out[m] = previous = hi
    return out


def replica_tokens_per_minute(cost: LLMCost, slo: TokenSLO, trace: TokenTrace,
                              minutes: float = 3.0, seed: int = 0) -> tuple[float, float]:
    """(requests/s, tokens/min) one replica sustains within the SLO under Poisson arrivals of
    the trace's token mix: the capacity a reservation buys, per replica (bisection over the
    rate, each rate replayed for `minutes`)."""
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, trace.requests, 100_000)
    mean_tokens = float(np.mean(trace.prompt[pick] + trace.output[pick]))

    def load(rps: float) -> TokenTrace:
        n = max(int(rps * 60 * minutes), 1)
        times = np.cumsum(np.random.default_rng(seed + 1).exponential(1.0 / rps, n))
        return token_trace(times, trace.prompt[pick[:n]], trace.output[pick[:n]], "load")

    lo, hi = 0.0, 1.0
    while meets(cost, slo, load(hi), 1) and hi < 1e4:
        lo, hi = hi, 2 * hi
    for _ in range(12):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if meets(cost, slo, load(mid), 1) else (lo, mid)
    return lo, lo * mean_tokens * 60.0


def with_cost(cfg: LLMSimConfig, cost: LLMCost) -> LLMSimConfig:
    return replace(cfg, cost=cost)
