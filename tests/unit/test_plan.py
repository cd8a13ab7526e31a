"""`dedicap plan` and the benchmark's --quick smoke run."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dedicap.sim import plan


def azure_like(path: Path, minutes: int = 20, rps: float = 5.0, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    n = int(minutes * 60 * rps)
    t = np.sort(rng.uniform(0, minutes * 60.0, n))
    base = np.datetime64("2023-11-16T18:15:46.000000000")
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for x in t:
        stamp = str(base + np.timedelta64(int(x * 1e9), "ns")).replace("T", " ")[:27]
        lines.append(f"{stamp},{int(rng.integers(50, 2000))},{int(rng.integers(1, 300))}")
    path.write_text("\n".join(lines) + "\n")
    return path


def servegen_like(path: Path, days: int = 2) -> Path:
    rows = ["window_start_s,window_s,sum_rate_rps_over_clients,n_client_files"]
    for i in range(days * 144):
        rate = 1500 + 800 * np.sin(2 * np.pi * i / 144)
        rows.append(f"{i * 600},600,{0.0 if i == 100 else rate:.3f},100")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_parse_slo_and_pool() -> None:
    assert plan.parse_slo("p95=200ms") == (95.0, 200.0)
    assert plan.parse_slo("p99.9=1.5s") == (99.9, 1500.0)
    with pytest.raises(argparse.ArgumentTypeError):
        plan.parse_slo("95=200")
    assert plan.parse_pool("h100=2.5@0.8") == plan.Pool("h100", 2.5, 0.8)
    with pytest.raises(argparse.ArgumentTypeError):
        plan.parse_pool("h100")


def test_plan_json_recommends_the_cheaper_pool(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = azure_like(tmp_path / "reqs.csv")
    png = tmp_path / "plan.png"
    rc = plan.main(["--trace", str(trace), "--scale", "400", "--slo", "p95=100ms",
                    "--attainment", "0.9", "--pool", "fast=2.5", "--pool", "slow=1.0@0.5",
                    "--json", "--plot", str(png)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["trace"]["requests"] == pytest.approx(20 * 60 * 5 * 400, rel=0.05)
    pools = {p["pool"]: p for p in out["pools"]}
    assert set(pools) == {"fast", "slow"}
    fast = pools["fast"]
    assert 0.0 <= fast["autoscaled"]["attainment"] <= 1.0
    assert fast["autoscaled"]["gpu_hours"] > 0
    res = fast["reservation"]
    assert res["attainment"] >= 0.9
    # 2,000 req/s needs at least three replicas of ~770 req/s
    assert res["gpus"] >= 3
    rec = out["recommendation"]
    assert rec["pool"] in pools
    assert rec["reserved_cost"] == min(p["reservation"]["reserved_cost"] for p in pools.values()
                                       if p["reservation"])
    assert png.exists() and png.stat().st_size > 10_000


def test_plan_text_on_window_rates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = servegen_like(tmp_path / "sg.csv")
    rc = plan.main(["--trace", str(trace), "--window-rates", "--minutes", "300",
                    "--slo", "p95=100ms", "--no-search"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "SLO-minutes" in text and "GPU-h" in text


def test_plan_reports_unreadable_traces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("nothing,here\n1,2\n")
    assert plan.main(["--trace", str(bad), "--json"]) == 2
    assert "cannot read" in capsys.readouterr().err


def _autoscaler_bench() -> Any:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "autoscaler.py"
    spec = importlib.util.spec_from_file_location("autoscaler_bench", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["autoscaler_bench"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_quick_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    traces = tmp_path / "traces"
    traces.mkdir()
    azure_like(traces / "AzureLLMInferenceTrace_conv.csv", minutes=20)
    servegen_like(traces / "servegen_m-mid_rate_10min.csv")
    mod = _autoscaler_bench()
    out = tmp_path / "out"
    rc = mod.main(["--quick", "--traces", str(traces), "--out", str(out), "--workers", "1"])
    assert rc == 0
    text = (out / "autoscaler-quick.md").read_text()
    assert "oracle with start-up" in text and "lower bound" in text and "dedicap" in text
    data = json.loads((out / "autoscaler-quick.json").read_text())
    fams = {r["family"] for r in data["runs"]}
    assert {"dedicap", "hpa", "keda", "kpa", "static", "oracle", "lower"} <= fams
    for r in data["runs"]:
        assert r["minutes_scored"] > 0 and r["gpu_hours"] > 0
    lower = [r for r in data["runs"] if r["family"] == "lower"]
    oracle = {r["scenario"]: r for r in data["runs"] if r["family"] == "oracle"}
    for r in lower:
        assert r["gpu_hours"] <= oracle[r["scenario"]]["gpu_hours"] + 1e-9
    assert (out / "autoscaler-quick-pareto.png").exists()


@pytest.mark.parametrize("kind", ["bursty", "bursty-real"])
def test_bursty_traces_are_compared_with_every_static_fleet_under_the_peak(kind: str) -> None:
    # "the cheapest static fleet at dedicap's attainment" is only that when no count between
    # the mean minute's and the peak's is skipped: a coarse grid rounds it up
    mod = _autoscaler_bench()
    nstar = np.array([3, 4, 4, 5, 30, 6, 4, 27, 3, 4])  # mean 9.0, peak 30
    counts = sorted(n for fam, n in mod.sweeps(nstar, quick=False, kind=kind) if fam == "static")
    assert counts == list(range(9, 32))


def test_a_history_starts_on_the_fleet_the_policy_settles_on_not_its_first_belief() -> None:
    """A short, flat history and a replica whose knee (0.9 of its saturated rate) is too
    optimistic at the SLO: two replicas by that belief miss, the policy learns within the first
    minute and holds three. The scored run starts on three, so the plan's first minute is not
    a cold start's miss (the replica learned from a live deployment's metrics, where `dedicap
    plan` recommended nothing for lack of a first minute)."""
    from dedicap.sim.service import ServiceModel
    from dedicap.sim.traces import Trace

    replica = ServiceModel(name="learned", t0=0.0616, t1=0.0265, max_batch=4,
                           max_queue_delay=0.002, queue_timeout=1.0)
    trace = Trace(name="flat", duration=140.0, rate_t=np.array([0.0, 140.0]),
                  rate=np.array([40.0, 40.0]))
    args = argparse.Namespace(slo=(95.0, 400.0), engine="exact", min_replicas=1,
                              max_replicas=10, error_rate=0.01, startup=10.0,
                              gpus_per_replica=1, seed=0)
    assert math.ceil(40.0 / (0.9 * replica.capacity())) == 2  # the first belief
    three = plan._run(trace, args, replica, 3, 1.0, progress=False)
    assert three.minute_held[0] == 3
    assert three.met == three.scored


def test_the_production_like_traces_are_also_swept_with_the_level_oracles() -> None:
    mod = _autoscaler_bench()
    nstar = np.array([3, 4, 4, 5, 30, 6, 4, 27, 3, 4] * 10)
    fams = [fam for fam, _ in mod.sweeps(nstar, quick=False, kind="bursty-real")]
    assert {"level", "level-causal", "level-learned"} <= set(fams)
    assert "level" not in {fam for fam, _ in mod.sweeps(nstar, quick=False, kind="bursty")}


def test_holding_table_compares_each_setting_with_the_static_fleet_at_its_attainment() -> None:
    mod = _autoscaler_bench()

    def run(family: str, param: Any, met: int, gpu_hours: float) -> dict[str, Any]:
        return {"family": family, "param": param, "scenario": "heavy-1", "kind": "bursty-real",
                "startup": 60.0, "minutes_met": met, "minutes_scored": 100,
                "attainment": met / 100, "gpu_hours": gpu_hours, "goal": 0.95}

    rows = [run("static", 10, 95, 10.0), run("static", 12, 98, 12.0),
            run("static", 14, 100, 14.0),
            # 0.9 of static at 95%, but 98% costs 11.5 against 12: the lower ratio wins
            run("level", 1.5, 95, 9.0), run("level", 2.0, 98, 11.5),
            # under the goal: not counted, however cheap
            run("level-causal", 1.2, 90, 5.0), run("level-causal", 1.6, 96, 12.6),
            run("level-learned", 0.99, 99, 13.0),
            run("dedicap", None, 97, 13.2), run("dedicap", 0.8, 99, 1.0)]
    meta = {"heavy-1": {"name": "heavy #1", "peak_to_mean": 4.0}}
    text = "\n".join(mod.holding_table(rows, meta))
    assert "| heavy #1 | 0.90 (95.0%) | 1.05 (96.0%) | 0.93 (99.0%) | 1.10 (97.0%) |" in text
    assert "| under 1 on | 1 of 1 | 0 of 1 | 1 of 1 | 0 of 1 |" in text


def test_the_planned_static_fleet_comes_from_other_hours_of_the_same_traffic() -> None:
    mod = _autoscaler_bench()
    assert mod.history_key("heavy-7") == "heavy-107"
    assert mod.history_key("stretch-0") == "stretch-3000"  # round the trace's hour
    assert mod.history_key("stretch-1800") == "stretch-1200"
    for key in (*mod.REAL_DESIGN, *mod.REAL_CHECK):
        assert mod.history_key(key) != key
    # and it is among the static fleets swept, however far under the mean minute's it is
    nstar = np.array([3, 4, 4, 5, 30, 6, 4, 27, 3, 4])
    assert ("static", 2) in mod.sweeps(nstar, quick=False, kind="bursty-real", planned=2)
