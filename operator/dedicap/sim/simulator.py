"""Trace replay: replicas, a Prometheus-like view of them, and an autoscaler in the loop.

Time advances in ticks (1 s by default). Each tick:

1. replicas whose start-up delay has elapsed become ready (a replica is *held* — billed — from
   the moment it is requested until it is gone);
2. every scaler due at this tick evaluates and its desired count is applied: new replicas are
   requested (ready after ``startup_delay_s``), surplus ones removed — those still starting
   first, then ready ones, which stop receiving requests and drain;
3. the tick's arrivals are served by the data plane (exact or fluid, see ``dataplane.py``);
4. every ``scrape_interval_s`` the counters, gauges and the latency summary are "scraped".

A scaler sees Triton's signals through the pipeline the operator reads them through:

- Prometheus keeps one sample per scrape; an evaluation at ``t`` reads the newest one.
- ``rate(x[W])`` at ``t`` takes the samples in ``[t - W, t]`` and divides the counter's
  increase between the first and the last of them by the time between them (Prometheus then
  extrapolates the increase to the window and divides by ``W``, which comes to the same): with
  a 15-s scrape, ``rate(x[60s])`` averages the 45 s before the last scrape. The same for the
  short window of the fast path (2.5 scrapes: two or three samples), and ``deriv`` of the
  pending-request gauge is the least-squares slope of its samples in the short window.
- Triton's summary quantiles come from prometheus-cpp's time-window quantiles: five buckets
  rotated every ``summary_max_age_s / summary_age_buckets`` (12 s), read from the one reset
  longest ago, so a scrape at ``s`` sees the requests of ``[12*floor(s/12) - 48, s]``: 48 to
  60 s, and up to a scrape interval older by the time it is read. Idle: NaN. (Pooled over the
  replicas; the operator reads the max over pods, which is higher when pods differ, e.g. just
  after a scale-up, when the old pods still carry the overload and the new ones do not.)
- Ready and starting replicas come from the Kubernetes API (live); the evaluation interval
  and its phase are the scaler's.

Knative's KPA reads its own per-second concurrency instead (it scrapes queue-proxies, not
Prometheus): ``MetricsView.concurrency``.

Scoring (the benchmark's definitions): a minute is *scored* when at least one request arrived
in it; it *meets the SLO* when the latency of its successful requests at the SLO percentile is
within target and its error ratio (rejected + unavailable + backend failures over arrivals) is
within the error budget. GPU-hours integrate GPUs held.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from dedicap.decide.policy import ObservationWindow
from dedicap.sim import latency as lh
from dedicap.sim.dataplane import ExactDataPlane, FluidDataPlane, TickStats
from dedicap.sim.service import ServiceModel, calibrated
from dedicap.sim.traces import Trace

FIELDS = ("arrivals", "successes", "rejected", "backend", "unavailable", "latency_sum",
          "queue_sum", "compute_sum", "dispatched", "batches", "busy", "queue_depth", "inflight")


@dataclass(frozen=True)
class SimConfig:
    service: ServiceModel = field(default_factory=calibrated)
    slo_percentile: float = 95.0
    slo_target_ms: float = 200.0
    slo_error_max: float = 0.001
    startup_delay_s: float = 60.0
    tick_s: float = 1.0
    scrape_interval_s: float = 15.0
    window_s: float = 60.0  # the rate window of the operator's queries
    # the fast path's window; None: 2.5 scrape intervals (two or three samples), the operator's
    # default
    short_window_s: float | None = None
    # Triton's summaries (prometheus-cpp's defaults: a 60-s window in five rotating buckets)
    summary_max_age_s: float = 60.0
    summary_age_buckets: int = 5
    engine: str = "exact"  # "exact" | "fluid"
    initial_replicas: int = 1
    max_replicas: int = 10_000  # what the reservation allows
    gpus_per_replica: int = 1
    price_per_gpu_hour: float = 2.5
    backend_error_ratio: float = 0.0
    seed: int = 0
    scrape_gaps: tuple[tuple[float, float], ...] = ()  # Prometheus outages [from, to)
    progress: bool = False
    # keep a latency histogram per tick (by completion), for windows finer than a minute
    tick_histograms: bool = False


class Scaler(Protocol):
    name: str
    interval_s: float

    def desired(self, view: MetricsView, now: float, current: int) -> tuple[int, str]:
        """The replica count wanted at ``now`` and why."""
        ...


@dataclass
class ScaleEvent:
    t: float
    old: int
    new: int
    reason: str


@dataclass
class SimResult:
    scaler: str
    trace: str
    engine: str
    startup_delay_s: float
    slo_target_ms: float
    slo_percentile: float
    minutes: int
    scored: int
    met: int
    gpu_hours: float
    cost: float
    requests: float
    errors: float
    scale_events: list[ScaleEvent]
    minute_rate: np.ndarray
    minute_held: np.ndarray
    minute_ready: np.ndarray
    minute_latency_ms: np.ndarray
    minute_error_ratio: np.ndarray
    minute_met: np.ndarray  # 1 met, 0 missed, -1 not scored
    mean_latency_ms: float
    mean_inflight: float
    throughput: float
    wall_s: float

    @property
    def attainment(self) -> float:
        return self.met / self.scored if self.scored else float("nan")

    def summary(self) -> dict[str, object]:
        return {
            "scaler": self.scaler, "trace": self.trace, "engine": self.engine,
            "startup_delay_s": self.startup_delay_s,
            "slo": {"percentile": self.slo_percentile, "target_ms": self.slo_target_ms},
            "minutes_scored": self.scored, "minutes_met": self.met,
            "attainment": self.attainment, "gpu_hours": self.gpu_hours, "cost": self.cost,
            "requests": self.requests, "error_ratio": self.errors / max(self.requests, 1.0),
            "scale_events": len(self.scale_events),
            "peak_replicas": int(self.minute_held.max()) if self.minutes else 0,
            "wall_s": self.wall_s,
        }


class MetricsView:
    """What scalers may look at: Prometheus as of its last scrape, and the Kubernetes API."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim

    def last_scrape(self, now: float) -> float | None:
        s = self.sim
        k = math.floor(now / s.cfg.scrape_interval_s + 1e-9)
        while k >= 1:
            t = k * s.cfg.scrape_interval_s
            if not any(a <= t < b for a, b in s.cfg.scrape_gaps):
                return t if t <= now + 1e-9 else None
            k -= 1
        return None

    def _window(self, end: float, length: float) -> tuple[int, int]:
        tick = self.sim.cfg.tick_s
        hi = round(end / tick)
        lo = max(hi - round(length / tick), 0)
        return lo, hi

    def samples(self, now: float, length: float) -> list[float]:
        """The scrape times Prometheus holds in ``[now - length, now]`` (outages left out)."""
        interval = self.sim.cfg.scrape_interval_s
        k0 = max(math.ceil((now - length) / interval - 1e-9), 1)
        k1 = math.floor(now / interval + 1e-9)
        return [k * interval for k in range(k0, k1 + 1)
                if not any(a <= k * interval < b for a, b in self.sim.cfg.scrape_gaps)]

    def _ticks(self, t: float) -> int:
        return round(t / self.sim.cfg.tick_s)

    def _increase(self, names: tuple[str, ...], a: float, b: float) -> float:
        """A counter's increase between the samples at ``a`` and ``b`` (summed ``names``)."""
        lo, hi = self._ticks(a), self._ticks(b)
        return float(sum(self.sim.series[n][lo:hi].sum() for n in names))

    def prometheus(self, now: float) -> ObservationWindow:
        s = self.sim
        cfg = s.cfg
        ts = self.last_scrape(now)
        ready, starting = len(s.ready), len(s.starting)
        if ts is None:
            return ObservationWindow(timestamp=None, ready_replicas=ready,
                                     starting_replicas=starting, current_replicas=ready + starting)
        long = self.samples(now, cfg.window_s)
        if len(long) < 2:  # too few samples for a rate: the operator holds
            return ObservationWindow(timestamp=None, ready_replicas=ready,
                                     starting_replicas=starting, current_replicas=ready + starting)
        a, b = long[0], long[-1]
        span = b - a

        def per_s(*names: str) -> float:
            return self._increase(names, a, b) / span

        def total(*names: str) -> float:
            return self._increase(names, a, b)

        succ = total("successes")
        disp, batches = total("dispatched"), total("batches")
        short = self.samples(now, s.short_window_s)
        fast: dict[str, Any] = {}
        if len(short) >= 2:
            sa, sb = short[0], short[-1]
            done = self._increase(("dispatched",), sa, sb)
            fast = {
                "request_rate_short": self._increase(("successes", "rejected", "backend"), sa,
                                                     sb) / (sb - sa),
                "success_rate_short": self._increase(("successes",), sa, sb) / (sb - sa),
                "mean_queue_ms_short": (1000.0 * self._increase(("queue_sum",), sa, sb) / done
                                        if done > 0 else math.nan),
                "queue_growth": _slope(short, [self.gauge("queue_depth", x) for x in short]),
                **self._arrivals_last(short),
            }
        return ObservationWindow(
            timestamp=ts, window_s=cfg.window_s,
            request_rate=per_s("successes", "rejected", "backend"),
            success_rate=per_s("successes"),
            rejected_rate=per_s("rejected"),
            backend_failure_rate=per_s("backend"),
            mean_latency_ms=1000.0 * total("latency_sum") / succ if succ > 0 else math.nan,
            latency_quantile_ms=1000.0 * s.summary_at(ts),
            queue_depth=self.gauge("queue_depth", ts),
            mean_queue_ms=1000.0 * total("queue_sum") / disp if disp > 0 else math.nan,
            mean_compute_ms=1000.0 * total("compute_sum") / disp if disp > 0 else math.nan,
            mean_batch_size=disp / batches if batches > 0 else math.nan,
            ready_replicas=ready, starting_replicas=starting,
            current_replicas=ready + starting, **fast,
        )

    def _arrivals_last(self, short: list[float]) -> dict[str, float]:
        """The fast path's view of the last scrape interval alone, as the operator reads it:
        ``irate`` of the request counters plus ``idelta`` of the queue gauge over the nominal
        scrape interval."""
        sa, sb = short[-2], short[-1]
        served = self._increase(("successes", "rejected", "backend"), sa, sb) / (sb - sa)
        grown = self.gauge("queue_depth", sb) - self.gauge("queue_depth", sa)
        return {"arrivals_last": max(served + grown / self.sim.cfg.scrape_interval_s, 0.0)}

    def gauge(self, name: str, t: float) -> float:
        """A gauge as scraped at ``t`` (its value at the end of the tick before)."""
        k = self._ticks(t)
        return float(self.sim.series[name][k - 1]) if k > 0 else math.nan

    def utilization(self, now: float) -> float:
        """Mean busy fraction of the ready replicas over the window, as of the last scrape
        (the GPU-utilization metric an HPA would read); NaN without data."""
        s = self.sim
        ts = self.last_scrape(now)
        if ts is None:
            return math.nan
        lo, hi = self._window(ts, s.cfg.window_s)
        rs = s.series["ready"][lo:hi].sum() * s.cfg.tick_s
        return float(s.series["busy"][lo:hi].sum() / rs) if rs > 0 else math.nan

    def concurrency(self, now: float, seconds: float) -> float:
        """Mean in-flight requests over the last ``seconds`` (all pods), per-second data."""
        lo, hi = self._window(now, seconds)
        if hi <= lo:
            return 0.0
        return float(self.sim.series["inflight"][lo:hi].mean())

    def request_rate(self, now: float, seconds: float) -> float:
        """``rate(...[seconds])`` of the requests Triton counted, as Prometheus answers it."""
        got = self.samples(now, seconds)
        if len(got) < 2:
            return math.nan
        return self._increase(("successes", "rejected", "backend"), got[0], got[-1]) / (
            got[-1] - got[0])

    @property
    def ready(self) -> int:
        return len(self.sim.ready)

    @property
    def starting(self) -> int:
        return len(self.sim.starting)


class Simulation:
    def __init__(self, trace: Trace, scaler: Scaler, cfg: SimConfig) -> None:
        self.trace, self.scaler, self.cfg = trace, scaler, cfg
        self.n_ticks = math.ceil(trace.duration / cfg.tick_s)
        self.series = {name: np.zeros(self.n_ticks)
                       for name in (*FIELDS, "ready", "asked", "held")}
        # Triton's summary: one histogram per rotation bucket (a ring of age_buckets + 1), and
        # the quantile each scrape read from it
        self.bucket_s = cfg.summary_max_age_s / max(cfg.summary_age_buckets, 1)
        self.summary_ring = np.zeros((cfg.summary_age_buckets + 1, lh.N_BINS), dtype=np.float32)
        self.ring_bucket = 0
        n_scrapes = math.ceil(trace.duration / cfg.scrape_interval_s) + 1
        self.scraped_q = np.full(n_scrapes + 1, np.nan)
        self.short_window_s = (cfg.short_window_s if cfg.short_window_s is not None
                               else 2.5 * cfg.scrape_interval_s)
        self.n_minutes = math.ceil(trace.duration / 60.0)
        self.tick_hist = (np.zeros((self.n_ticks, lh.N_BINS), dtype=np.float32)
                          if cfg.tick_histograms else None)
        self.minute_hist = np.zeros((self.n_minutes, lh.N_BINS), dtype=np.float32)
        self.rng = np.random.default_rng(cfg.seed)
        self.counts = trace.tick_counts(cfg.tick_s, np.random.default_rng(cfg.seed + 1000))
        if cfg.engine == "exact":
            self.plane: ExactDataPlane | FluidDataPlane = ExactDataPlane(
                cfg.service, self.rng, cfg.backend_error_ratio)
        elif cfg.engine == "fluid":
            self.plane = FluidDataPlane(cfg.service, self.rng, cfg.backend_error_ratio,
                                        trace.mean_work)
        else:
            raise ValueError(f"unknown engine {cfg.engine!r} (exact, fluid)")
        self.next_id = 0
        self.starting: list[tuple[int, float]] = []  # (id, ready_at)
        self.ready: list[int] = []
        self.draining: list[int] = []
        self.events: list[ScaleEvent] = []
        self.view = MetricsView(self)
        for _ in range(min(cfg.initial_replicas, cfg.max_replicas)):
            rid = self._new_id()
            self.plane.add_replica(rid, 0.0)
            self.ready.append(rid)

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def _apply(self, desired: int, now: float, reason: str) -> None:
        desired = max(0, min(desired, self.cfg.max_replicas))
        current = len(self.starting) + len(self.ready)
        if desired == current:
            return
        self.events.append(ScaleEvent(now, current, desired, reason))
        if desired > current:
            for _ in range(desired - current):
                rid = self._new_id()
                self.starting.append((rid, now + self.cfg.startup_delay_s))
            return
        surplus = current - desired
        while surplus and self.starting:
            rid, _ = self.starting.pop()
            self.plane.drop_replica(rid)
            surplus -= 1
        while surplus and self.ready:
            rid = self.ready.pop()
            if isinstance(self.plane, ExactDataPlane):
                self.draining.append(rid)
            surplus -= 1

    def run(self) -> SimResult:
        cfg = self.cfg
        tick = cfg.tick_s
        t_wall = time.perf_counter()
        next_eval = float(getattr(self.scaler, "offset_s", 0.0))
        per_scrape = round(cfg.scrape_interval_s / tick)
        bar = None
        if cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=self.n_ticks, unit="s", leave=False, mininterval=0.5,
                       desc=f"{self.scaler.name} on {self.trace.name}")
        series = self.series
        for k in range(self.n_ticks):
            t0 = k * tick
            t1 = t0 + tick
            if t0 + 1e-9 >= next_eval:
                current = len(self.starting) + len(self.ready)
                want, why = self.scaler.desired(self.view, t0, current)
                self._apply(want, t0, why)
                next_eval += self.scaler.interval_s
            if self.starting:
                still = []
                for rid, ready_at in self.starting:
                    if ready_at <= t0 + 1e-9:
                        self.plane.add_replica(rid, t0)
                        self.ready.append(rid)
                    else:
                        still.append((rid, ready_at))
                self.starting = still
            bucket = int(t0 // self.bucket_s + 1e-9)
            if bucket != self.ring_bucket:
                for b in range(self.ring_bucket + 1, bucket + 1):
                    self.summary_ring[b % len(self.summary_ring)] = 0.0
                self.ring_bucket = bucket
            hists = [self.minute_hist[min(int(t0 // 60), self.n_minutes - 1)],
                     self.summary_ring[bucket % len(self.summary_ring)]]
            if self.tick_hist is not None:
                hists.append(self.tick_hist[k])
            if isinstance(self.plane, ExactDataPlane):
                times, work = self.trace.tick_arrivals(t0, t1, int(self.counts[k]), self.rng)
                st: TickStats = self.plane.step(t0, t1, times, work, self.ready, self.draining,
                                                hists)
                if st.finished_draining:
                    done = set(st.finished_draining)
                    self.draining = [r for r in self.draining if r not in done]
            else:
                st = self.plane.step_count(tick, float(self.counts[k]), len(self.ready), hists)
            for name in FIELDS:
                series[name][k] = getattr(st, name)
            series["ready"][k] = len(self.ready)
            series["asked"][k] = len(self.ready) + len(self.starting)
            series["held"][k] = len(self.ready) + len(self.starting) + len(self.draining)
            if (k + 1) % per_scrape == 0:
                self.scraped_q[(k + 1) // per_scrape] = self._summary_quantile(t1)
            if bar is not None and k % 60 == 59:
                bar.update(60)
        if bar is not None:
            bar.close()
        return self._result(time.perf_counter() - t_wall)

    def _summary_quantile(self, t: float) -> float:
        """Triton's summary quantile (s) at ``t``: the requests since the bucket read was last
        reset, ``[bucket_s * floor(t / bucket_s) - max_age + bucket_s, t]``."""
        now_bucket = int(t // self.bucket_s + 1e-9)
        last = int((t - 1e-9) // self.bucket_s)
        first = max(now_bucket - (self.cfg.summary_age_buckets - 1), 0)
        ring = self.summary_ring
        hist = sum((ring[b % len(ring)] for b in range(first, last + 1)),
                   np.zeros(lh.N_BINS, dtype=np.float32))
        return lh.quantile(hist, self.cfg.slo_percentile / 100.0)

    def summary_at(self, t: float) -> float:
        """The summary quantile (s) the scrape at ``t`` read; NaN while idle."""
        k = round(t / self.cfg.scrape_interval_s)
        return float(self.scraped_q[k]) if 0 <= k < len(self.scraped_q) else math.nan

    def _result(self, wall: float) -> SimResult:
        cfg = self.cfg
        s = self.series
        per_min = round(60.0 / cfg.tick_s)
        n = self.n_minutes
        pad = n * per_min - self.n_ticks

        def by_minute(x: np.ndarray, how: str = "sum") -> np.ndarray:
            y = np.concatenate([x, np.full(pad, np.nan if how == "mean" else 0.0)])
            y = y.reshape(n, per_min)
            return np.nanmean(y, axis=1) if how == "mean" else y.sum(axis=1)

        arrivals = by_minute(s["arrivals"])
        errors = by_minute(s["rejected"] + s["backend"] + s["unavailable"])
        p = lh.quantiles_rows(self.minute_hist.astype(np.float64), cfg.slo_percentile / 100.0)
        p_ms = 1000.0 * p
        err_ratio = np.where(arrivals > 0, errors / np.maximum(arrivals, 1e-12), 0.0)
        scored = arrivals > 0
        lat_ok = ~(p_ms > cfg.slo_target_ms)  # NaN (no success) counts as within target
        met = scored & lat_ok & (err_ratio <= cfg.slo_error_max + 1e-12)
        minute_met = np.where(scored, met.astype(int), -1)
        gpu_hours = float(s["held"].sum()) * cfg.tick_s * cfg.gpus_per_replica / 3600.0
        succ = float(s["successes"].sum())
        busy_time = float(self.n_ticks * cfg.tick_s)
        return SimResult(
            scaler=self.scaler.name, trace=self.trace.name, engine=cfg.engine,
            startup_delay_s=cfg.startup_delay_s, slo_target_ms=cfg.slo_target_ms,
            slo_percentile=cfg.slo_percentile, minutes=n, scored=int(scored.sum()),
            met=int(met.sum()), gpu_hours=gpu_hours, cost=gpu_hours * cfg.price_per_gpu_hour,
            requests=float(s["arrivals"].sum()), errors=float(errors.sum()),
            scale_events=self.events, minute_rate=arrivals / 60.0,
            minute_held=by_minute(s["held"], "mean"), minute_ready=by_minute(s["ready"], "mean"),
            minute_latency_ms=p_ms, minute_error_ratio=err_ratio, minute_met=minute_met,
            mean_latency_ms=1000.0 * float(s["latency_sum"].sum()) / succ if succ else math.nan,
            mean_inflight=float(s["inflight"].mean()),
            throughput=float(s["dispatched"].sum()) / busy_time,
            wall_s=wall,
        )


def _slope(x: list[float], y: list[float]) -> float:
    """Least-squares slope of y over x (PromQL's ``deriv``); NaN with fewer than two points."""
    n = len(x)
    if n < 2 or not all(math.isfinite(v) for v in y):
        return math.nan
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    return sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sxx if sxx else math.nan


def simulate(trace: Trace, scaler: Scaler, cfg: SimConfig) -> SimResult:
    return Simulation(trace, scaler, cfg).run()
