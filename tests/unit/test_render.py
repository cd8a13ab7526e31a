"""Rendering the children of a ModelDeployment: fields the design asks for, determinism."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from dedicap.api.models import GPUPoolSpec, ModelDeployment
from dedicap.decide.placement import Placement, PoolAssignment
from dedicap.decide.render import (
    LABEL_MD,
    LABEL_POOL,
    RenderOptions,
    deployment_name,
    render,
    selector_string,
)

POOLS = {
    "h100": GPUPoolSpec.model_validate({
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "gpu": {"product": "NVIDIA-H100-80GB-HBM3", "memoryGiB": 80}}),
    "a10g": GPUPoolSpec.model_validate({
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A10G"},
        "gpu": {"product": "NVIDIA-A10G", "memoryGiB": 24}}),
}


def _md(**spec: Any) -> ModelDeployment:
    body: dict[str, Any] = {
        "apiVersion": "dedicap.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "chat", "namespace": "acme", "uid": "u-1", "generation": 2},
        "spec": {"model": {"name": "chat-model", "repository": "s3://b/repo", "version": "3"},
                 "placement": {"pools": ["h100", "a10g"]}, "resources": {"gpusPerReplica": 2},
                 "access": {"namespaces": ["frontend"]}, **spec}}
    return ModelDeployment.model_validate(body)


def _placement(*assignments: tuple[str, int], gpus: int = 2) -> Placement:
    return Placement(sum(r for _, r in assignments), gpus,
                     tuple(PoolAssignment(p, 0, r) for p, r in assignments), ())


def _by_kind(children: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for c in children:
        out.setdefault(c["kind"], []).append(c)
    return out


def test_children_and_their_names() -> None:
    kids = _by_kind(render(_md(), _placement(("h100", 2), ("a10g", 1)), POOLS))
    assert [d["metadata"]["name"] for d in kids["Deployment"]] == ["chat-h100", "chat-a10g"]
    assert [d["spec"]["replicas"] for d in kids["Deployment"]] == [2, 1]
    assert {k: len(v) for k, v in kids.items()} == {
        "Deployment": 2, "Service": 1, "PodDisruptionBudget": 1, "NetworkPolicy": 1}
    for child in [c for group in kids.values() for c in group]:
        meta = child["metadata"]
        assert meta["namespace"] == "acme" and meta["labels"][LABEL_MD] == "chat"
        assert meta["ownerReferences"] == [{
            "apiVersion": "dedicap.dev/v1alpha1", "kind": "ModelDeployment", "name": "chat",
            "uid": "u-1", "controller": True, "blockOwnerDeletion": True}]


def test_triton_pod_template() -> None:
    dep = render(_md(), _placement(("h100", 2)), POOLS)[0]
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    (triton,) = spec["containers"]
    assert triton["command"] == ["tritonserver"]
    args = triton["args"]
    for expected in ("--model-repository=s3://b/repo", "--model-control-mode=explicit",
                     "--load-model=chat-model", "--metrics-config=summary_latencies=true"):
        assert expected in args
    assert {p["name"]: p["containerPort"] for p in triton["ports"]} == {
        "http": 8000, "grpc": 8001, "metrics": 8002}
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/models/chat-model/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    startup = triton["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    assert triton["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert spec["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert triton["securityContext"]["allowPrivilegeEscalation"] is False
    keys = [c["topologyKey"] for c in spec["topologySpreadConstraints"]]
    assert keys == ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
    assert pod["metadata"]["labels"][LABEL_POOL] == "h100"
    assert dep["spec"]["selector"]["matchLabels"] == {LABEL_MD: "chat", LABEL_POOL: "h100"}
    assert pod["metadata"]["annotations"]["dedicap.dev/model-version"] == "3"


def test_spec_changes_that_must_roll_the_pods_change_the_template() -> None:
    base = render(_md(), _placement(("h100", 1)), POOLS)[0]["spec"]["template"]
    for change in ({"triton": {"image": "nvcr.io/nvidia/tritonserver:25.02-py3"}},
                   {"resources": {"gpusPerReplica": 4}},
                   {"model": {"name": "chat-model", "repository": "s3://b/repo",
                              "version": "4"}}):
        other = render(_md(**change), _placement(("h100", 1)), POOLS)[0]["spec"]["template"]
        assert other != base, change


def test_network_policy_admits_namespace_access_and_scrapers_only() -> None:
    md = _md(access={"namespaces": ["frontend"], "namespaceSelector": {
        "matchLabels": {"team": "web"}}})
    options = RenderOptions(monitoring_namespaces=("monitoring",))
    (netpol,) = [c for c in render(md, _placement(("h100", 1)), POOLS, options)
                 if c["kind"] == "NetworkPolicy"]
    ingress = netpol["spec"]["ingress"]
    assert ingress[0]["from"] == [{"podSelector": {}}]
    assert ingress[1]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "frontend"}}},
        {"namespaceSelector": {"matchLabels": {"team": "web"}}}]
    assert [p["port"] for p in ingress[1]["ports"]] == [8000, 8001]
    assert [p["port"] for p in ingress[2]["ports"]] == [8002]
    assert netpol["spec"]["policyTypes"] == ["Ingress"]


def test_service_monitor_only_when_asked() -> None:
    without = render(_md(), _placement(("h100", 1)), POOLS)
    with_sm = render(_md(), _placement(("h100", 1)), POOLS, RenderOptions(service_monitor=True))
    assert "ServiceMonitor" not in {c["kind"] for c in without}
    (sm,) = [c for c in with_sm if c["kind"] == "ServiceMonitor"]
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"


def test_pvc_repository_is_mounted_read_only() -> None:
    md = _md(model={"name": "m", "repository": "pvc://models/triton/repo"})
    pod = render(md, _placement(("h100", 1)), POOLS)[0]["spec"]["template"]["spec"]
    assert {"name": "model-repository",
            "persistentVolumeClaim": {"claimName": "models", "readOnly": True}} in pod["volumes"]
    assert "--model-repository=/models/triton/repo" in pod["containers"][0]["args"]


def test_selector_string_matches_the_pods() -> None:
    assert selector_string("chat") == f"{LABEL_MD}=chat"


@given(
    replicas=st.dictionaries(st.sampled_from(["h100", "a10g"]), st.integers(0, 50), min_size=1),
    gpus=st.integers(1, 8),
    image_tag=st.from_regex(r"[0-9]{2}\.[0-9]{2}-py3", fullmatch=True),
    namespaces=st.lists(st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True), max_size=3,
                        unique=True),
)
def test_render_is_deterministic_and_pure(replicas: dict[str, int], gpus: int, image_tag: str,
                                          namespaces: list[str]) -> None:
    md = _md(triton={"image": f"nvcr.io/nvidia/tritonserver:{image_tag}"},
             resources={"gpusPerReplica": gpus}, access={"namespaces": namespaces})
    placement = _placement(*replicas.items(), gpus=gpus)
    before = copy.deepcopy(md)
    first = render(md, placement, POOLS)
    second = render(copy.deepcopy(md), placement, POOLS)
    assert json.dumps(first) == json.dumps(second)  # same content and the same key order
    assert md == before
    deployments = [c for c in first if c["kind"] == "Deployment"]
    # A Deployment per pool with replicas; with none placed, one empty one on the first pool.
    pools = [p for p, n in replicas.items() if n] or list(replicas)[:1]
    assert [d["metadata"]["name"] for d in deployments] == [
        deployment_name("chat", p) for p in pools]
    names = [(c["kind"], c["metadata"]["name"]) for c in first]
    assert len(names) == len(set(names))
    for d in deployments:
        pool = d["metadata"]["labels"][LABEL_POOL]
        assert d["spec"]["replicas"] == replicas[pool]
        requests = d["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
        assert requests["nvidia.com/gpu"] == str(gpus)


def test_a_streaming_llm_s_pods_name_their_metrics_profile() -> None:
    def pod(profile: str) -> dict[str, Any]:
        md = _md(model={"name": "m", "repository": "s3://b/r", "metricsProfile": profile})
        deployment = _by_kind(render(md, _placement(("h100", 1)), POOLS))["Deployment"][0]
        return dict(deployment["spec"]["template"])

    vllm, trt, plain = pod("vllm"), pod("tensorrtllm"), pod("request")
    assert vllm["metadata"]["annotations"]["dedicap.dev/metrics-profile"] == "vllm"
    assert "dedicap.dev/metrics-profile" not in plain["metadata"]["annotations"]
    # TensorRT-LLM: Triton's time-to-first-response histogram stands in for TTFT
    args = trt["spec"]["containers"][0]["args"]
    assert "--metrics-config=histogram_latencies=true" in args
    assert "--metrics-config=histogram_latencies=true" not in vllm["spec"]["containers"][0]["args"]
