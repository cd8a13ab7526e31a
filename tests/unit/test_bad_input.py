"""Generated objects through the operator's own parsers and renderers, without an API server:
every valid one parses, places, renders and reports without an exception and with finite
figures; every broken one is refused by the parser with the field named. (The campaign's
integration half sends the same cases through the API server: tests/campaign.)"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from pydantic import ValidationError

from badinput import MUTATIONS, SECRET, Case, cases, through_operator
from dedicap.api.models import CapacityReservation, GPUPool, ModelDeployment
from dedicap.controller.reconcile import validation_summary

MODELS: dict[str, Any] = {"ModelDeployment": ModelDeployment, "GPUPool": GPUPool,
                          "CapacityReservation": CapacityReservation}


def _with_uid(case: Case) -> dict[str, Any]:
    obj = dict(case.obj)
    obj["metadata"] = {**obj["metadata"], "uid": "u-1", "generation": 1}
    return obj


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(cases())
def test_what_the_parser_accepts_renders_and_what_it_refuses_names_the_field(
        case: Case) -> None:
    obj = _with_uid(case)
    if not case.parser_refuses:
        through_operator(obj)  # no exception, finite status
        return
    with pytest.raises(ValidationError) as err:
        MODELS[case.kind].model_validate(obj)
    summary = validation_summary(err.value)
    assert summary and SECRET not in summary, summary


@pytest.mark.parametrize("mutation", [m for m in MUTATIONS if "credentials" in m.name
                                      or "token" in m.name], ids=lambda m: m.name)
def test_a_repository_with_credentials_is_refused_without_repeating_them(mutation: Any
                                                                         ) -> None:
    obj: dict[str, Any] = {"apiVersion": "dedicap.dev/v1alpha1", "kind": "ModelDeployment",
                           "metadata": {"name": "m", "namespace": "t", "uid": "u"},
                           "spec": {"model": {"name": "m", "repository": "s3://b/m"},
                                    "placement": {"pools": ["p"]}}}
    mutation.apply(obj)
    with pytest.raises(ValidationError) as err:
        ModelDeployment.model_validate(obj)
    summary = validation_summary(err.value)
    assert "spec.model.repository" in summary and "envFromSecret" in summary, summary
    assert SECRET not in summary
