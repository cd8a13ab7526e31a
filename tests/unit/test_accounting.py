"""GPU-hours across operator restarts and handovers: the gap since status.cost.accountedAt is
charged at the count held then, and no interval is ever charged twice."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dedicap.api.models import CostStatus
from dedicap.controller.accounting import Accountant, recorded_integral
from dedicap.decide.accounting import GPUHours, accumulate, gap_by_pool, resume
from dedicap.decide.placement import PoolState

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
H100 = PoolState("h100", 80, (), 2.5)
POOLS = {"h100": H100, "a10g": PoolState("a10g", 24, (), 0.75)}


def _s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _observe(acc: Accountant, gpus: Mapping[str, int], now: datetime,
             status: Mapping[str, Any] | None = None,
             placement: Mapping[str, int] | None = None) -> dict[str, Any]:
    """One reconcile: observe, and return the status.cost it writes (parsed back through the
    API model, as the next reader gets it)."""
    report = acc.observe("acme", "bot", gpus, POOLS, now, status, placement)
    wire = report.status()
    return CostStatus.model_validate(wire).model_dump(by_alias=True, mode="json",
                                                      exclude_none=True)


# ----------------------------------------------------------------------------- pure


def test_gap_after_a_restart_is_charged_at_the_count_held_when_it_began() -> None:
    recorded = GPUHours(3.0, 8, _s(0), T0 - timedelta(days=1))
    after = resume(None, recorded, 4, _s(20))
    assert after.gpu_hours == pytest.approx(3.0 + 8 * 20 / 3600)
    assert after.gpus == 4 and after.at == _s(20) and after.since == recorded.since
    # From the restart on, the count seen at the first observation holds.
    later = resume(after, None, 4, _s(80))
    assert later.gpu_hours == pytest.approx(3.0 + 8 * 20 / 3600 + 4 * 60 / 3600)


def test_a_status_ahead_of_memory_is_continued_not_added_to() -> None:
    # This process last integrated at 10 s; another one (peering handover) wrote the status at
    # 30 s, its hours covering [since, 30 s). Continuing the status from memory's instant would
    # charge [10 s, 30 s) a second time.
    memory = GPUHours(8 * 10 / 3600, 8, _s(10), T0)
    status = GPUHours(8 * 30 / 3600, 8, _s(30), T0)
    after = resume(memory, status, 8, _s(40))
    assert after.gpu_hours == pytest.approx(8 * 40 / 3600)
    # A status behind memory (an older write of either process) is not taken either.
    assert resume(after, status, 8, _s(50)).gpu_hours == pytest.approx(8 * 50 / 3600)


def test_the_further_record_has_seen_more() -> None:
    # The other operator saw the replicas gone at 30 s; this one last saw 8 GPUs at 10 s.
    # Continuing its own memory would bill 8 GPUs until 40 s.
    memory = GPUHours(8 * 10 / 3600, 8, _s(10), T0)
    status = GPUHours(8 * 30 / 3600, 0, _s(30), T0)
    after = resume(memory, status, 0, _s(40))
    assert after.gpu_hours == pytest.approx(8 * 30 / 3600) and after.at == _s(30)


def test_an_accounted_instant_in_the_future_charges_nothing_for_the_gap() -> None:
    ahead = GPUHours(2.0, 8, _s(600), T0)  # another operator's clock runs 10 min ahead
    after = resume(None, ahead, 8, _s(0))
    assert after.gpu_hours == 2.0 and after.at == _s(0)
    # Integration goes on from now (the instant written back), not from the future one.
    assert resume(after, after, 8, _s(36)).gpu_hours == pytest.approx(2.0 + 8 * 36 / 3600)
    assert gap_by_pool(ahead, {"h100": 8}, {"h100": 8}, _s(0)) == {}


def test_an_idle_record_does_not_move() -> None:
    idle = accumulate(None, 0, _s(0))
    assert accumulate(idle, 0, _s(60)) is idle  # its status need not be written again
    busy = accumulate(idle, 2, _s(90))
    assert busy.gpu_hours == 0.0 and busy.at == _s(90) and busy.gpus == 2


def test_the_gap_per_pool_is_charged_at_the_recorded_counts_or_in_proportion() -> None:
    recorded = GPUHours(0.0, 12, _s(0), T0)
    hour = _s(3600)
    assert gap_by_pool(recorded, {"h100": 8, "a10g": 4}, {"h100": 2}, hour) == {
        "h100": 8.0, "a10g": 4.0}
    # Per-pool counts that do not add up to the recorded total (written by another
    # observation): the total goes to today's pools in their proportion.
    assert gap_by_pool(recorded, {"h100": 8}, {"h100": 2, "a10g": 1}, hour) == {
        "h100": pytest.approx(8.0), "a10g": pytest.approx(4.0)}
    assert gap_by_pool(recorded, None, {"h100": 3, "a10g": 0}, hour) == {"h100": 12.0}
    assert gap_by_pool(recorded, None, {}, hour) == {}


# ----------------------------------------------------------------------------- the accountant


def test_restarted_accountant_charges_the_downtime_at_the_status_count() -> None:
    first = Accountant()
    _observe(first, {"h100": 8}, _s(0))
    status = _observe(first, {"h100": 8}, _s(60))
    assert status["accountedAt"] == "2025-03-01T12:01:00Z"
    assert status["gpuHours"] == pytest.approx(8 * 60 / 3600, abs=1e-6)
    # SIGKILL; a new process observes 20 s later with the same pods.
    second = Accountant(rewrite_after=timedelta(seconds=30))
    report = second.observe("acme", "bot", {"h100": 8}, POOLS, _s(80), status, {"h100": 8})
    assert report.gpu_hours == pytest.approx(8 * 80 / 3600, abs=1e-6)
    assert report.total.at == _s(80) and report.total.since == T0
    assert report.by_pool["h100"].gpu_hours == pytest.approx(8 * 20 / 3600)
    # The status found still states that integral (8 GPUs from accountedAt on): it is kept.
    assert report.status()["accountedAt"] == "2025-03-01T12:01:00.000000Z"
    # ... unless the status is written anyway: then the integral up to now rides along.
    fresh = report.status(fresh=True)
    assert fresh["accountedAt"] == "2025-03-01T12:01:20.000000Z"
    assert fresh["gpuHours"] == pytest.approx(8 * 80 / 3600, abs=1e-6)
    # Once it is older than the rewrite interval, the integral is written out.
    later = _observe(second, {"h100": 8}, _s(95), status, {"h100": 8})
    assert later["accountedAt"] == "2025-03-01T12:01:35Z"
    assert later["gpuHours"] == pytest.approx(8 * 95 / 3600, abs=1e-6)


def test_the_status_is_rewritten_when_the_counts_change_or_it_grows_old() -> None:
    acc = Accountant(rewrite_after=timedelta(seconds=30))
    first = _observe(acc, {"h100": 8}, _s(0))
    # Same counts, within the interval: the status found is written back unchanged (no
    # write at all, since nothing differs).
    assert _observe(acc, {"h100": 8}, _s(10), first, {"h100": 8}) == first
    # The same total moved to another pool: per-pool counts changed, so a new record.
    moved = _observe(acc, {"a10g": 8}, _s(20), first, {"h100": 8})
    assert moved["accountedAt"] == "2025-03-01T12:00:20Z" and moved["gpus"] == 8
    assert moved["gpuHours"] == pytest.approx(8 * 20 / 3600, abs=1e-6)
    scaled = _observe(acc, {"a10g": 4}, _s(25), moved, {"a10g": 8})
    assert scaled["gpus"] == 4 and scaled["accountedAt"] == "2025-03-01T12:00:25Z"
    assert _observe(acc, {"a10g": 4}, _s(54), scaled, {"a10g": 4}) == scaled
    old = _observe(acc, {"a10g": 4}, _s(55), scaled, {"a10g": 4})
    assert old["accountedAt"] == "2025-03-01T12:00:55Z"
    assert old["gpuHours"] == pytest.approx((8 * 25 + 4 * 30) / 3600, abs=1e-6)


def test_old_status_without_accounted_at_continues_without_charging_the_gap() -> None:
    old = {"gpus": 8, "gpuHours": 5.0, "hourlyCost": 20.0, "since": "2025-02-01T00:00:00Z"}
    assert recorded_integral(old) is None
    acc = Accountant()
    status = _observe(acc, {"h100": 8}, _s(0), old, {"h100": 8})
    assert status["gpuHours"] == 5.0 and status["since"] == "2025-02-01T00:00:00Z"
    assert status["accountedAt"] == "2025-03-01T12:00:00Z"
    assert _observe(acc, {"h100": 8}, _s(360), status)["gpuHours"] == pytest.approx(5.8)


def test_accounted_at_survives_the_wire_with_sub_second_precision() -> None:
    acc = Accountant()
    at = _s(1.25)
    cost = acc.observe("acme", "bot", {"h100": 1}, POOLS, at).status()
    assert cost["accountedAt"] == "2025-03-01T12:00:01.250000Z"
    recorded = recorded_integral(CostStatus.model_validate(cost).model_dump(
        by_alias=True, mode="json", exclude_none=True))
    assert recorded is not None and recorded.at == at and recorded.gpus == 1


# ----------------------------------------------------------------------------- properties

_steps = st.lists(st.tuples(st.integers(1, 600), st.integers(0, 16), st.booleans()),
                  min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(_steps)
def test_restarts_never_change_the_total(steps: list[tuple[int, int, bool]]) -> None:
    """Pods change only where an observation sees them change (the accounting's own
    assumption), and each step may first kill the operator: the observations of a down
    operator are lost, and the next one starts from the status. The total is then exactly the
    integral of the counts, as if the operator had never stopped."""
    acc = Accountant()
    status = _observe(acc, {"h100": 4}, _s(0))
    t, held, expected = 0, 4, 0.0
    for dt, gpus, restart in steps:
        if restart:
            acc = Accountant()
        t += dt
        expected += held * dt / 3600
        status = _observe(acc, {"h100": gpus}, _s(t), status, {"h100": held})
        held = gpus
        assert _implied(status, _s(t)) == pytest.approx(expected, abs=1e-5)
    assert acc.observe("acme", "bot", {"h100": held}, POOLS, _s(t + 1), status,
                       {"h100": held}).gpu_hours == pytest.approx(expected + held / 3600,
                                                                  abs=1e-5)


def _implied(status: Mapping[str, Any], now: datetime) -> float:
    """The GPU-hours up to `now` a status.cost states: gpuHours, plus gpus from accountedAt."""
    at = datetime.fromisoformat(status["accountedAt"].replace("Z", "+00:00"))
    return float(status["gpuHours"]) + status["gpus"] * (now - at).total_seconds() / 3600


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(1, 120), st.integers(0, 3)),
                min_size=1, max_size=40))
def test_operators_reconciling_at_once_never_charge_an_interval_twice(
        turns: list[tuple[int, int, int]]) -> None:
    """Three operators (a handover, and one that was slow to stop) observe the same pods in
    turn, each reading a status that may be a few writes stale and writing without a
    precondition, the last write winning. With a constant count, any record's hours must be
    exactly the count times the time it covers: a second charge of any interval would show."""
    gpus = 8
    ops = [Accountant() for _ in range(3)]
    writes = [_observe(ops[0], {"h100": gpus}, _s(0))]
    t = 0
    for who, dt, stale in turns:
        t += dt
        read = writes[max(len(writes) - 1 - stale, 0)]
        writes.append(_observe(ops[who], {"h100": gpus}, _s(t), read, {"h100": gpus}))
    for w in writes:
        at = datetime.fromisoformat(w["accountedAt"].replace("Z", "+00:00"))
        assert w["gpuHours"] == pytest.approx(gpus * (at - T0).total_seconds() / 3600,
                                              abs=1e-5)
    # And the last write states the integral up to the last observation: nothing was lost.
    assert _implied(writes[-1], _s(t)) == pytest.approx(gpus * t / 3600, abs=1e-5)
