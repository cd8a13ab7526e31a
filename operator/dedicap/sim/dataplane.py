"""Simulated Triton replicas behind a Service: two engines with one interface.

``ExactDataPlane`` follows every request. The Service spreads requests uniformly at random over
the ready replicas (kube-proxy); each replica runs the dynamic batcher of
:mod:`dedicap.sim.service` event by event: batch dispatch at ``max(free_at, min(oldest +
max_queue_delay, arrival of the max_batch-th request))``, queue timeout -> ``REJECTED``, a
removed replica stops receiving requests and drains its queue before it is gone.

``FluidDataPlane`` is the aggregate approximation used for long, high-rate runs (days at
thousands of requests/s), where following requests one by one costs too much. Per tick it keeps
one pooled backlog for the ready replicas: the tick's arrivals are split evenly, what exceeds
the replicas' saturated throughput joins the backlog, and backlog older than the queue timeout
is rejected. The latency distribution of a tick comes from a *stationary table* measured with
the exact engine: one replica fed Poisson arrivals at a grid of rates (a Poisson stream split
at random stays Poisson), giving the quantile function of latency, the mean batch size, the
busy fraction and the queue time at each rate; a backlog adds its waiting time on top of the
saturated row. What it leaves out: the uneven queues of replicas right after a scale event
(new replicas share the pooled backlog at once) and sub-second correlation of arrivals beyond
Poisson. ``tests/unit/test_sim_engines.py`` checks that both engines agree on attainment and
p95 on a common trace.
"""

from __future__ import annotations

import functools
import math
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

import numpy as np

from dedicap.sim import latency as lh
from dedicap.sim.service import ServiceModel

INF = math.inf


@dataclass
class TickStats:
    arrivals: float = 0.0
    successes: float = 0.0
    rejected: float = 0.0  # queue timeout (Triton REJECTED)
    backend: float = 0.0  # model errors (Triton BACKEND)
    unavailable: float = 0.0  # no ready replica behind the Service (never reaches Triton)
    latency_sum: float = 0.0  # seconds, over successes
    queue_sum: float = 0.0  # seconds waited in queue, over dispatched requests
    compute_sum: float = 0.0  # seconds of batch compute, over dispatched requests
    dispatched: float = 0.0
    batches: float = 0.0
    busy: float = 0.0  # replica-seconds spent computing
    queue_depth: float = 0.0  # requests waiting at the end of the tick (all replicas)
    inflight: float = 0.0  # waiting + being computed at the end of the tick
    finished_draining: list[int] = field(default_factory=list)


class _Replica:
    __slots__ = ("free_at", "in_service", "q", "w")

    def __init__(self) -> None:
        self.q: list[float] = []
        self.w: list[float] | None = None
        self.free_at = 0.0
        self.in_service = 0


def run_batcher(
    rep: _Replica, t_end: float, model: ServiceModel, out: TickStats,
    fins: list[float], starts: list[int], ends: list[int],
) -> int:
    """Dispatch the replica's batches that start before ``t_end``; returns how many requests
    left the queue (dispatched or rejected), whose positions ``fins``/``starts``/``ends`` name."""
    q = rep.q
    n = len(q)
    w = rep.w
    i = 0
    free = rep.free_at
    big_b = model.max_batch
    delay = model.max_queue_delay
    timeout = INF if model.queue_timeout is None else model.queue_timeout
    c0, c1 = model.t0, model.t1
    rejected = 0
    busy = 0.0
    batches = 0
    comp = 0.0
    queued = 0.0
    last_b = 0
    while i < n:
        head = q[i]
        k = i + big_b - 1
        d = head + delay
        if k < n and q[k] < d:
            d = q[k]
        if free > d:
            d = free
        if d >= t_end:
            break
        if d - head > timeout:
            j = bisect_left(q, d - timeout, i, n)
            rejected += j - i
            i = j
            continue
        j = bisect_right(q, d, i, min(n, i + big_b))
        b = j - i
        work = float(b) if w is None else sum(w[i:j])
        s = c0 + c1 * work
        fin = d + s
        fins.append(fin)
        starts.append(i)
        ends.append(j)
        busy += s
        batches += 1
        comp += s * b
        queued += b * d - math.fsum(q[i:j])
        free = fin
        last_b = b
        i = j
    out.rejected += rejected
    out.busy += busy
    out.batches += batches
    out.compute_sum += comp
    out.queue_sum += queued
    rep.free_at = free
    if free > t_end:
        rep.in_service = last_b or rep.in_service
    else:
        rep.in_service = 0
    return i


class ExactDataPlane:
    """Every request, every batch (see the module docstring)."""

    def __init__(self, model: ServiceModel, rng: np.random.Generator,
                 backend_error_ratio: float = 0.0) -> None:
        self.model = model
        self.rng = rng
        self.backend_error_ratio = backend_error_ratio
        self.replicas: dict[int, _Replica] = {}

    def add_replica(self, rid: int, t: float) -> None:
        rep = _Replica()
        rep.free_at = t
        self.replicas[rid] = rep

    def step(
        self, t0: float, t1: float, times: np.ndarray, work: np.ndarray | None,
        ready: list[int], draining: list[int], hists: list[np.ndarray],
    ) -> TickStats:
        st = TickStats(arrivals=float(len(times)))
        if ready:
            assign = self.rng.integers(len(ready), size=len(times))
            order = np.argsort(assign, kind="stable")
            counts = np.bincount(assign, minlength=len(ready))
            bounds = np.concatenate([[0], np.cumsum(counts)])
            sorted_t = times[order]
            sorted_w = None if work is None else work[order]
        else:
            st.unavailable = float(len(times))
        lat_parts: list[np.ndarray] = []
        for pos, rid in enumerate(ready):
            rep = self.replicas[rid]
            lo, hi = bounds[pos], bounds[pos + 1]
            if hi > lo:
                rep.q.extend(sorted_t[lo:hi].tolist())
                if sorted_w is not None:
                    if rep.w is None:
                        rep.w = [1.0] * (len(rep.q) - (hi - lo))
                    rep.w.extend(sorted_w[lo:hi].tolist())
            self._process(rep, t1, st, lat_parts)
        for rid in draining:
            rep = self.replicas[rid]
            self._process(rep, t1, st, lat_parts)
            if not rep.q and rep.free_at <= t1:
                st.finished_draining.append(rid)
                del self.replicas[rid]
        lat = np.concatenate(lat_parts) if lat_parts else np.empty(0)
        done = float(len(lat))
        st.dispatched = done
        if self.backend_error_ratio > 0 and done > 0:
            st.backend = float(self.rng.binomial(int(done), self.backend_error_ratio))
        st.successes = done - st.backend
        st.latency_sum = float(lat.sum()) * (st.successes / done if done else 0.0)
        for h in hists:
            lh.add(h, lat, 1.0 - (st.backend / done if done else 0.0))
        for rid in ready:
            rep = self.replicas[rid]
            st.queue_depth += len(rep.q)
            st.inflight += len(rep.q) + rep.in_service
        return st

    def _process(
        self, rep: _Replica, t1: float, st: TickStats, lat_parts: list[np.ndarray]
    ) -> None:
        if not rep.q:
            if rep.free_at <= t1:
                rep.in_service = 0
            return
        fins: list[float] = []
        starts: list[int] = []
        ends: list[int] = []
        used = run_batcher(rep, t1, self.model, st, fins, starts, ends)
        if fins:
            q_arr = np.asarray(rep.q[:used])
            sizes = np.asarray(ends) - np.asarray(starts)
            first = np.repeat(np.asarray(starts), sizes)
            offset = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
            lat_parts.append(np.repeat(np.asarray(fins), sizes) - q_arr[first + offset])
        if used:
            del rep.q[:used]
            if rep.w is not None:
                del rep.w[:used]

    def remove_replica(self, rid: int) -> None:
        """Stop routing to ``rid``; it drains (the caller passes it in ``draining``)."""

    def drop_replica(self, rid: int) -> None:
        """A replica that never became ready is gone at once."""
        self.replicas.pop(rid, None)


# ----- the fluid engine ---------------------------------------------------------------------

# Quantile levels of the stationary latency distribution, denser in the tail, with weights.
_LEVEL_EDGES = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94,
                         0.95, 0.96, 0.97, 0.98, 0.99, 0.995, 0.999, 1.0])
LEVELS = 0.5 * (_LEVEL_EDGES[:-1] + _LEVEL_EDGES[1:])
LEVEL_WEIGHTS = np.diff(_LEVEL_EDGES)


@dataclass(frozen=True)
class StationaryTable:
    rates: np.ndarray  # per-replica offered rate, req/s
    latency_q: np.ndarray  # [rate, level] seconds
    mean_batch: np.ndarray
    busy: np.ndarray  # fraction of time computing
    mean_queue: np.ndarray  # seconds
    mean_latency: np.ndarray  # seconds
    mean_compute: np.ndarray  # seconds of batch compute per request (request-weighted, as Triton)
    capacity: float  # saturated req/s of one replica

    def row(self, rate: float) -> tuple[np.ndarray, float, float, float, float, float]:
        """Interpolated (latency quantiles, batch, busy, queue s, mean latency s, compute s
        per request) at ``rate``."""
        r = self.rates
        if rate <= r[0]:
            k, f = 0, 0.0
        elif rate >= r[-1]:
            k, f = len(r) - 2, 1.0
        else:
            k = int(np.searchsorted(r, rate)) - 1
            f = (rate - r[k]) / (r[k + 1] - r[k])
        def mix(a: np.ndarray) -> np.ndarray:
            return a[k] * (1 - f) + a[k + 1] * f
        return (mix(self.latency_q), float(mix(self.mean_batch)), float(mix(self.busy)),
                float(mix(self.mean_queue)), float(mix(self.mean_latency)),
                float(mix(self.mean_compute)))


@functools.lru_cache(maxsize=16)
def stationary_table(model: ServiceModel, seed: int = 1, requests: int = 60000) -> StationaryTable:
    """Measure one replica of ``model`` under Poisson load at a grid of rates (exact engine)."""
    rng = np.random.default_rng(seed)
    mu = model.capacity()
    fracs = np.concatenate([np.linspace(0.01, 0.8, 17), np.linspace(0.82, 0.98, 9), [0.99]])
    rows_q, batch, busy, queue, mean_lat, comp = [], [], [], [], [], []
    no_timeout = model.with_timeout(None)
    for fr in fracs:
        rate = fr * mu
        n = requests
        times = np.cumsum(rng.exponential(1.0 / rate, size=n))
        rep = _Replica()
        rep.q = times.tolist()
        st = TickStats()
        fins: list[float] = []
        starts: list[int] = []
        ends: list[int] = []
        used = run_batcher(rep, INF, no_timeout, st, fins, starts, ends)
        sizes = np.asarray(ends) - np.asarray(starts)
        fin_rep = np.repeat(np.asarray(fins), sizes)
        lat = fin_rep - times[:used]
        warm = n // 10
        lat = lat[warm:]
        rows_q.append(np.quantile(lat, LEVELS))
        batch.append(float(sizes.mean()))
        horizon = float(fin_rep[-1] - times[0])
        busy.append(min(st.busy / horizon, 1.0))
        queue.append(st.queue_sum / max(float(sizes.sum()), 1.0))
        mean_lat.append(float(lat.mean()))
        comp.append(st.compute_sum / max(float(sizes.sum()), 1.0))
    return StationaryTable(
        rates=fracs * mu, latency_q=np.array(rows_q), mean_batch=np.array(batch),
        busy=np.array(busy), mean_queue=np.array(queue), mean_latency=np.array(mean_lat),
        mean_compute=np.array(comp), capacity=mu,
    )


class FluidDataPlane:
    """Pooled fluid backlog + the stationary table (see the module docstring)."""

    def __init__(self, model: ServiceModel, rng: np.random.Generator,
                 backend_error_ratio: float = 0.0, mean_work: float = 1.0) -> None:
        if mean_work != 1.0:
            from dataclasses import replace as _replace
            model = _replace(model, t1=model.t1 * mean_work)
        self.model = model
        self.table = stationary_table(model)
        self.rng = rng
        self.backend_error_ratio = backend_error_ratio
        self.backlog = 0.0

    def add_replica(self, rid: int, t: float) -> None:
        pass

    def remove_replica(self, rid: int) -> None:
        pass

    def drop_replica(self, rid: int) -> None:
        pass

    def step_count(
        self, dt: float, arrivals: float, n_ready: int, hists: list[np.ndarray]
    ) -> TickStats:
        st = TickStats(arrivals=arrivals)
        if n_ready <= 0:
            st.unavailable = arrivals
            return st
        tab = self.table
        mu = tab.capacity * n_ready
        q0 = self.backlog
        total = q0 + arrivals
        served = min(total, mu * dt)
        q1 = total - served
        timeout = self.model.queue_timeout
        if timeout is not None and q1 > mu * timeout:
            st.rejected = q1 - mu * timeout
            q1 = mu * timeout
        self.backlog = q1
        per_replica = arrivals / dt / n_ready
        if q0 < 1e-9 and q1 < 1e-9:
            lat_q, b, busy, qtime, mlat, compute = tab.row(per_replica)
            extra = 0.0
        else:
            lat_q, b, busy, qtime, mlat, compute = tab.row(tab.rates[-1])
            busy = 1.0
            extra = 0.5 * (q0 + q1) / mu
        st.dispatched = served
        st.backend = served * self.backend_error_ratio
        st.successes = served - st.backend
        st.latency_sum = st.successes * (mlat + extra)
        st.queue_sum = served * (qtime + extra)
        st.compute_sum = served * compute
        st.batches = served / max(b, 1.0)
        st.busy = busy * n_ready * dt
        # Little's law: requests waiting = rate x queue time, in flight = rate x latency
        st.queue_depth = per_replica * n_ready * qtime + q1
        st.inflight = per_replica * n_ready * (mlat + extra) + q1
        if st.successes > 0:
            w = LEVEL_WEIGHTS * st.successes
            for h in hists:
                lh.add(h, lat_q + extra, w)
        return st
