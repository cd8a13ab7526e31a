"""The NetworkPolicy evaluator against the semantics of networking.k8s.io/v1, case by case (the
cases of the Kubernetes documentation's examples), and against the policy dedicap renders."""

from __future__ import annotations

from typing import Any

import pytest

from dedicap.api.models import ModelDeployment
from dedicap.decide.render import RenderOptions, render_network_policy
from dedicap_local.netpol import External, Pod, allowed, policy_types, selects

NS = {"app": {"kubernetes.io/metadata.name": "app"},
      "web": {"kubernetes.io/metadata.name": "web", "team": "web"},
      "ops": {"kubernetes.io/metadata.name": "ops"}}
DB = Pod("app", "db", {"role": "db"}, "10.0.0.1", {("http", "TCP"): 8080})
API = Pod("app", "api", {"role": "api"}, "10.0.0.2")
WEB = Pod("web", "front", {"role": "front"}, "10.0.1.1")
OPS = Pod("ops", "tool", {"role": "api"}, "10.0.2.1")


def policy(spec: dict[str, Any], namespace: str = "app") -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": namespace}, "spec": spec}


def test_selectors() -> None:
    assert selects({}, {}) and selects({}, {"a": "b"})
    assert not selects(None, {"a": "b"})
    expr = {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                                 {"key": "env", "operator": "DoesNotExist"}]}
    assert selects(expr, {"tier": "a"}) and not selects(expr, {"tier": "c"})
    assert not selects(expr, {"tier": "a", "env": "x"})
    assert selects({"matchExpressions": [{"key": "x", "operator": "NotIn", "values": ["1"]}]},
                   {})
    assert policy_types(policy({"egress": []})) == ["Ingress", "Egress"]


def test_no_policy_allows_everything_and_an_empty_one_isolates() -> None:
    assert allowed([], NS, WEB, DB, 5432)
    deny = policy({"podSelector": {}, "policyTypes": ["Ingress"]})
    assert not allowed([deny], NS, API, DB, 5432)
    assert allowed([deny], NS, DB, WEB, 80)  # other namespaces are not isolated


def test_peers_pod_namespace_and_both() -> None:
    only_pods = policy({"podSelector": {"matchLabels": {"role": "db"}},
                        "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "api"}}}]}]})
    assert allowed([only_pods], NS, API, DB, 1)
    assert not allowed([only_pods], NS, OPS, DB, 1)  # same labels, other namespace
    by_ns = policy({"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"team": "web"}}}]}]})
    assert allowed([by_ns], NS, WEB, DB, 1) and not allowed([by_ns], NS, API, DB, 1)
    both = policy({"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "api"}}}]}]})
    assert allowed([both], NS, OPS, DB, 1) and not allowed([both], NS, WEB, DB, 1)
    # Two peers are a union, not an intersection.
    either = policy({"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"team": "web"}}},
        {"podSelector": {"matchLabels": {"role": "api"}}}]}]})
    assert allowed([either], NS, WEB, DB, 1) and allowed([either], NS, API, DB, 1)


def test_ip_blocks_and_outside_sources() -> None:
    p = policy({"podSelector": {}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.128/25"]}}]}]})
    assert allowed([p], NS, External("203.0.113.5"), DB, 1)
    assert not allowed([p], NS, External("203.0.113.200"), DB, 1)
    assert not allowed([p], NS, WEB, DB, 1)
    selectors_only = policy({"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {}}]}]})
    assert not allowed([selectors_only], NS, External("198.51.100.1"), DB, 1)


def test_ports_numbers_names_ranges_protocols() -> None:
    p = policy({"podSelector": {}, "ingress": [{"ports": [
        {"port": "http"}, {"port": 9000, "endPort": 9002}, {"port": 53, "protocol": "UDP"}]}]})
    assert allowed([p], NS, WEB, DB, 8080)  # the named port of the destination
    assert not allowed([p], NS, WEB, API, 8080)  # API has no port named http
    assert allowed([p], NS, WEB, DB, 9001) and not allowed([p], NS, WEB, DB, 9003)
    assert allowed([p], NS, WEB, DB, 53, "UDP") and not allowed([p], NS, WEB, DB, 53)


def test_policies_add_up_and_egress_counts_too() -> None:
    a = policy({"podSelector": {}, "ingress": [{"ports": [{"port": 1}]}]})
    b = policy({"podSelector": {}, "ingress": [{"ports": [{"port": 2}]}]})
    assert allowed([a, b], NS, WEB, DB, 1) and allowed([a, b], NS, WEB, DB, 2)
    no_egress = policy({"podSelector": {}, "policyTypes": ["Egress"]}, namespace="web")
    assert not allowed([no_egress], NS, WEB, DB, 1)
    assert allowed([no_egress], NS, External("1.2.3.4"), WEB, 1)


@pytest.mark.parametrize(("source", "port", "expected"), [
    (Pod("tenant", "any", {}), 8000, True), (Pod("tenant", "any", {}), 8002, True),
    (Pod("caller", "c", {}), 8001, True), (Pod("caller", "c", {}), 8002, False),
    (Pod("labelled", "c", {}), 8000, True),
    (Pod("monitoring", "prom", {}), 8002, True), (Pod("monitoring", "prom", {}), 8000, False),
    (Pod("other", "x", {}), 8000, False), (Pod("other", "x", {}), 8002, False),
    (External("203.0.113.5"), 8000, False),
])
def test_the_rendered_policy_admits_what_the_access_spec_says(
        source: Pod | External, port: int, expected: bool) -> None:
    md = ModelDeployment.model_validate({
        "metadata": {"name": "chat", "namespace": "tenant", "uid": "u"},
        "spec": {"model": {"name": "m", "repository": "s3://b/m"},
                 "placement": {"pools": ["p"]},
                 "access": {"namespaces": ["caller"],
                            "namespaceSelector": {"matchLabels": {"team": "fe"}}}}})
    np = render_network_policy(md, RenderOptions(monitoring_namespaces=("monitoring",)))
    namespaces = {n: {"kubernetes.io/metadata.name": n} for n in
                  ("tenant", "caller", "monitoring", "other")}
    namespaces["labelled"] = {"kubernetes.io/metadata.name": "labelled", "team": "fe"}
    replica = Pod("tenant", "chat-0", {"dedicap.dev/modeldeployment": "chat"})
    assert allowed([np], namespaces, source, replica, port) is expected
