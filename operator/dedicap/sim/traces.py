"""Request traces for the simulator: read real ones, scale them, and make synthetic ones.

A :class:`Trace` is either a list of request arrivals (times in seconds from the trace's start,
optional per-request work) or a request *rate* over time (piecewise linear), from which
arrivals are drawn as a Poisson process. The simulator asks for the arrivals of one tick at a
time, so a rate trace of millions of requests never materialises.

Reading (``load_trace``) is generic: CSV with or without a header, or JSON Lines (read with
Arrow: millions of rows in seconds); the timestamp column named by option or guessed from
common names; ISO date-times, epoch or relative numbers whose unit is named or inferred and
checked for plausibility (``trace_inference``); an optional work column (e.g. tokens, divided by
``work_per_unit``). It returns how it read the file beside the trace, to be shown first.
``read_window_rates`` reads per-window aggregate rates such as the ServeGen file; windows whose
rate is exactly zero are collection gaps, masked and bridged by interpolation.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dedicap.sim.trace_inference import (
    TIME_UNITS,
    UNITS,
    TraceReading,
    TraceReadingError,
    infer_unit,
    minute_peak,
    pick_time_column,
    token_columns,
)

TimeUnit = str  # "auto" | "s" | "ms" | "us" | "ns" | "datetime"


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
    # per minute: True where the source had no data (replayed bridged, left out of the scoring)
    gaps: np.ndarray | None = None

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


def _looks_like_data(field: str) -> bool:
    f = field.strip().strip('"')
    if not f:
        return False
    try:
        float(f)
        return True
    except ValueError:
        return bool(_DATE.match(f))


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _layout(path: Path) -> str:
    with path.open("r", encoding="utf-8") as f:
        head = f.read(4096)
    first = head.lstrip()
    if path.suffix.lower() in (".jsonl", ".ndjson") or first.startswith("{"):
        return "JSON lines"
    line = first.splitlines()[0] if first else ""
    fields = next(csv.reader([line]), [])
    if fields and all(_looks_like_data(x) for x in fields):
        return "CSV without a header"
    return "CSV with a header"


def _load_table(path: Path) -> tuple[str, dict[str, Any]]:
    """The file's columns as Arrow arrays, by name (1-based positions for a headerless CSV).

    Arrow's readers parse millions of rows in a second or two, where Python's csv/json modules
    took half a minute for a one-hour trace of 3.6 million requests."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.json as pa_json

    layout = _layout(path)
    try:
        if layout == "JSON lines":
            table = pa_json.read_json(path)
        else:
            headerless = layout == "CSV without a header"
            table = pa_csv.read_csv(path, read_options=pa_csv.ReadOptions(
                autogenerate_column_names=headerless))
            if headerless:
                table = table.rename_columns([str(i + 1) for i in range(table.num_columns)])
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise TraceReadingError(f"{path.name} is not readable as {layout}: {err}") from err
    if table.num_rows == 0:
        raise TraceReadingError(f"{path.name}: no rows")
    return layout, {name: table.column(name).combine_chunks() for name in table.column_names}


def _numeric(col: Any) -> np.ndarray | None:
    import pyarrow as pa

    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
    return None


def _datetimes(col: Any) -> np.ndarray | None:
    """ISO date-time stamps as datetime64[ns] (time zones honoured), or None."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_timestamp(col.type):
        ts = col
    elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        try:
            ts = pc.cast(col, pa.timestamp("ns"))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            try:
                return np.array([s.strip().replace("Z", "") for s in col.to_pylist()],
                                dtype="datetime64[ns]")
            except (ValueError, AttributeError):
                return None
    else:
        return None
    return np.asarray(ts.cast(pa.timestamp("ns")).to_numpy(zero_copy_only=False),
                      dtype="datetime64[ns]")


def _headerless_time_column(columns: dict[str, Any]) -> str:
    for name, col in columns.items():
        values = _numeric(col)
        if values is None:
            if _datetimes(col) is not None:
                return name
        elif len(values) and np.all(np.diff(values) >= 0):
            return name
    return next(iter(columns))


def load_trace(
    path: str | Path,
    time_column: str | None = None,
    time_unit: TimeUnit = "auto",
    work_column: str | None = None,
    work_per_unit: float = 1.0,
    name: str | None = None,
) -> tuple[Trace, TraceReading]:
    """Per-request arrivals from a CSV (with or without a header) or JSON-lines file, and how
    the file was read (``trace_inference``): the caller shows that before replaying anything.

    Raises :class:`TraceReadingError` with the option that fixes an unreadable, implausible or
    ambiguous file."""
    p = Path(path)
    if time_unit not in TIME_UNITS:
        raise TraceReadingError(f"--time-unit {time_unit!r}: use one of {', '.join(TIME_UNITS)}")
    layout, columns = _load_table(p)
    if layout == "CSV without a header" and not time_column:
        tcol = _headerless_time_column(columns)
        why_col = "no header: the first column of sorted times"
    else:
        tcol = pick_time_column(list(columns), time_column)
        why_col = ""
    col = columns[tcol]
    numeric = _numeric(col)
    start: str | None = None
    warnings: tuple[str, ...] = ()
    if numeric is not None and time_unit != "datetime":
        unit, origin, why, warnings = infer_unit(tcol, numeric, time_unit)
        seconds = (numeric - numeric.min()) * UNITS[unit]
        if origin == "epoch":
            first = np.datetime64(int(numeric.min() * UNITS[unit] * 1e9), "ns")
            start = np.datetime_as_string(first, unit="ms")
    else:
        stamps = _datetimes(col)
        if stamps is None or np.isnat(stamps).any():
            example = col.slice(0, 1).to_pylist()[0]
            raise TraceReadingError(
                f"column {tcol!r} holds neither numbers nor ISO date-times (e.g. {example!r}); "
                "name the timestamp column with --time-column")
        if time_unit not in ("auto", "datetime"):
            raise TraceReadingError(
                f"column {tcol!r} holds date-times; --time-unit {time_unit} applies to numbers")
        unit, origin, why = "datetime", "date-time", "ISO 8601 date-times"
        lo = stamps.min()
        seconds = (stamps - lo).astype(np.int64) / 1e9
        start = np.datetime_as_string(lo, unit="ms")
    if why_col:
        why = f"{why_col}; {why}"
    order = np.argsort(seconds, kind="stable")
    times = seconds[order]
    work = None
    wcol = None
    if work_column:
        wcol = pick_time_column(list(columns), work_column)
        w = _numeric(columns[wcol])
        if w is None:
            raise TraceReadingError(f"--work-column {work_column!r} is not numeric")
        work = np.maximum(np.nan_to_num(w[order]) / work_per_unit, 1e-3)
    duration = float(times[-1]) + 1e-6 if len(times) else 0.0
    trace = Trace(
        name=name or p.stem, duration=duration, times=times, work=work,
        mean_work=float(work.mean()) if work is not None else 1.0,
    )
    numeric_cols = {k: v for k, c in columns.items() if (v := _numeric(c)) is not None}
    span = float(times[-1] - times[0]) if len(times) else 0.0
    reading = TraceReading(
        source=p.name, layout=layout, columns=tuple(columns), time_column=tcol, unit=unit,
        origin=origin, why=why, requests=len(times), span_s=span,
        mean_rps=len(times) / span if span > 0 else math.inf,
        peak_rps_1min=minute_peak(times), start=start,
        token_columns=token_columns(numeric_cols, tcol), work_column=wcol, warnings=warnings,
    )
    return trace, reading


def read_trace(path: str | Path, **options: Any) -> Trace:
    """Per-request arrivals from a CSV or JSONL file (:func:`load_trace`'s options)."""
    return load_trace(path, **options)[0]


def _open_rows(path: Path) -> Iterable[dict[str, str]]:
    with path.open("r", encoding="utf-8", newline="") as f:
        yield from csv.DictReader(f)


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


def stretched_trace(
    base: Trace, stretch: float, mean_rps: float, start_s: float = 0.0,
    minutes: int | None = None, smooth_s: float = 0.5, name: str | None = None,
) -> Trace:
    """A large tenant whose traffic moves like ``base``'s second-scale arrivals, slowed down
    ``stretch`` times: the rate at ``t`` is ``base``'s arrival count around ``start_s +
    t/stretch`` (a centred moving average over ``smooth_s`` of ``base``'s seconds), scaled to
    ``mean_rps`` over the part returned (``minutes`` from ``start_s`` of ``base``, stretched).
    With ``stretch`` 60, one minute moves as one of ``base``'s seconds does: its clumps of
    requests become bursts of tens of seconds, at random, as often as they came. Arrivals are
    Poisson at that rate (many such tenants merged)."""
    assert base.times is not None
    span = base.duration * stretch - start_s * stretch
    duration = span if minutes is None else min(span, minutes * 60.0)
    step = min(5.0, smooth_s * stretch / 2.0)
    knots = np.arange(0.0, duration + step, step)
    centre = start_s + knots / stretch
    half = smooth_s / 2.0
    lo = np.searchsorted(base.times, centre - half)
    hi = np.searchsorted(base.times, centre + half)
    width = np.minimum(centre + half, base.duration) - np.maximum(centre - half, 0.0)
    rate = (hi - lo) / np.maximum(width, 1e-9)
    rate *= mean_rps / max(float(np.trapz(rate, knots)) / max(knots[-1], 1e-9), 1e-9)
    return Trace(name=name or f"{base.name} stretched x{stretch:g}", duration=duration,
                 rate_t=knots, rate=rate, mean_work=base.mean_work)


def heavy_tailed_bursts(
    minutes: int = 360, seed: int = 1, mean_rps: float = 2700.0, name: str | None = None,
) -> Trace:
    """Synthetic production-like bursts: a background that wanders slowly (a lognormal walk,
    10 % per 10 minutes) and bursts on top whose lengths (Pareto, shape 1.5, from 15 s, at most
    5 minutes) and gaps (Pareto, shape 1.2, from 30 s, at most 30 minutes) are heavy-tailed, as
    are their heights (lognormal, median 1.5x the background, at most 10x), with 5-s ramps.
    Most bursts last tens of seconds and come minutes apart; a few last minutes, or come
    after a long quiet stretch. ``mean_rps`` sets the size."""
    rng = np.random.default_rng(seed)
    duration = minutes * 60.0
    t = np.arange(0.0, duration + 1.0, 1.0)
    walk_t = np.arange(0.0, duration + 600.0, 600.0)
    walk = np.exp(np.cumsum(rng.normal(0.0, 0.1, size=len(walk_t))))
    r = np.interp(t, walk_t, walk)
    onset = float(rng.uniform(0.0, 120.0))
    while onset < duration:
        length = min(15.0 * (1.0 + rng.pareto(1.5)), 300.0)
        height = min(float(rng.lognormal(np.log(1.5), 0.7)), 10.0)
        ramp = min(5.0, length / 4.0)
        up = np.clip((t - onset) / ramp, 0.0, 1.0)
        down = np.clip((onset + length - t) / ramp, 0.0, 1.0)
        r += height * float(np.interp(onset, walk_t, walk)) * np.minimum(up, down)
        onset += length + min(30.0 * (1.0 + rng.pareto(1.2)), 1800.0)
    r *= mean_rps / max(float(np.trapz(r, t)) / duration, 1e-9)
    return Trace(name=name or f"heavy-tailed bursts #{seed}", duration=duration, rate_t=t,
                 rate=r)


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
