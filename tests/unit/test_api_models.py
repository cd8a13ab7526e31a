"""The pydantic models: examples parse, defaults match the CRD, cross-field rules hold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from dedicap.api.models import (
    CapacityReservation,
    GPUPool,
    ModelDeployment,
    ModelDeploymentSpec,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
KINDS = {"ModelDeployment": ModelDeployment, "GPUPool": GPUPool,
         "CapacityReservation": CapacityReservation}


def _spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": {"name": "m", "repository": "s3://bucket/repo"},
                            "placement": {"pools": ["h100"]}}
    spec.update(overrides)
    return spec


def test_every_example_parses() -> None:
    seen = set()
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                KINDS[doc["kind"]].model_validate(doc)
                seen.add(doc["kind"])
    assert seen == set(KINDS)


def test_defaults_fill_nested_objects() -> None:
    spec = ModelDeploymentSpec.model_validate(_spec())
    assert spec.triton.image.startswith("nvcr.io/nvidia/tritonserver:")
    assert spec.resources.gpus_per_replica == 1
    assert spec.placement.spread.when_unsatisfiable == "ScheduleAnyway"
    assert spec.access.namespaces == []
    assert spec.desired_replicas() == 1


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"replicas": 4}, 4),
    ({"autoscaling": {"minReplicas": 2, "maxReplicas": 5, "slo": {"errorRate": {"max": 0.01}}}},
     2),
    ({"replicas": 3, "autoscaling": {"minReplicas": 2, "maxReplicas": 5,
                                     "slo": {"errorRate": {"max": 0.01}}}}, 3),
    ({"replicas": 0}, 0),
])
def test_desired_replicas(overrides: dict[str, Any], expected: int) -> None:
    assert ModelDeploymentSpec.model_validate(_spec(**overrides)).desired_replicas() == expected


@pytest.mark.parametrize(("overrides", "field"), [
    ({"autoscaling": {"minReplicas": 5, "maxReplicas": 2, "slo": {"errorRate": {"max": 0}}}},
     "minReplicas"),
    ({"replicas": 9, "autoscaling": {"maxReplicas": 2, "slo": {"errorRate": {"max": 0}}}},
     "spec.replicas"),
    ({"autoscaling": {"maxReplicas": 2, "slo": {"latency": {"percentile": 100,
                                                            "targetMs": 10}}}}, "percentile"),
    ({"resources": {"gpusPerReplica": -1}}, "gpusPerReplica"),
    ({"placement": {"pools": ["H100_Pool"]}}, "pools"),
    ({"placement": {"pools": []}}, "pools"),
    ({"model": {"name": "m", "repository": "ftp://x"}}, "repository"),
    # token-level objectives need an LLM backend's metrics; per-token latency needs vLLM's
    ({"autoscaling": {"maxReplicas": 2, "slo": {"timeToFirstToken": {"targetMs": 500}}}},
     "metricsProfile"),
    ({"model": {"name": "m", "repository": "s3://b/r", "metricsProfile": "tensorrtllm"},
      "autoscaling": {"maxReplicas": 2, "slo": {"timePerOutputToken": {"targetMs": 50}}}},
     "timePerOutputToken"),
    ({"model": {"name": "m", "repository": "s3://b/r", "metricsProfile": "tgi"}},
     "metricsProfile"),
])
def test_invalid_specs_are_rejected_naming_the_field(overrides: dict[str, Any],
                                                     field: str) -> None:
    with pytest.raises(ValidationError) as err:
        ModelDeploymentSpec.model_validate(_spec(**overrides))
    assert field in str(err.value)


def test_wire_round_trip_uses_the_kubernetes_names() -> None:
    doc = yaml.safe_load((EXAMPLES / "modeldeployment-autoscaled.yaml").read_text())
    md = ModelDeployment.model_validate(doc)
    wire = md.wire()
    assert wire["spec"]["resources"]["gpuMemoryGiB"] == 20
    assert wire["spec"]["autoscaling"]["slo"]["errorRate"] == {"max": 0.001}
    assert wire["spec"]["model"]["maxBatchSize"] == 4
    assert "replicas" not in wire["spec"]  # optional and unset: absent, never null
    assert ModelDeployment.model_validate(wire) == md


def test_token_objectives_on_llm_profiles() -> None:
    ttft = {"maxReplicas": 2, "slo": {"timeToFirstToken": {"targetMs": 500}}}
    spec = ModelDeploymentSpec.model_validate(_spec(
        model={"name": "m", "repository": "s3://b/r", "metricsProfile": "tensorrtllm"},
        autoscaling=ttft))
    assert spec.llm and spec.autoscaling is not None and spec.autoscaling.slo.token_level
    slo = spec.autoscaling.slo.time_to_first_token
    assert slo is not None and slo.percentile == 95.0
    plain = ModelDeploymentSpec.model_validate(_spec())
    assert plain.model.metrics_profile == "request" and not plain.llm
