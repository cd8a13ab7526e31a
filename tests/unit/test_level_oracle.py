"""The level oracles of the autoscaler benchmark: what holding headroom in proportion to the
load could save on bursty traffic, from knowing the level ahead to learning everything."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dedicap.sim.oracle import (
    learned_level_schedule,
    level_multipliers,
    level_schedule,
    slow_level,
)

needs = st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=200)


def bursts_on(level: np.ndarray, every: int = 7, height: int = 3) -> np.ndarray:
    """Short bursts (one minute in ``every``) of ``height`` times the level on top of it."""
    n = level.astype(int).copy()
    n[::every] *= height
    return n


def test_the_slow_level_is_the_level_under_the_bursts() -> None:
    level = np.repeat([4, 12], 60)
    n = bursts_on(level)
    centred = slow_level(n)
    assert np.all(centred[15:45] == 4) and np.all(centred[75:105] == 12)
    # the trailing one knows a minute's need two minutes after it: the step shows late
    trailing = slow_level(n, lag_min=2)
    assert trailing[61] == 4 and trailing[62] == 4
    assert np.all(trailing[80:] == 12)


def test_the_trailing_level_never_reads_a_minute_not_yet_known() -> None:
    rng = np.random.default_rng(3)
    n = rng.integers(1, 40, size=120)
    trailing = slow_level(n, window_min=9, lag_min=2)
    for m in range(5, 120):
        changed = n.copy()
        changed[m - 1:] = 1000  # the future, and the minute not yet complete, differ
        assert slow_level(changed, window_min=9, lag_min=2)[m] == trailing[m]
    learned = learned_level_schedule(n, 0.95, window_min=9, lag_min=2, warm_min=10)
    changed = n.copy()
    changed[70:] = 1000
    assert np.array_equal(learned_level_schedule(changed, 0.95, window_min=9, lag_min=2,
                                                 warm_min=10)[:72], learned[:72])


@settings(max_examples=200, deadline=None)
@given(needs, st.sampled_from([0.5, 0.9, 0.95, 1.0]))
def test_a_multiplier_covers_at_least_its_share_of_the_minutes(n: list[int], cover: float
                                                              ) -> None:
    per_minute = np.array(n)
    for lag in (None, 2):
        (mult,) = level_multipliers(per_minute, (cover,), lag_min=lag)
        held = level_schedule(per_minute, mult, lag_min=lag)
        assert np.mean(held >= per_minute) >= cover - 1e-9
        assert held.min() >= 1


def test_on_a_flat_need_the_level_oracle_is_the_static_fleet() -> None:
    n = np.full(90, 7)
    assert level_multipliers(n, (0.95, 1.0)) == [1.0]
    assert np.all(level_schedule(n, 1.0) == 7)
    assert np.all(learned_level_schedule(n, 0.99)[30:] == 7)


def test_holding_in_proportion_beats_a_static_fleet_when_the_level_moves() -> None:
    # bursts three times the level, on a level that steps from 4 to 12: a static fleet
    # covering every minute holds 36 throughout, the level oracle 12 then 36
    n = bursts_on(np.repeat([4, 12], 120), every=5)
    (mult,) = level_multipliers(n, (1.0,))
    held = level_schedule(n, mult)
    assert np.all(held >= n)
    assert held.sum() < n.max() * len(n)


def test_the_learned_factor_settles_on_the_burst_height() -> None:
    # one burst minute in ten, three times the level: the 95th percentile of need over level
    # is the burst's, once enough minutes are known
    n = bursts_on(np.full(300, 5), every=10)
    held = learned_level_schedule(n, 0.95)
    assert np.all(held[:30] == n[:29].max())  # before it learns: the highest need seen
    assert np.all(held[60:] == 15)
    # and a quantile under the bursts' share holds the level only
    assert np.all(learned_level_schedule(n, 0.8)[60:] == 5)
