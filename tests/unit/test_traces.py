"""The generic trace reader and the synthetic traces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dedicap.sim.traces import (
    Trace,
    bursty_trace,
    heavy_tailed_bursts,
    peak_to_mean,
    rate_trace_from_windows,
    read_trace,
    read_window_rates,
    scale_arrivals,
    servegen_run,
    stretched_trace,
)


def test_csv_with_datetimes_and_tokens(tmp_path: Path) -> None:
    p = tmp_path / "azure.csv"
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                 "2023-11-16 18:15:46.6805900,374,44\n"
                 "2023-11-16 18:15:50.9951690,396,109\n"
                 "2023-11-16 18:15:46.1805900,512,1\n")
    tr = read_trace(p, work_column="ContextTokens", work_per_unit=256)
    assert tr.times is not None and tr.work is not None
    np.testing.assert_allclose(tr.times, [0.0, 0.5, 4.8145790], atol=1e-6)
    np.testing.assert_allclose(tr.work, [2.0, 374 / 256, 396 / 256])  # sorted with the times
    assert tr.requests == 3


def test_jsonl_relative_milliseconds_named_column(tmp_path: Path) -> None:
    p = tmp_path / "reqs.jsonl"
    p.write_text("\n".join(json.dumps({"arrived": t, "x": 1}) for t in (1000, 250, 4000)) + "\n")
    tr = read_trace(p, time_column="arrived", time_unit="ms")  # 3.75 s: no unit is plausible
    assert tr.times is not None
    np.testing.assert_allclose(tr.times, [0.0, 0.75, 3.75])
    assert tr.work is None and tr.mean_work == 1.0


def test_relative_seconds_guessed_column(tmp_path: Path) -> None:
    p = tmp_path / "r.csv"
    p.write_text("time,other\n10.5,a\n12,b\n")
    tr = read_trace(p, time_unit="s")  # 1.5 s is too short for any unit to be plausible
    assert tr.times is not None
    np.testing.assert_allclose(tr.times, [0.0, 1.5])


def test_unknown_columns_are_named_in_the_error(tmp_path: Path) -> None:
    p = tmp_path / "r.csv"
    p.write_text("when,other\n1,a\n")
    with pytest.raises(ValueError, match="when"):
        read_trace(p)
    with pytest.raises(ValueError, match="nope"):
        read_trace(p, time_column="nope")


def test_window_rates_mask_gaps_and_interpolate(tmp_path: Path) -> None:
    p = tmp_path / "sg.csv"
    rows = ["window_start_s,window_s,sum_rate_rps_over_clients,n_client_files"]
    rates = [100.0, 200.0, 0.0, 0.0, 500.0, 600.0]
    rows += [f"{i * 600},600,{r},5" for i, r in enumerate(rates)]
    p.write_text("\n".join(rows) + "\n")
    starts, widths, r = read_window_rates(p)
    assert np.isnan(r[2]) and np.isnan(r[3])
    tr = rate_trace_from_windows(starts, widths, r, "sg")
    assert tr.duration == 3600.0
    mid_gap = tr.rate_at(np.array([2.5 * 600 + 300]))[0]  # centre between windows 2 and 3
    assert 200.0 < mid_gap < 500.0  # bridged, not zero
    assert tr.rate_at(np.array([300.0]))[0] == pytest.approx(100.0)


def test_servegen_run_follows_the_curve(tmp_path: Path) -> None:
    p = tmp_path / "sg.csv"
    rows = ["window_start_s,window_s,sum_rate_rps_over_clients,n_client_files"]
    rows += [f"{i * 600},600,{1000 + 500 * np.sin(i / 10)},5" for i in range(400)]
    p.write_text("\n".join(rows) + "\n")
    tr = servegen_run(p, day=1, minutes=1000, scale=2.0, cv=0.05)
    assert tr.duration == pytest.approx(1000 * 60.0, abs=600)
    m = tr.minute_rates()
    assert len(m) >= 1000
    assert 1000 < m.mean() < 3000


def test_scaling_keeps_the_shape_and_multiplies_the_rate(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    times = np.sort(np.concatenate([rng.uniform(0, 600, 3000), rng.uniform(600, 1200, 600)]))
    p = tmp_path / "t.csv"
    p.write_text("t\n" + "\n".join(f"{x:.6f}" for x in times) + "\n")
    tr = read_trace(p)
    big = scale_arrivals(tr, 100.0)
    assert big.requests == pytest.approx(100 * len(times), rel=0.02)
    m = big.minute_rates()
    assert m[:9].mean() == pytest.approx(100 * 5.0, rel=0.1)
    assert m[11:19].mean() == pytest.approx(100 * 1.0, rel=0.1)
    counts = big.tick_counts(1.0, np.random.default_rng(1))
    assert counts.sum() == pytest.approx(big.requests, rel=0.01)
    ticks, _ = big.tick_arrivals(100.0, 101.0, 7, np.random.default_rng(2))
    assert len(ticks) == 7 and ticks.min() >= 100.0 and ticks.max() < 101.0


def test_bursty_trace_is_bursty() -> None:
    tr = bursty_trace(minutes=360, seed=3)
    m = tr.minute_rates()
    assert peak_to_mean(tr) > 4.0
    assert (m == 0).sum() >= 5  # empty minutes
    assert m.mean() == pytest.approx(1500.0, rel=0.02)


def test_stretched_trace_moves_as_the_base_trace_s_seconds() -> None:
    # a base trace with a clump of 20 requests in one second, every 10 s, one a second between
    times = np.sort(np.concatenate([np.arange(0.0, 600.0, 1.0),
                                    np.repeat(np.arange(5.0, 600.0, 10.0), 20)
                                    + np.tile(np.linspace(0, 0.9, 20), 60)]))
    base = Trace(name="clumps", duration=600.0, times=times)
    tr = stretched_trace(base, stretch=60.0, mean_rps=2700.0, start_s=100.0, minutes=60,
                         smooth_s=1.0)
    assert tr.duration == 3600.0
    minutes = tr.minute_rates()
    assert minutes.mean() == pytest.approx(2700.0, rel=0.02)
    # one clump every ten of the base's seconds: a burst every ten minutes, of a minute or
    # two (the clump, widened by the 1-s moving average)
    hot = (minutes > 2 * np.median(minutes)).astype(int)
    starts = np.flatnonzero(np.diff(np.concatenate([[0], hot])) == 1)
    assert len(starts) == 6 and set(np.diff(starts)) == {10}
    assert hot.sum() <= 3 * 6 and peak_to_mean(tr) > 4


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_heavy_tailed_bursts_look_like_production_traffic(seed: int) -> None:
    tr = heavy_tailed_bursts(minutes=360, seed=seed, mean_rps=2700.0)
    again = heavy_tailed_bursts(minutes=360, seed=seed, mean_rps=2700.0)
    assert tr.rate is not None and again.rate is not None
    np.testing.assert_array_equal(tr.rate, again.rate)
    assert tr.minute_rates().mean() == pytest.approx(2700.0, rel=0.01)
    assert 2.5 <= peak_to_mean(tr) <= 8.0
    # bursts: runs above twice the median rate, from seconds to at most five minutes
    assert tr.rate_t is not None
    above = tr.rate > 2 * np.median(tr.rate)
    edges = np.flatnonzero(np.diff(above.astype(int)))
    runs = np.diff(edges)[::2] if above[0] == 0 else np.diff(edges)[1::2]
    assert len(runs) > 30 and runs.max() <= 305 and np.median(runs) < 60
