"""The model's max batch in the capacity: given by the spec, or learned from full batches.

No Triton metric carries a model's max_batch_size. Without it the capacity may extrapolate
the batch past it and believe a replica serves more than it can: on a real Triton replica of
20 + 5 ms per batch, max batch 8 and a 200-ms target, the batch-time fit believed 167 req/s per
replica against the 131 measured (benchmarks/batch_fit.py).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from dedicap.api.models import AutoscalingSpec, ModelSpec
from dedicap.controller.autoscale import STATE_VERSION, read_state
from dedicap.controller.policy_config import (
    AutoscalerDefaults,
    batch_in_requests,
    policy_config,
)
from dedicap.controller.status import autoscaling as status
from dedicap.decide.policy import (
    ObservationWindow,
    PolicyConfig,
    PolicyState,
    capacity_per_replica,
    decide,
)
from dedicap.decide.policy_capacity import size_biased_batch
from dedicap.metrics.snapshot import MetricsSnapshot

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
S0_MS, S1_MS, MAX_BATCH = 20.0, 5.0, 8
CFG = PolicyConfig(min_replicas=1, max_replicas=20, latency_target_ms=200.0)
# the fleet cannot grow (a reservation of two replicas): its queues stay deep, as at a limit
LIMIT = 2
# the replica's saturated throughput: full batches back to back
SATURATED = MAX_BATCH / ((S0_MS + S1_MS * MAX_BATCH) / 1000.0)


def window(now: float, batch: float, ready: int, queue: float) -> ObservationWindow:
    """What a fleet of this replica reports at a mean batch of `batch` requests."""
    per = batch / ((S0_MS + S1_MS * batch) / 1000.0)
    compute = S0_MS + S1_MS * size_biased_batch(batch)
    return ObservationWindow(
        timestamp=now - 2.0, window_s=60.0, request_rate=per * ready, success_rate=per * ready,
        latency_quantile_ms=150.0, queue_depth=queue, mean_compute_ms=compute,
        mean_batch_size=batch, ready_replicas=ready, current_replicas=ready)


def spread(cfg: PolicyConfig) -> tuple[PolicyState, float]:
    """A steady fleet of two whose batches spread from 1.5 to 7 (the slope is identified)."""
    state, now = PolicyState(), 0.0
    for batch in (1.5, 3.0, 5.0, 7.0, 2.0, 6.0, 4.0, 7.0):
        now += 15.0
        state = decide(cfg, window(now, batch, 2, queue=batch), state, now, LIMIT).state
    return state, now


def test_without_the_max_batch_the_fit_believes_more_than_the_replica_serves() -> None:
    # the defect the max batch removes, on the fit as it is (so the others can fail)
    state, now = spread(CFG)
    assert state.fit.coefficients() is not None
    cap = capacity_per_replica(CFG, state, now)
    assert cap is not None and cap > SATURATED * CFG.utilization * 1.1


def test_the_specs_max_batch_bounds_the_capacity_at_full_batches() -> None:
    raw = {"minReplicas": 1, "maxReplicas": 20, "slo": {"latency": {"targetMs": 200}}}
    model = ModelSpec.model_validate({"name": "m", "repository": "s3://models",
                                      "maxBatchSize": MAX_BATCH,
                                      "maxQueueDelayMicroseconds": 5000})
    cfg = policy_config(AutoscalingSpec.model_validate(raw), AutoscalerDefaults(), "request",
                        model)
    assert (cfg.max_batch_size, cfg.max_queue_delay_ms) == (MAX_BATCH, 5.0)
    state, now = spread(cfg)
    cap = capacity_per_replica(cfg, state, now)
    assert cap is not None and cap <= SATURATED * cfg.utilization * 1.02
    assert state.full_batch == 0  # given: nothing to learn


@pytest.mark.parametrize("field, value", [("maxBatchSize", 0), ("maxBatchSize", 1.5),
                                          ("maxQueueDelayMicroseconds", -1)])
def test_a_bad_batcher_limit_is_refused_with_its_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as err:
        ModelSpec.model_validate({"name": "m", "repository": "s3://models", field: value})
    assert field in str(err.value)


def overflow(cfg: PolicyConfig, state: PolicyState, now: float, evaluations: int,
             batch: float = MAX_BATCH) -> tuple[PolicyState, float]:
    """A steady fleet of two whose queues hold many batches per replica."""
    for _ in range(evaluations):
        now += 15.0
        state = decide(cfg, window(now, batch, 2, queue=10 * MAX_BATCH), state, now,
                       LIMIT).state
    return state, now


def test_a_whole_window_of_overflowing_queues_teaches_the_max_batch() -> None:
    state, now = spread(CFG)
    state, now = overflow(CFG, state, now, 4)  # 45 s: not yet a whole window
    assert state.full_batch == 0 and state.deep_since is not None
    state, now = overflow(CFG, state, now, 1)
    assert state.full_batch == MAX_BATCH
    cap = capacity_per_replica(CFG, state, now)
    assert cap is not None and cap <= SATURATED * CFG.utilization * 1.02


def test_a_window_with_shallow_queues_or_a_changed_fleet_starts_over() -> None:
    state, now = spread(CFG)
    state, now = overflow(CFG, state, now, 3)
    now += 15.0
    state = decide(CFG, window(now, 6.0, 2, queue=3.0), state, now, LIMIT).state  # shallow
    assert state.deep_since is None
    state, now = overflow(CFG, state, now, 3)
    assert state.full_batch == 0 and state.deep_since is not None
    # a fleet that changed within the window (here: a third replica came) starts over too
    now += 15.0
    state = decide(CFG, window(now, MAX_BATCH, 3, queue=30 * MAX_BATCH), state, now).state
    assert state.deep_since is None and state.full_batch == 0


@settings(max_examples=150, deadline=None)
@given(batches=st.lists(st.floats(1.0, float(MAX_BATCH)), min_size=1, max_size=20),
       # mostly deep: a whole window of deep evaluations is what the learning needs
       deep=st.lists(st.sampled_from([True, True, True, True, False]), min_size=20,
                     max_size=20))
def test_the_learned_max_batch_never_exceeds_the_models(batches: list[float],
                                                        deep: list[bool]) -> None:
    # whatever mixes of full and partial batches the windows hold (a mean batch is at most
    # the max), the learned max is a floor: the capacity never rises past full batches
    state, now = PolicyState(), 0.0
    for i, batch in enumerate(batches):
        now += 15.0
        queue = 10 * MAX_BATCH if deep[i] else 1.0
        state = decide(CFG, window(now, batch, 2, queue=queue), state, now, LIMIT).state
        assert 0 <= state.full_batch <= MAX_BATCH


def test_the_learned_max_batch_survives_a_restart() -> None:
    state, now = spread(CFG)
    state, now = overflow(CFG, state, now, 5)
    back, why = read_state({"state": json.dumps(state.to_dict()), "version": STATE_VERSION})
    assert why == "" and back.full_batch == MAX_BATCH
    forged, why = read_state({"state": json.dumps({**state.to_dict(), "full_batch": 2.5}),
                              "version": STATE_VERSION})
    assert forged == PolicyState() and why.startswith("unreadable")


def test_the_demos_example_repeats_its_replicas_batcher() -> None:
    # the demo applies the example to the local replica: what it declares is what that runs
    from dedicap_local import demo

    doc = yaml.safe_load((EXAMPLES / "modeldeployment-autoscaled.yaml").read_text())
    model = ModelSpec.model_validate(doc["spec"]["model"])
    assert model.max_batch_size == demo.DEMO_SIM["max_batch_size"]
    assert model.max_queue_delay_microseconds == demo.DEMO_SIM["max_queue_delay_us"]


@pytest.mark.parametrize("rows, expected", [(1.0, 8), (float("nan"), 8), (2.0, 4), (3.0, 2),
                                            (16.0, 1)])
def test_the_max_batch_counts_requests_as_the_policy_does(rows: float, expected: int) -> None:
    # Triton's max_batch_size counts rows; a client sending 2 rows a request fills it with 4
    cfg = replace(CFG, max_batch_size=MAX_BATCH)
    assert batch_in_requests(cfg, rows).max_batch_size == expected
    assert batch_in_requests(CFG, rows).max_batch_size is None


def test_a_declared_max_batch_below_what_triton_runs_is_reported() -> None:
    # Triton never runs more rows in a batch than the model's max: a mean above the declared
    # one proves the spec too low (each replica then planned for less than it serves)
    def snap(rows: float, available: bool = True) -> MetricsSnapshot:
        return MetricsSnapshot(available=available, queried_at=0.0, window_s=60.0,
                               percentile=95.0, mean_batch_size=rows)

    assert status.max_batch_understated(4, snap(3.9)) is None
    assert status.max_batch_understated(4, snap(4.05)) is None  # two rates' noise
    message = status.max_batch_understated(4, snap(6.2))
    assert message is not None and "spec.model.maxBatchSize (4)" in message
    # repeats aggregate into one Event: the message holds no measured figure
    assert status.max_batch_understated(4, snap(7.5)) == message
    assert status.max_batch_understated(None, snap(6.2)) is None  # nothing declared: learned
    assert status.max_batch_understated(4, snap(6.2, available=False)) is None
