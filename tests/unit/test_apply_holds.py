"""When the operator writes a child: only when the cluster's copy lacks a field it sets."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from dedicap.controller.apply import Action, holds, merge_created

DESIRED: dict[str, Any] = {
    "apiVersion": "v1", "kind": "Service",
    "metadata": {"name": "chat", "labels": {"a": "b"}},
    "spec": {"ports": [{"name": "http", "port": 8000}], "type": "ClusterIP"},
}


def test_fields_added_by_others_are_no_difference() -> None:
    actual = {**DESIRED, "metadata": {**DESIRED["metadata"], "uid": "u",
                                      "annotations": {"x": "y"}, "resourceVersion": "7"},
              "spec": {**DESIRED["spec"], "clusterIP": "10.0.0.1",
                       "ports": [{"name": "http", "port": 8000, "protocol": "TCP"}]},
              "status": {}}
    assert holds(DESIRED, actual)


def test_a_changed_or_missing_field_or_list_item_is_a_difference() -> None:
    assert not holds(DESIRED, {**DESIRED, "spec": {**DESIRED["spec"], "type": "NodePort"}})
    assert not holds(DESIRED, {**DESIRED, "metadata": {"name": "chat"}})
    assert not holds(DESIRED, {**DESIRED, "spec": {"ports": [], "type": "ClusterIP"}})
    two = [{"name": "http", "port": 8000}, {"name": "grpc", "port": 8001}]
    assert not holds(DESIRED, {**DESIRED, "spec": {"ports": two, "type": "ClusterIP"}})
    assert not holds(DESIRED, None)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                 max_size=3),
    max_leaves=10)


@given(json_values)
def test_everything_holds_itself(value: Any) -> None:
    assert holds(value, value)


def test_children_created_together_are_one_event_and_other_actions_stay() -> None:
    actions = [Action("Normal", "Created", "created Deployment chat-h100"),
               Action("Normal", "Updated", "updated Service chat"),
               Action("Normal", "Created", "created PodDisruptionBudget chat")]
    merged = merge_created(actions)
    assert merged == [Action("Normal", "Created",
                             "created Deployment chat-h100, PodDisruptionBudget chat"),
                      Action("Normal", "Updated", "updated Service chat")]
    # a single creation is left as it is
    assert merge_created(actions[:2]) == actions[:2]
