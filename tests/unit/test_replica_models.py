"""The planner's replica from the user's measurements, and the history and trade-off around it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from dedicap.decide.policy import PolicyConfig
from dedicap.sim import plan
from dedicap.sim.history import (
    History,
    history_points,
    history_trace,
    parse_duration,
    parse_modeldeployment,
)
from dedicap.sim.replica_models import (
    ReplicaModelError,
    WindowPoint,
    from_curve_yaml,
    from_file_text,
    from_history,
    from_perf_analyzer_csv,
)

T0_MS, T1_MS, MAX_BATCH = 12.0, 1.5, 16  # the replica the measurements below come from


def batch_ms(b: float) -> float:
    return T0_MS + T1_MS * b


def perf_csv() -> str:
    """perf_analyzer -f over concurrency 1..64 against a batching replica of batch_ms(b)."""
    rows = ["Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,"
            "Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,"
            "p50 latency,p90 latency,p95 latency,p99 latency"]
    for c in (1, 2, 4, 8, 16, 32, 64):
        b = min(c, MAX_BATCH)  # closed loop: the batcher takes what waits, up to max batch
        s_ms = batch_ms(b)
        x = b / (s_ms / 1000.0)
        rows.append(f"{c},{x:.1f},50,300,{1000 * s_ms * max(c / b - 1, 0):.0f},40,"
                    f"{1000 * s_ms:.0f},5,2,1,1,1,1")
    return "\n".join(rows) + "\n"


def test_perf_analyzer_csv_recovers_the_batch_curve() -> None:
    m = from_perf_analyzer_csv(perf_csv(), "perf.csv", MAX_BATCH, 0.002, 1.0)
    assert 1000 * m.service.t0 == pytest.approx(T0_MS, rel=0.02)
    assert 1000 * m.service.t1 == pytest.approx(T1_MS, rel=0.02)
    assert m.service.capacity() == pytest.approx(MAX_BATCH / (batch_ms(MAX_BATCH) / 1000),
                                                 rel=0.02)
    assert not m.example and "perf_analyzer" in m.source and "7 load levels" in m.source
    # without the model's max batch, the largest batch measured (a floor) is planned with
    assert from_file_text(perf_csv(), "perf.csv", None, 0.002, 1.0).service.max_batch == 16
    with pytest.raises(ReplicaModelError, match="Server Compute Infer"):
        from_perf_analyzer_csv("Concurrency,Inferences/Second\n1,10\n", "x.csv", 4, 0.002, 1.0)


def test_yaml_curve_and_its_errors_name_the_field() -> None:
    text = ("name: my-encoder\nmax_batch_size: 16\nmax_queue_delay_ms: 5\n"
            "batch_ms: {1: 13.5, 4: 18, 16: 36}\n")
    m = from_curve_yaml(text, "curve.yaml", 1.0)
    assert m.service.name == "my-encoder" and m.service.max_queue_delay == 0.005
    assert 1000 * m.service.t1 == pytest.approx(T1_MS, rel=1e-6)
    assert 1000 * m.service.t0 == pytest.approx(T0_MS, rel=1e-6)
    with pytest.raises(ReplicaModelError, match=r"batch_ms: Value error, batch 4: -1"):
        from_curve_yaml("max_batch_size: 4\nbatch_ms: {1: 10, 4: -1}\n", "c.yaml", 1.0)
    with pytest.raises(ReplicaModelError, match="max_batch_size: Field required"):
        from_curve_yaml("batch_ms: {1: 10}\n", "c.yaml", 1.0)
    with pytest.raises(ReplicaModelError, match="max_batch: Extra inputs"):
        from_curve_yaml("max_batch: 4\nmax_batch_size: 4\nbatch_ms: {1: 10}\n", "c.yaml", 1.0)


def test_history_fit_is_the_live_policys() -> None:
    """Windows of a replica serving batches spread like a Poisson count: the fit recovers the
    batch curve through the size-biased correction, as the policy does."""
    rng = np.random.default_rng(0)
    points = []
    for k in range(120):
        b = float(rng.uniform(1.5, 12.0))
        biased = b + 1 - 1 / b  # what Triton's per-request compute time is measured at
        points.append(WindowPoint(t=60.0 * k, mean_batch=b,
                                  mean_compute_ms=batch_ms(biased), served_rps=200.0))
    points.append(WindowPoint(t=1e5, mean_batch=math.nan, mean_compute_ms=math.nan,
                              served_rps=0.0))  # an idle window teaches nothing
    m = from_history(points, "acme/bot", 60.0, PolicyConfig.capacity_half_life_s, MAX_BATCH,
                     0.002, 1.0)
    assert 1000 * m.service.t0 == pytest.approx(T0_MS, rel=0.01)
    assert 1000 * m.service.t1 == pytest.approx(T1_MS, rel=0.01)
    assert "120 windows" in m.source and "live policy" in m.source
    with pytest.raises(ReplicaModelError, match="no window"):
        from_history(points[-1:], "acme/bot", 60.0, 3600.0, None, 0.002, 1.0)


def history(rates: list[float]) -> History:
    n = len(rates)
    return History(
        namespace="acme", name="bot", end=1_700_000_000.0, step_s=60.0,
        request_rate=np.array(rates), success_rate=np.array(rates),
        mean_batch_rows=np.full(n, 8.0), mean_request_rows=np.full(n, 2.0),
        mean_compute_ms=np.full(n, 20.0), pods=np.full(n, 3.0))


def served_history(rows_per_request: float, max_batch_size: int | None,
                   max_queue_delay_s: float | None) -> History:
    """An hour of windows of the replica of batch_ms(b), at batches of 1.5-12 requests."""
    rng = np.random.default_rng(1)
    b = rng.uniform(1.5, 12.0, 60)
    n = len(b)
    return History(
        namespace="acme", name="bot", end=1_700_000_000.0, step_s=60.0,
        request_rate=np.full(n, 200.0), success_rate=np.full(n, 200.0),
        mean_batch_rows=b * rows_per_request, mean_request_rows=np.full(n, rows_per_request),
        mean_compute_ms=T0_MS + T1_MS * (b + 1 - 1 / b), pods=np.full(n, 3.0),
        max_batch_size=max_batch_size, max_queue_delay_s=max_queue_delay_s)


def test_a_history_is_replayed_with_the_batching_its_spec_declares() -> None:
    args = plan.build_parser().parse_args(["--prometheus", "http://p", "--modeldeployment",
                                           "acme/bot"])
    h = served_history(1.0, MAX_BATCH, 0.005)
    m = plan.replica_model(args, plan.Traffic(trace=history_trace(h), history=h))
    assert m.service.max_batch == MAX_BATCH  # not the largest batch measured (12)
    assert m.service.max_queue_delay == pytest.approx(0.005)
    assert any("spec" in n for n in m.notes), m.notes
    # Triton's max_batch_size counts rows: at 4 rows per request a batch holds 4 requests
    h4 = served_history(4.0, MAX_BATCH, None)
    m4 = plan.replica_model(args, plan.Traffic(trace=history_trace(h4), history=h4))
    assert m4.service.max_batch == MAX_BATCH // 4
    assert m4.service.max_queue_delay == pytest.approx(0.002)  # the batcher's default
    # the flags win over the spec; without either, the largest batch measured, said so
    given = plan.build_parser().parse_args(["--prometheus", "http://p", "--modeldeployment",
                                            "acme/bot", "--max-batch", "8",
                                            "--max-queue-delay-ms", "1"])
    mg = plan.replica_model(given, plan.Traffic(trace=history_trace(h), history=h))
    assert (mg.service.max_batch, mg.service.max_queue_delay) == (8, pytest.approx(0.001))
    bare = served_history(1.0, None, None)
    mb = plan.replica_model(args, plan.Traffic(trace=history_trace(bare), history=bare))
    assert mb.service.max_batch < MAX_BATCH and any("--max-batch" in n for n in mb.notes)


def test_history_gaps_are_bridged_and_not_scored() -> None:
    h = history([100.0, 120.0, math.nan, math.nan, 160.0, 100.0])
    tr = history_trace(h)
    assert tr.duration == 360.0
    assert tr.gaps is not None and list(tr.gaps) == [False, False, True, True, False, False]
    assert 120.0 < tr.rate_at(np.array([180.0]))[0] < 160.0  # bridged, not zero
    pts = history_points(h)
    assert pts[0].mean_batch == 4.0  # rows per execution / rows per request
    assert pts[-1].t == h.end
    with pytest.raises(ValueError, match="no Triton request counter"):
        history_trace(history([math.nan] * 3))
    assert parse_duration("7d") == 7 * 86400 and parse_duration("90m") == 5400
    assert parse_modeldeployment("acme/bot") == ("acme", "bot")
    with pytest.raises(ValueError, match="NAMESPACE/NAME"):
        parse_modeldeployment("bot")


def test_tradeoff_curve_with_a_measured_replica(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(3)
    t = np.sort(rng.uniform(0, 1800, 6000))  # 30 min at ~3.3 req/s
    trace = tmp_path / "reqs.csv"
    trace.write_text("arrival_time\n" + "\n".join(f"{x:.4f}" for x in t) + "\n")
    perf = tmp_path / "perf.csv"
    perf.write_text(perf_csv())
    png = tmp_path / "p.png"
    rc = plan.main(["--trace", str(trace), "--scale", "300", "--replica", str(perf),
                    "--max-batch", str(MAX_BATCH), "--slo", "p95=150ms", "--attainment", "0.95",
                    "--pool", "a=2.5", "--pool", "b=1.0@0.5", "--json", "--plot", str(png)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["replica_model"]["example"] is False
    assert out["recommendation"]["replica_model"].startswith("fitted to perf.csv")
    for pool in out["pools"]:
        curve = pool["tradeoff"]
        gpus = [p["reserved_gpus"] for p in curve]
        assert gpus == sorted(gpus) and len(gpus) >= 2
        costs = [p["reserved_cost"] for p in curve]
        burst = [p["burst_gpu_hours"] for p in curve]
        assert costs == sorted(costs) and burst == sorted(burst, reverse=True)
        assert burst[-1] == 0.0
        res = pool["reservation"]
        if res is None:  # the half-speed pool cannot keep this SLO even unlimited
            assert pool["autoscaled"]["attainment"] < 0.95 and "even without a limit" in pool[
                "note"]
            continue
        assert res["attainment"] >= 0.95
        below = [p for p in curve if p["reserved_gpus"] == res["gpus"] - 1]
        assert not below or below[0]["attainment"] < 0.95
    # the recommendation is the pool whose reservation costs least
    priced = [(p["reservation"]["reserved_cost"], p["pool"]) for p in out["pools"]
              if p["reservation"] is not None]
    assert priced and out["recommendation"]["pool"] == min(priced)[1]
    assert png.exists() and Path(plan.tradeoff_plot_path(str(png))).stat().st_size > 10_000
