"""The API server itself rejects invalid objects, with a message that names the field.

No operator runs here: the CRD schema (structural types, bounds, patterns, CEL rules) and
kubectl's strict field validation do the work. `--dry-run=server` goes through the whole
validation chain of the API server and stores nothing.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "deploy" / "examples"


@pytest.fixture(scope="module")
def crds(stack: Any) -> None:
    stack.kubectl("apply", "-f", str(ROOT / "crds"))
    stack.wait_established("modeldeployments.dedicap.dev", "gpupools.dedicap.dev")


@pytest.fixture(scope="module")
def namespace(stack: Any, crds: None) -> Iterator[str]:
    name = f"dcp-val-{uuid.uuid4().hex[:6]}"
    stack.kubectl("create", "namespace", name)
    yield name
    stack.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _md() -> dict[str, Any]:
    return dict(yaml.safe_load((EXAMPLES / "modeldeployment-autoscaled.yaml").read_text()))


def _llm() -> dict[str, Any]:
    return dict(yaml.safe_load((EXAMPLES / "modeldeployment-llm.yaml").read_text()))


def _pool() -> dict[str, Any]:
    return dict(next(yaml.safe_load_all((EXAMPLES / "gpupools.yaml").read_text())))


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of doc with the dotted path set (or removed when value is ...)."""
    doc = copy.deepcopy(doc)
    *parents, leaf = path.split(".")
    node = doc
    for key in parents:
        node = node.setdefault(key, {})
    if value is ...:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return doc


# (what is wrong, the object, text the API server's answer must contain)
INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("percentile of 100", _set(_md(), "spec.autoscaling.slo.latency.percentile", 100),
     "spec.autoscaling.slo.latency.percentile"),
    ("percentile of 0", _set(_md(), "spec.autoscaling.slo.latency.percentile", 0),
     "spec.autoscaling.slo.latency.percentile"),
    ("minReplicas above maxReplicas", _set(_md(), "spec.autoscaling.minReplicas", 20),
     "spec.autoscaling.minReplicas"),
    ("negative GPUs per replica", _set(_md(), "spec.resources.gpusPerReplica", -1),
     "spec.resources.gpusPerReplica"),
    ("a max batch of 0", _set(_md(), "spec.model.maxBatchSize", 0),
     "spec.model.maxBatchSize"),
    ("a negative queue delay", _set(_md(), "spec.model.maxQueueDelayMicroseconds", -5),
     "spec.model.maxQueueDelayMicroseconds"),
    ("unknown field", _set(_md(), "spec.gpus", 4), 'unknown field "spec.gpus"'),
    ("unknown nested field", _set(_md(), "spec.resources.gpu", 1),
     'unknown field "spec.resources.gpu"'),
    ("pool name not a DNS label", _set(_md(), "spec.placement.pools", ["H100_pool"]),
     "spec.placement.pools[0]"),
    ("no pools", _set(_md(), "spec.placement.pools", []), "spec.placement.pools"),
    ("replicas outside [min, max]", _set(_md(), "spec.replicas", 50), "spec.replicas"),
    ("error ratio above 1", _set(_md(), "spec.autoscaling.slo.errorRate.max", 2),
     "spec.autoscaling.slo.errorRate.max"),
    ("zero latency target", _set(_md(), "spec.autoscaling.slo.latency.targetMs", 0),
     "spec.autoscaling.slo.latency.targetMs"),
    ("empty SLO", _set(_md(), "spec.autoscaling.slo", {}), "spec.autoscaling.slo"),
    ("missing model name", _set(_md(), "spec.model.name", ...), "spec.model.name"),
    ("unsupported repository scheme", _set(_md(), "spec.model.repository", "ftp://host/repo"),
     "spec.model.repository"),
    ("CPU not a quantity", _set(_md(), "spec.resources.cpu", "two"), "spec.resources.cpu"),
    ("access namespace not a name", _set(_md(), "spec.access.namespaces", ["Bad_NS"]),
     "spec.access.namespaces[0]"),
    ("name too long for child names", _set(_md(), "metadata.name", "m" * 43), "metadata.name"),
    ("token objective on a request-level model",
     _set(_llm(), "spec.model.metricsProfile", "request"), "spec.model.metricsProfile"),
    ("time per output token on TensorRT-LLM",
     _set(_llm(), "spec.model.metricsProfile", "tensorrtllm"),
     "spec.autoscaling.slo.timePerOutputToken"),
    ("unknown metrics profile", _set(_llm(), "spec.model.metricsProfile", "tgi"),
     "spec.model.metricsProfile"),
    ("zero TTFT target", _set(_llm(), "spec.autoscaling.slo.timeToFirstToken.targetMs", 0),
     "spec.autoscaling.slo.timeToFirstToken.targetMs"),
    ("pool without a node selector", _set(_pool(), "spec.nodeSelector", {}),
     "spec.nodeSelector"),
    ("negative GPU price", _set(_pool(), "spec.pricePerGPUHour", -1), "spec.pricePerGPUHour"),
    ("pool name too long", _set(_pool(), "metadata.name", "p" * 21), "metadata.name"),
]


@pytest.mark.parametrize(("case", "doc", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_the_api_server_rejects_invalid_specs_naming_the_field(
        stack: Any, namespace: str, case: str, doc: dict[str, Any], field: str) -> None:
    if doc["kind"] == "ModelDeployment":
        doc = _set(doc, "metadata.namespace", namespace)
    proc = stack.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(doc),
                         check=False)
    assert proc.returncode != 0, f"{case}: accepted"
    assert field in proc.stderr, f"{case}: {proc.stderr}"


def test_the_examples_are_accepted(stack: Any, namespace: str) -> None:
    for doc in (_set(_md(), "metadata.namespace", namespace),
                _set(_llm(), "metadata.namespace", namespace), _pool()):
        stack.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(doc))


def test_kubectl_scale_beyond_maxreplicas_is_rejected(stack: Any, namespace: str) -> None:
    doc = _set(_md(), "metadata.namespace", namespace)
    doc["metadata"]["name"] = "scaled"
    stack.kubectl("apply", "-f", "-", input=json.dumps(doc))
    proc = stack.kubectl("scale", "md/scaled", "-n", namespace, "--replicas=30", check=False)
    assert proc.returncode != 0 and "spec.replicas" in proc.stderr, proc.stderr
    stack.kubectl("scale", "md/scaled", "-n", namespace, "--replicas=5")
    assert json.loads(stack.kubectl("get", "md/scaled", "-n", namespace, "-o", "json").stdout)[
        "spec"]["replicas"] == 5
    stack.kubectl("delete", "md/scaled", "-n", namespace)


def test_explain_reads_well(stack: Any, crds: None) -> None:
    text = stack.kubectl("explain", "modeldeployment.spec.autoscaling").stdout
    assert "minReplicas" in text and "autoscaler owns `spec.replicas`" in text
    text = stack.kubectl("explain", "modeldeployment.spec.autoscaling.slo.timeToFirstToken"
                         ).stdout
    assert "metricsProfile" in text and "prefill" in text
