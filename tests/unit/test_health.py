"""Readiness and the peering priority (pure parts): a process is standing by when its own live
entry is in the peering object; the oldest process has the highest priority."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from dedicap.controller.health import announced
from dedicap.controller.peering import peering_allows, start_priority

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def _peer(priority: int, age_s: float, lifetime: int = 15) -> dict[str, object]:
    return {"priority": priority, "lifetime": lifetime,
            "lastseen": (NOW - timedelta(seconds=age_s)).isoformat()}


def test_announced_needs_a_live_entry_with_our_priority() -> None:
    peers = {"a": _peer(5, 1), "b": _peer(7, 1), "dead": _peer(9, 60)}
    assert announced(peers, 5, NOW) and announced(peers, 7, NOW)
    assert not announced(peers, 9, NOW)  # its entry expired
    assert not announced(peers, 3, NOW) and not announced(None, 5, NOW)
    assert not announced({"x": "garbage", "y": {"priority": 5}}, 5, NOW)


def test_standby_is_announced_but_not_allowed_to_act() -> None:
    peers = {"old": _peer(start_priority(1000.0, 1), 1), "new": _peer(start_priority(2000.0, 1), 1)}
    new = start_priority(2000.0, 1)
    assert announced(peers, new, NOW) and not peering_allows(peers, new, NOW)
    assert peering_allows(peers, start_priority(1000.0, 1), NOW)


@given(st.floats(0, 4e9), st.floats(0, 4e9), st.integers(0, 2**16), st.integers(0, 2**16))
def test_earlier_start_means_higher_priority(a: float, b: float, ra: int, rb: int) -> None:
    pa, pb = start_priority(a, ra), start_priority(b, rb)
    assert 0 <= pa < 2**53 and 0 <= pb < 2**53  # exact in JSON and in the API server
    if int(a * 1000) < int(b * 1000):
        assert pa > pb
    if int(a * 1000) == int(b * 1000) and ra % 1024 != rb % 1024:
        assert pa != pb  # no tie, which would pause every peer
