"""The autoscaler's saved state is input: read back strictly, a bad one costs a fresh start."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from dedicap.controller.autoscale import STATE_VERSION, material, read_state
from dedicap.decide.policy import ObservationWindow, PolicyConfig, PolicyState, decide

NOW = 1_700_000_000.0


def lived_state() -> PolicyState:
    """A state that went through real decisions (every field set)."""
    cfg = PolicyConfig(min_replicas=1, max_replicas=20, evaluation_interval_s=15)
    state = PolicyState()
    for i, rate in enumerate([10, 40, 160, 160, 120, 40, 10]):
        t = NOW + 15 * i
        w = ObservationWindow(timestamp=t, request_rate=rate, success_rate=rate,
                              latency_quantile_ms=300 if rate > 100 else 80, queue_depth=5,
                              mean_batch_size=4, mean_compute_ms=40, ready_replicas=2,
                              current_replicas=2)
        state = decide(cfg, w, state, t).state
    return state


def saved(state: Any, version: int = STATE_VERSION) -> dict[str, Any]:
    return {"state": json.dumps(state), "version": version}


def test_a_saved_state_reads_back_as_it_was() -> None:
    state = lived_state()
    back, why = read_state(saved(state.to_dict()))
    assert why == "" and back == state


@pytest.mark.parametrize("forged", [
    [], "text", 7, None.__class__.__name__,
    {"gain": "1"}, {"gain": math.inf}, {"gain": 1e9}, {"gain": True}, {"budget": -1},
    {"peak": -5.0}, {"saturated_rps": float("nan")},
    {"holt": {"level": 1}}, {"holt": [1, 2, 3]}, {"fit": "x"}, {"fit": {"w": "1"}},
    {"history": "x"}, {"history": [[1, 2, 3]]}, {"history": [[NOW, 1.5]]},
    {"recommendations": [[NOW, -1]]}, {"recent": [[NOW, 1]] * 20_000},
    {"last_eval": "yesterday"}, {"fast": "x"}, {"fast": [[NOW, -1.0]]},
    {"fast": [[NOW, math.nan]]}, {"fast": [[NOW, 1.0]] * 20_000},
])
def test_anything_else_is_refused_and_starts_afresh(forged: Any) -> None:
    state, why = read_state(saved(forged))
    assert state == PolicyState() and why.startswith("unreadable")


def test_unknown_format_or_garbage_starts_afresh() -> None:
    assert read_state(saved({}, version=99))[1].startswith("saved in format 99")
    assert read_state({"state": "{not json", "version": STATE_VERSION})[1].startswith(
        "unreadable")
    assert read_state(None) == (PolicyState(), "")
    assert read_state({}) == (PolicyState(), "")


def test_material_ignores_the_bookkeeping_of_every_evaluation() -> None:
    state = lived_state()
    moved = PolicyState.from_dict({**state.to_dict(), "last_eval": NOW + 999,
                                   "history": [[NOW + 999, 3]]})
    assert material(moved) == material(state)
    learned = PolicyState.from_dict({**state.to_dict(), "gain": state.gain * 0.5})
    assert material(learned) != material(state)
