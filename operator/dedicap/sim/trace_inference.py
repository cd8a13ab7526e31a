"""What a request trace's columns mean: the timestamp column and its unit, the token columns.

Pure: column names and values in, a :class:`TraceReading` (or a :class:`TraceReadingError` that
names the option to fix it) out. ``traces.read_trace`` does the file reading around it.

A trace read with the wrong unit is wrong by a factor of 1,000 in every figure that follows
(millisecond timestamps read as seconds turn one hour at 1,000 req/s into 41 days at 1 req/s),
so the unit of a numeric timestamp is inferred from three cues, in this order:

1. the column name: ``timestamp_ms``, ``arrival_time_s``, ``tsNanos``, ``time (us)`` say it;
2. the magnitude: values that are a date between 2000 and 2100 in exactly one unit are epoch
   times in that unit (seconds ~1.7e9, milliseconds ~1.7e12, microseconds, nanoseconds: the
   ranges do not overlap);
3. otherwise (times relative to some start), the reading must be *plausible*: a span between
   :data:`MIN_SPAN_S` and :data:`MAX_SPAN_S` and a mean rate between :data:`MIN_RATE` and
   :data:`MAX_RATE` requests/s. When exactly one unit gives a plausible reading it is taken;
   when none or several do, the reading is refused with the candidates listed and the
   ``--time-unit`` option named, rather than guessed.

A unit given with ``--time-unit`` is taken as it is (an implausible reading then only warns).
Date-time strings (ISO 8601) need no unit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

TIME_COLUMNS = ("timestamp", "time", "arrival_time", "arrival", "ts", "t", "start_time",
                "request_time", "created", "created_at")
UNITS: dict[str, float] = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}  # seconds per unit
TIME_UNITS = ("auto", *UNITS, "datetime")

# What a per-request trace worth planning a reservation for looks like. Shorter than five
# minutes, the policy and the SLO-minute scoring have nothing to work on; a year is far longer
# than any per-request trace published; a mean under one request per 100 s or over a million
# per second is not a tenant of a GPU reservation.
MIN_SPAN_S = 300.0
MAX_SPAN_S = 366 * 86400.0
MIN_RATE = 0.01
MAX_RATE = 1e6
EPOCH_MIN_S = 946_684_800.0  # 2000-01-01
EPOCH_MAX_S = 4_102_444_800.0  # 2100-01-01

_NAME_UNITS = {
    "s": "s", "sec": "s", "secs": "s", "second": "s", "seconds": "s",
    "ms": "ms", "msec": "ms", "msecs": "ms", "millis": "ms", "millisecond": "ms",
    "milliseconds": "ms",
    "us": "us", "usec": "us", "usecs": "us", "micros": "us", "microsecond": "us",
    "microseconds": "us",
    "ns": "ns", "nsec": "ns", "nanos": "ns", "nanosecond": "ns", "nanoseconds": "ns",
}
_TOKEN_NAME = re.compile(r"token|(^|_)len(gth)?($|_)|length$|prompt|completion|context|"
                         r"generated|input_len|output_len", re.IGNORECASE)


class TraceReadingError(ValueError):
    """The trace cannot be read as it stands; the message says which option fixes it."""


@dataclass(frozen=True)
class Candidate:
    """One way to read the timestamps: their unit, the span and rate it implies."""

    unit: str
    span_s: float
    mean_rps: float

    @property
    def plausible(self) -> bool:
        return (MIN_SPAN_S <= self.span_s <= MAX_SPAN_S
                and MIN_RATE <= self.mean_rps <= MAX_RATE)

    def describe(self) -> str:
        return f"{self.unit}: {human_span(self.span_s)}, mean {self.mean_rps:.4g} req/s"


@dataclass(frozen=True)
class TraceReading:
    """How a trace file was read, to be shown before anything is replayed."""

    source: str
    layout: str  # "CSV with a header", "CSV without a header", "JSON lines"
    columns: tuple[str, ...]
    time_column: str
    unit: str  # "s" | "ms" | "us" | "ns" | "datetime"
    origin: str  # "epoch" | "relative" | "date-time"
    why: str  # which cue decided the unit
    requests: int
    span_s: float
    mean_rps: float
    peak_rps_1min: float
    start: str | None = None  # the first arrival, for epoch and date-time stamps
    token_columns: tuple[tuple[str, float], ...] = ()  # (name, mean)
    work_column: str | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> str:
        start = f", from {self.start}" if self.start else ""
        unit = "ISO date-times" if self.unit == "datetime" else f"{self.origin} {self.unit}"
        lines = [
            f"read {self.source}: {self.layout}, columns {', '.join(self.columns)}",
            f"  time: column {self.time_column!r} as {unit} ({self.why}){start}",
            f"  {self.requests} requests over {human_span(self.span_s)}: "
            f"mean {self.mean_rps:.4g} req/s, peak minute {self.peak_rps_1min:.4g} req/s",
        ]
        if self.token_columns:
            toks = ", ".join(f"{n} (mean {m:.0f})" for n, m in self.token_columns)
            used = (f"work from {self.work_column!r}" if self.work_column
                    else "not used as work (see --work-column)")
            lines.append(f"  tokens: {toks}; {used}")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        return {
            "source": self.source, "layout": self.layout, "columns": list(self.columns),
            "time_column": self.time_column, "unit": self.unit, "origin": self.origin,
            "why": self.why, "requests": self.requests, "span_s": self.span_s,
            "mean_rps": self.mean_rps, "peak_rps_1min": self.peak_rps_1min,
            "start": self.start, "token_columns": dict(self.token_columns),
            "work_column": self.work_column, "warnings": list(self.warnings),
        }


def human_span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def pick_time_column(columns: Sequence[str], wanted: str | None) -> str:
    """The timestamp column: the one named (by name, any case, or 1-based position), or the
    first of the usual names."""
    cols = list(columns)
    if wanted:
        for c in cols:
            if c == wanted or c.lower() == wanted.lower():
                return c
        raise TraceReadingError(f"--time-column {wanted!r} is not a column; columns: {cols}")
    lower = {c.lower(): c for c in cols}
    # a usual name with its unit beside it counts too: timestamp_ms, arrival_time (s), tsNanos
    stripped = {"_".join(_words(c)[:-1]): c for c in cols
                if len(_words(c)) > 1 and _words(c)[-1] in _NAME_UNITS}
    for cand in TIME_COLUMNS:
        if cand in lower:
            return lower[cand]
        if cand in stripped:
            return stripped[cand]
    raise TraceReadingError(
        f"no timestamp column among {cols} (looked for {', '.join(TIME_COLUMNS)}); "
        "name it with --time-column")


def _words(column: str) -> list[str]:
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", column)
    return [w.lower() for w in re.split(r"[^A-Za-z]+", spaced) if w]


def unit_from_name(column: str) -> str | None:
    """The unit a column's name states (``timestamp_ms``, ``arrivalTimeSec``), if any."""
    words = _words(column)
    # the unit is a suffix or a parenthesised word: "t" alone is the usual time name, not a unit
    for w in reversed(words[1:]):
        if w in _NAME_UNITS:
            return _NAME_UNITS[w]
    return None


def epoch_unit(values: np.ndarray) -> str | None:
    """The unit in which every value is a date between 2000 and 2100, if there is one."""
    lo, hi = float(values.min()), float(values.max())
    for unit, sec in UNITS.items():
        if lo * sec >= EPOCH_MIN_S and hi * sec <= EPOCH_MAX_S:
            return unit
    return None


def candidates(values: np.ndarray) -> list[Candidate]:
    """Every unit's reading of numeric timestamps."""
    n = len(values)
    raw_span = float(values.max() - values.min()) if n else 0.0
    out = []
    for unit, sec in UNITS.items():
        span = raw_span * sec
        out.append(Candidate(unit, span, n / span if span > 0 else math.inf))
    return out


def infer_unit(column: str, values: np.ndarray, given: str = "auto"
               ) -> tuple[str, str, str, tuple[str, ...]]:
    """(unit, origin, why, warnings) for numeric timestamps ``values`` of ``column``.

    Raises :class:`TraceReadingError` naming ``--time-unit`` when the reading is implausible
    or ambiguous (module docstring)."""
    if len(values) == 0:
        raise TraceReadingError(f"column {column!r} holds no timestamps")
    if not np.all(np.isfinite(values)):
        bad = int(np.sum(~np.isfinite(values)))
        raise TraceReadingError(f"column {column!r}: {bad} timestamps are empty or not numbers; "
                                "every request needs its time (is --time-column right?)")
    cands = {c.unit: c for c in candidates(values)}
    epoch = epoch_unit(values)
    if given != "auto":
        if given not in UNITS:
            raise TraceReadingError(
                f"--time-unit {given!r} does not fit numeric timestamps; use one of "
                f"{', '.join(UNITS)} (or auto)")
        c = cands[given]
        warn = () if c.plausible else (
            f"the reading {c.describe()} is outside what a request trace usually is "
            f"({human_span(MIN_SPAN_S)}..{human_span(MAX_SPAN_S)}, {MIN_RATE:g}..{MAX_RATE:g} "
            "req/s); kept because --time-unit says so",)
        return given, "epoch" if epoch == given else "relative", "given by --time-unit", warn
    options = "; ".join(c.describe() for c in cands.values())
    named = unit_from_name(column)
    if named is not None:
        unit, why = named, f"the column name says {named}"
        origin = "epoch" if epoch == named else "relative"
    elif epoch is not None:
        unit, why, origin = epoch, "the values are epoch dates in this unit", "epoch"
    else:
        plausible = [c for c in cands.values() if c.plausible]
        if len(plausible) > 1:
            raise TraceReadingError(
                f"column {column!r}: the timestamps' unit is ambiguous; readings that look like "
                f"a request trace: {'; '.join(c.describe() for c in plausible)}. "
                "Say which with --time-unit (s, ms, us or ns)")
        if not plausible:
            raise TraceReadingError(
                f"column {column!r}: no unit gives a plausible request trace ({options}); a "
                f"trace spans {human_span(MIN_SPAN_S)} to {human_span(MAX_SPAN_S)} at "
                f"{MIN_RATE:g} to {MAX_RATE:g} req/s. Check the column (--time-column) or "
                "force a unit with --time-unit")
        unit = plausible[0].unit
        why = "the only unit giving a plausible span and rate; others: " + "; ".join(
            c.describe() for c in cands.values() if c.unit != unit)
        origin = "relative"
    c = cands[unit]
    if not c.plausible:
        raise TraceReadingError(
            f"column {column!r} read as {why}: {c.describe()}, which is not a plausible request "
            f"trace ({human_span(MIN_SPAN_S)}..{human_span(MAX_SPAN_S)}, {MIN_RATE:g}.."
            f"{MAX_RATE:g} req/s). Other readings: {options}. Force one with --time-unit")
    return unit, origin, why, ()


def token_columns(columns: Mapping[str, np.ndarray], exclude: str) -> tuple[tuple[str, float],
                                                                            ...]:
    """Numeric columns whose names say they count tokens (``input_length``, ``ContextTokens``)."""
    out = []
    for name, values in columns.items():
        if name == exclude or not _TOKEN_NAME.search(name):
            continue
        if values.dtype.kind in "iuf" and len(values):
            out.append((name, float(np.nanmean(values))))
    return tuple(out)


def minute_peak(times_s: np.ndarray) -> float:
    """The highest count of any minute from the first arrival, per second (a last, partial
    minute counts over a whole one, so a few stragglers do not make a peak)."""
    if len(times_s) == 0:
        return 0.0
    minute = ((times_s - times_s[0]) // 60.0).astype(np.int64)
    return float(np.bincount(minute).max() / 60.0)
