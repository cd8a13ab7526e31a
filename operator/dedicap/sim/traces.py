"""Request traces for the simulator: read real ones, scale them, and make synthetic ones.

A :class:`Trace` is either a list of request arrivals (times in seconds from the trace's start,
optional per-request work) or a request *rate* over time (piecewise linear), from which
arrivals are drawn as a Poisson process. The simulator asks for the arrivals of one tick at a
time, so a rate trace of millions of requests never materialises.

Reading (``read_trace``) is generic: CSV or JSON Lines, column names given by options (or
guessed from common names), timestamps absolute (ISO date-times) or relative (seconds or
milliseconds), an optional work column (e.g. tokens, divided by ``work_per_unit``).
``read_window_rates`` reads per-window aggregate rates such as the ServeGen file; windows whose
rate is exactly zero are collection gaps, masked and bridged by interpolation.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TIME_COLUMNS = ("timestamp", "time", "arrival_time", "arrival", "ts", "t")
TimeUnit = str  # "auto" | "s" | "ms" | "datetime"


@dataclass(frozen=True)
class Trace:
    """Arrivals (``times``) or a piecewise-linear rate (``rate_t``, ``rate``) on [0, duration)."""

    name: str
    duration: float
    times: np.ndarray | None = None  # sorted arrival times, seconds
    work: np.ndarray | None = None  # per-request work units (1 = a calibrated request)
    rate_t: np.ndarray | None = None  # knots of the rate curve, seconds
    rate: np.ndarray | None = None  # requests/s at the knots
    mean_work: float = 1.0

    def rate_at(self, t: np.ndarray) -> np.ndarray:
        """Requests/s at times ``t`` (for arrival traces: the 60-s moving average)."""
        if self.rate is not None and self.rate_t is not None:
            return np.interp(t, self.rate_t, self.rate)
        assert self.times is not None
        lo = np.searchsorted(self.times, t - 30.0)
        hi = np.searchsorted(self.times, t + 30.0)
        return (hi - lo) / 60.0

    def tick_arrivals(
        self, t0: float, t1: float, count: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Arrival times in [t0, t1) (sorted) and their work (None: all 1).

        Arrival traces return their own requests (``count`` is theirs already); rate traces
        place ``count`` arrivals (from ``tick_counts``) by the rate's shape inside the tick."""
        if self.times is not None:
            lo, hi = np.searchsorted(self.times, [t0, t1])
            w = None if self.work is None else self.work[lo:hi]
            return self.times[lo:hi], w
        if count <= 0:
            return np.empty(0), None
        r0, r1 = self.rate_at(np.array([t0, t1]))
        u = rng.random(count)
        if abs(r1 - r0) > 1e-9 * max(r0, r1, 1.0):
            # inverse CDF of a linearly varying density on [t0, t1)
            a, b = r0, r1 - r0
            x = (-a + np.sqrt(a * a + b * u * (2 * a + b))) / b
            u = np.clip(x, 0.0, 1.0 - 1e-12)
        return np.sort(t0 + u * (t1 - t0)), None

    def expected_count(self, t0: float, t1: float) -> float:
        """Requests expected in [t0, t1): the integral of the piecewise-linear rate."""
        if self.rate_t is None:
            return float(self.rate_at(np.array([0.5 * (t0 + t1)]))[0] * (t1 - t0))
        inner = self.rate_t[(self.rate_t > t0) & (self.rate_t < t1)]
        t = np.concatenate([[t0], inner, [t1]])
        r = self.rate_at(t)
        return float(np.sum(0.5 * (r[:-1] + r[1:]) * np.diff(t)))

    def tick_counts(self, tick: float, rng: np.random.Generator) -> np.ndarray:
        """Arrivals per tick over the whole trace (what the fluid engine consumes)."""
        n_ticks = int(np.ceil(self.duration / tick))
        edges = np.arange(n_ticks + 1) * tick
        if self.times is not None:
            return np.diff(np.searchsorted(self.times, edges)).astype(np.float64)
        r = self.rate_at(edges)
        lam = 0.5 * (r[:-1] + r[1:]) * tick
        return rng.poisson(np.maximum(lam, 0.0)).astype(np.float64)

    def minute_rates(self) -> np.ndarray:
        """Mean requests/s of each whole or partial minute (expected, for rate traces)."""
        n = int(np.ceil(self.duration / 60.0))
        edges = np.minimum(np.arange(n + 1) * 60.0, self.duration)
        if self.times is not None:
            c = np.diff(np.searchsorted(self.times, edges))
        else:
            fine = np.linspace(0.0, self.duration, max(int(self.duration), 2) + 1)
            cum = np.concatenate([[0.0], np.cumsum(np.diff(fine) * 0.5 * (
                self.rate_at(fine[:-1]) + self.rate_at(fine[1:])))])
            c = np.diff(np.interp(edges, fine, cum))
        return c / np.maximum(np.diff(edges), 1e-9)

    @property
    def requests(self) -> float:
        if self.times is not None:
            return float(len(self.times))
        return self.expected_count(0.0, self.duration) if self.rate is not None else 0.0


def _open_rows(path: Path) -> Iterable[dict[str, str]]:
    text_head = path.open("r", encoding="utf-8").read(1).strip()
    if path.suffix.lower() in (".jsonl", ".ndjson") or text_head == "{":
        with path.open("r", encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    yield {k: str(v) for k, v in json.loads(line).items()}
    else:
        with path.open("r", encoding="utf-8", newline="") as f:
            yield from csv.DictReader(f)


def _pick(columns: Iterable[str], wanted: str | None, candidates: Iterable[str]) -> str:
    cols = list(columns)
    if wanted:
        for c in cols:
            if c == wanted or c.lower() == wanted.lower():
                return c
        raise ValueError(f"column {wanted!r} not in {cols}")
    lower = {c.lower(): c for c in cols}
    for cand in candidates:
        if cand in lower:
            return lower[cand]
    raise ValueError(f"no timestamp column among {cols}; name it with --time-column")


def parse_times(raw: list[str], unit: TimeUnit = "auto") -> np.ndarray:
    """Sorted seconds from the first arrival. ``unit``: auto, s, ms or datetime."""
    if not raw:
        return np.empty(0)
    return np.sort(_relative(raw, unit).astype(np.float64))


def read_trace(
    path: str | Path,
    time_column: str | None = None,
    time_unit: TimeUnit = "auto",
    work_column: str | None = None,
    work_per_unit: float = 1.0,
    name: str | None = None,
) -> Trace:
    """Read per-request arrivals from a CSV or JSONL file."""
    p = Path(path)
    rows = list(_open_rows(p))
    if not rows:
        raise ValueError(f"{p.name}: no rows")
    tcol = _pick(rows[0].keys(), time_column, TIME_COLUMNS)
    raw = [r[tcol] for r in rows]
    t_unsorted = _relative(raw, time_unit)
    order = np.argsort(t_unsorted, kind="stable")
    times = t_unsorted[order]
    work = None
    if work_column:
        wcol = _pick(rows[0].keys(), work_column, ())
        w = np.array([float(r[wcol] or 0.0) for r in rows]) / work_per_unit
        work = np.maximum(w[order], 1e-3)
    duration = float(times[-1]) + 1e-6 if len(times) else 0.0
    return Trace(
        name=name or p.stem, duration=duration, times=times, work=work,
        mean_work=float(work.mean()) if work is not None else 1.0,
    )


def _relative(raw: list[str], unit: TimeUnit) -> np.ndarray:
    """Seconds from the earliest timestamp, in the file's order."""
    if unit == "auto":
        try:
            float(raw[0])
            unit = "s"
        except ValueError:
            unit = "datetime"
    if unit == "datetime":
        stamps = np.array([s.strip().replace("Z", "") for s in raw], dtype="datetime64[ns]")
        return (stamps - stamps.min()).astype(np.int64) / 1e9
    if unit in ("s", "ms"):
        t = np.array([float(s) for s in raw]) * (1e-3 if unit == "ms" else 1.0)
        return t - t.min()
    raise ValueError(f"unknown time unit {unit!r} (auto, s, ms, datetime)")


def read_window_rates(
    path: str | Path,
    start_column: str = "window_start_s",
    width_column: str = "window_s",
    rate_column: str = "sum_rate_rps_over_clients",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(window starts s, widths s, rates req/s); zero-rate windows come back as NaN (gaps)."""
    rows = list(_open_rows(Path(path)))
    starts = np.array([float(r[start_column]) for r in rows])
    widths = np.array([float(r[width_column]) for r in rows])
    rates = np.array([float(r[rate_column]) for r in rows])
    rates[rates <= 0.0] = np.nan
    return starts, widths, rates


def rate_trace_from_windows(
    starts: np.ndarray, widths: np.ndarray, rates: np.ndarray, name: str,
    first: int = 0, count: int | None = None, scale: float = 1.0,
) -> Trace:
    """A smooth rate through the windows' centres (gaps bridged linearly), scaled by ``scale``."""
    idx = np.arange(len(rates))
    ok = np.isfinite(rates)
    if not ok.any():
        raise ValueError("every window is a gap")
    filled = np.interp(idx, idx[ok], rates[ok])
    sel = slice(first, None if count is None else first + count)
    s, w, r = starts[sel], widths[sel], filled[sel] * scale
    t0 = s[0]
    centres = s - t0 + w / 2.0
    duration = float(s[-1] - t0 + w[-1])
    knots_t = np.concatenate([[0.0], centres, [duration]])
    knots_r = np.concatenate([[r[0]], r, [r[-1]]])
    return Trace(name=name, duration=duration, rate_t=knots_t, rate=knots_r)


def scale_arrivals(trace: Trace, factor: float, smooth_s: float = 30.0) -> Trace:
    """Model a tenant ``factor`` times larger: Poisson arrivals at ``factor`` times the trace's
    rate, the rate being the arrivals' centred moving average over ``smooth_s`` seconds
    (k merged copies of a tenant's traffic look Poisson at the common rate; the trace's shape
    at the scale of ``smooth_s`` and above is kept)."""
    assert trace.times is not None
    step = min(5.0, smooth_s / 2.0)
    knots = np.arange(0.0, trace.duration + step, step)
    lo = np.searchsorted(trace.times, knots - smooth_s / 2.0)
    hi = np.searchsorted(trace.times, knots + smooth_s / 2.0)
    half = smooth_s / 2.0
    span = np.minimum(knots + half, trace.duration) - np.maximum(knots - half, 0.0)
    rate = (hi - lo) / np.maximum(span, 1e-9) * factor
    return Trace(
        name=f"{trace.name} x{factor:g}", duration=trace.duration, rate_t=knots, rate=rate,
        mean_work=trace.mean_work,
    )


def bursty_trace(
    minutes: int = 360, seed: int = 7, mean_rps: float = 1500.0, name: str = "bursty",
) -> Trace:
    """Synthetic on/off traffic: bursts (Poisson onsets, clustered into busy periods) of a few
    minutes at 5-15 times a low background, 20-s ramps, and empty minutes between.

    Built so that the per-minute peak/mean is above 4 and several minutes carry no request;
    ``mean_rps`` sets the size (the mean over the whole trace, empty minutes included)."""
    rng = np.random.default_rng(seed)
    step = 5.0
    t = np.arange(0.0, minutes * 60.0 + step, step)
    r = np.zeros_like(t)
    # background: on in random stretches, off (empty minutes) otherwise
    on = np.zeros(minutes, dtype=bool)
    m = 0
    while m < minutes:
        length = int(rng.integers(3, 25))
        on[m:m + length] = rng.random() < 0.7
        m += length
    minute_of = np.minimum((t // 60).astype(int), minutes - 1)
    r += np.where(on[minute_of], 1.0, 0.0)
    # busy periods with bursts
    n_busy = max(1, minutes // 90)
    for _ in range(n_busy):
        start = rng.uniform(0, minutes * 60.0 - 1800.0)
        busy_for = rng.uniform(1200.0, 2700.0)
        onset = start
        while onset < start + busy_for:
            dur = rng.uniform(60.0, 300.0)
            height = rng.uniform(5.0, 15.0)
            ramp = 20.0
            up = np.clip((t - onset) / ramp, 0.0, 1.0)
            down = np.clip((onset + dur - t) / ramp, 0.0, 1.0)
            r += height * np.minimum(up, down)
            onset += dur + rng.exponential(300.0)
    r *= mean_rps / max(float(np.trapz(r, t)) / (minutes * 60.0), 1e-9)
    return Trace(name=name, duration=minutes * 60.0, rate_t=t, rate=r)


def peak_to_mean(trace: Trace) -> float:
    m = trace.minute_rates()
    return float(m.max() / max(m.mean(), 1e-12))


def with_minute_noise(trace: Trace, cv: float, seed: int) -> Trace:
    """Multiply a rate trace by independent per-minute lognormal factors of mean 1 and
    coefficient of variation ``cv`` (minute-scale burstiness that 10-min windows average out)."""
    assert trace.rate is not None and trace.rate_t is not None
    if cv <= 0:
        return trace
    rng = np.random.default_rng(seed)
    t = np.arange(0.0, trace.duration + 60.0, 60.0)
    sigma = float(np.sqrt(np.log(1.0 + cv * cv)))
    factor = rng.lognormal(-0.5 * sigma * sigma, sigma, size=len(t))
    knots = np.union1d(trace.rate_t, t)
    return Trace(
        name=trace.name, duration=trace.duration, rate_t=knots,
        rate=np.interp(knots, trace.rate_t, trace.rate) * np.interp(knots, t, factor),
        mean_work=trace.mean_work,
    )


def servegen_run(
    path: str | Path, day: int, minutes: int = 1440, scale: float = 1.0, cv: float = 0.05,
    seed: int = 0,
) -> Trace:
    """A long run whose rate follows the ServeGen 10-min curve from ``day`` (0-based)."""
    starts, widths, rates = read_window_rates(path)
    per_day = round(86400.0 / float(widths[0]))
    count = int(np.ceil(minutes * 60.0 / float(widths[0])))
    tr = rate_trace_from_windows(starts, widths, rates, name=f"servegen day {day + 1}",
                                 first=day * per_day, count=count, scale=scale)
    return with_minute_noise(tr, cv, seed + day)
