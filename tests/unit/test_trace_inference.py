"""Traces in every supported shape are read right, or refused with the option that fixes them."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dedicap.sim import plan
from dedicap.sim.trace_inference import (
    Candidate,
    TraceReadingError,
    infer_unit,
    unit_from_name,
)
from dedicap.sim.traces import load_trace

EPOCH_S = 1_700_000_000.0  # 2023-11-14
FORMS = {
    # form: (unit written, epoch, integers)
    "relative s": ("s", False, False),
    "relative ms": ("ms", False, True),
    "relative us": ("us", False, True),
    "epoch s": ("s", True, False),
    "epoch ms": ("ms", True, True),
    "epoch ns": ("ns", True, True),
    "iso": ("datetime", True, False),
}
SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def write_trace(path: Path, times_s: np.ndarray, form: str, layout: str, named: bool,
                tokens: bool, seed: int = 0) -> Path:
    """Arrivals ``times_s`` (seconds from the first) written as ``form`` in ``layout``."""
    unit, epoch, ints = FORMS[form]
    t = times_s + (EPOCH_S if epoch else 0.0)
    if unit == "datetime":
        stamps = np.datetime64(int(EPOCH_S), "s") + (times_s * 1e9).astype("timedelta64[ns]")
        values = [str(x).replace("T", " ") for x in stamps]
    else:
        raw = t / SECONDS[unit]
        values = [str(round(x)) for x in raw] if ints else [f"{x:.6f}" for x in raw]
    col = f"timestamp_{unit}" if named and unit != "datetime" else "timestamp"
    rng = np.random.default_rng(seed)
    inp = rng.integers(10, 4000, len(values))
    out = rng.integers(1, 800, len(values))
    rows = []
    for i, v in enumerate(values):
        row = {col: v}
        if tokens:
            row.update(input_length=str(inp[i]), output_length=str(out[i]))
        rows.append(row)
    if layout == "jsonl":
        path = path.with_suffix(".jsonl")
        path.write_text("\n".join(json.dumps({k: (x if unit == "datetime" and k == col
                                                  else float(x) if "." in x else int(x))
                                              for k, x in r.items()}) for r in rows) + "\n")
    else:
        path = path.with_suffix(".csv")
        lines = [] if layout == "csv-headerless" else [",".join(rows[0])]
        lines += [",".join(r.values()) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    return path


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    form=st.sampled_from(sorted(FORMS)),
    layout=st.sampled_from(["csv", "csv-headerless", "jsonl"]),
    named=st.booleans(),
    tokens=st.booleans(),
    span_min=st.floats(10.0, 3 * 1440.0),
    n=st.integers(200, 3000),
    seed=st.integers(0, 2**16),
)
def test_every_shape_is_read_right_or_refused_naming_the_option(
        form: str, layout: str, named: bool, tokens: bool, span_min: float, n: int,
        seed: int) -> None:
    rng = np.random.default_rng(seed)
    span = span_min * 60.0
    times = np.sort(np.concatenate([[0.0, span], rng.uniform(0.0, span, n - 2)]))
    unit, epoch, _ = FORMS[form]
    with tempfile.TemporaryDirectory() as d:
        path = write_trace(Path(d) / "trace", times, form, layout, named, tokens, seed)
        truth = Candidate(unit, span, n / span)
        try:
            tr, reading = load_trace(path)
        except TraceReadingError as err:
            assert "--time-unit" in str(err)
            if unit != "datetime":
                assert truth.describe() in str(err)  # the right reading is among those listed
            # only an implausible trace, or a relative number without a unit in its name
            # (which may be ambiguous), is refused
            assert not truth.plausible or not (epoch or named), (form, named, str(err))
            return
        assert truth.plausible or unit == "datetime" or named
    assert reading.requests == n
    assert reading.span_s == pytest.approx(span, rel=1e-3, abs=1e-3)
    assert reading.mean_rps == pytest.approx(n / span, rel=1e-3)
    assert reading.unit == unit
    assert reading.origin == ("date-time" if unit == "datetime" else
                              "epoch" if epoch else "relative")
    assert tr.times is not None and tr.times[0] == 0.0
    assert tr.duration == pytest.approx(span, rel=1e-3)
    if tokens and layout != "csv-headerless":
        assert [c for c, _ in reading.token_columns] == ["input_length", "output_length"]
    assert reading.time_column in reading.describe()


def test_millisecond_jsonl_is_corrected_and_the_inference_printed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The public "conv" shape: 59 minutes, 12,031 requests, integer milliseconds."""
    rng = np.random.default_rng(1)
    times = np.sort(rng.uniform(0, 59 * 60.0, 12_031))
    path = write_trace(tmp_path / "conv", times - times[0], "relative ms", "jsonl", False, True)
    rc = plan.main(["--trace", str(path), "--scale", "20", "--slo", "p95=100ms",
                    "--no-search"])
    assert rc == 0
    text = capsys.readouterr().out
    first = text.splitlines()[:4]
    assert "JSON lines" in first[0] and "timestamp, input_length, output_length" in first[0]
    assert "'timestamp' as relative ms" in first[1] and "s: 4" in first[1]  # 41 days, refused
    assert "12031 requests over 59.0 min: mean 3.39" in first[2]
    assert "input_length" in first[3]
    assert "replaying conv x20: 59 min" in text
    # read as seconds on purpose, it is kept but flagged
    capsys.readouterr()
    assert plan.main(["--trace", str(path), "--time-unit", "s", "--slo", "p95=100ms",
                      "--no-search", "--minutes", "10"]) == 0
    assert "warning: the reading s: 41.0 days" in capsys.readouterr().out


def test_ambiguous_and_implausible_readings_are_refused(tmp_path: Path) -> None:
    # 10 minutes at 100 req/s in milliseconds: also 6.9 days at 0.1 req/s in seconds
    times = np.linspace(0.0, 600.0, 60_000)
    path = write_trace(tmp_path / "amb", times, "relative ms", "csv", False, False)
    with pytest.raises(TraceReadingError, match=r"ambiguous.*ms: 10.0 min.*--time-unit"):
        load_trace(path)
    tr, reading = load_trace(path, time_unit="ms")
    assert reading.why == "given by --time-unit" and tr.duration == pytest.approx(600, rel=1e-3)
    # 20 requests over 3 seconds: nothing to plan in any unit
    short = write_trace(tmp_path / "short", np.linspace(0, 3, 20), "relative s", "csv",
                        False, False)
    with pytest.raises(TraceReadingError, match="no unit gives a plausible"):
        load_trace(short)
    with pytest.raises(TraceReadingError, match="--time-column"):
        infer_unit("t", np.array([np.nan, 1.0]))


def test_unit_from_the_column_name() -> None:
    assert unit_from_name("timestamp_ms") == "ms"
    assert unit_from_name("arrivalTimeSec") == "s"
    assert unit_from_name("time (us)") == "us"
    assert unit_from_name("tsNanos") == "ns"
    assert unit_from_name("t") is None and unit_from_name("timestamp") is None


def test_headerless_csv_picks_the_sorted_column_and_plan_reports_the_cli_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(2)
    t = np.sort(rng.uniform(0, 1800, 5000))
    p = tmp_path / "h.csv"
    p.write_text("\n".join(f"{int(rng.integers(1, 9))},{x:.4f}" for x in t) + "\n")
    _tr, reading = load_trace(p)
    assert reading.layout == "CSV without a header" and reading.time_column == "2"
    assert reading.span_s == pytest.approx(t[-1] - t[0])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"timestamp": "yesterday"}\n')
    assert plan.main(["--trace", str(bad)]) == 2
    assert "--time-column" in capsys.readouterr().err
