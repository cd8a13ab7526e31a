"""The committed CRDs and chart templates are exactly what the code generates, and the CRDs are
structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from dedicap import manifests
from dedicap.api import crdgen
from dedicap.api.structural import SchemaError, structural

ROOT = Path(__file__).resolve().parents[2]


def test_committed_manifests_match_a_fresh_generation() -> None:
    problems = manifests.check(ROOT)
    assert not problems, "drifted from the code; run `dedicap crds`:\n" + "\n".join(problems)


def test_check_reports_a_hand_edit(tmp_path: Path) -> None:
    manifests.write(tmp_path)
    assert manifests.check(tmp_path) == []
    target = tmp_path / "charts/dedicap/templates/crds/dedicap.dev_modeldeployments.yaml"
    target.write_text(target.read_text().replace("maxReplicas", "maxReplica", 1))
    (tmp_path / "crds" / "stray.yaml").write_text("{}\n")
    problems = manifests.check(tmp_path)
    assert any("dedicap.dev_modeldeployments.yaml" in p for p in problems)
    assert any("stray.yaml" in p for p in problems)
    assert manifests.main(["--check", "--root", str(tmp_path)]) == 1


def test_chart_templates_keep_what_outlives_the_release() -> None:
    """CRDs behind crds.enabled and kept while crds.keep; the PriorityClasses (tenants' pods
    name them) and the tenant ClusterRoles (tenants reach their objects through them) always
    kept. The generated text is the plain CRD's, with the chart's labels."""
    rendered = manifests.rendered()
    crd = rendered[manifests.CHART_CRDS_DIR / "dedicap.dev_modeldeployments.yaml"]
    assert crd.splitlines()[1] == "{{- if .Values.crds.enabled }}"
    assert "{{- if .Values.crds.keep }}\n    helm.sh/resource-policy: keep" in crd
    assert 'include "dedicap.labels"' in crd
    plain = yaml.safe_load(rendered[manifests.CRDS_DIR / "dedicap.dev_modeldeployments.yaml"])
    body = crd.split("\nspec:\n", 1)[1].rsplit("{{- end }}", 1)[0]
    assert yaml.safe_load("spec:\n" + body)["spec"] == plain["spec"]
    for name in ("priorityclasses.yaml", "tenant-clusterroles.yaml"):
        text = rendered[manifests.CHART / "templates" / name]
        assert text.count("helm.sh/resource-policy: keep") == 2
        assert "app.kubernetes.io/managed-by: dedicap" not in text  # Helm's label says it


def test_helm_expressions_in_generated_text_are_refused() -> None:
    with pytest.raises(ValueError, match="Helm"):
        manifests.chart_template({"apiVersion": "v1", "kind": "ConfigMap",
                                  "metadata": {"name": "x"}, "data": {"a": "{{ .Values }}"}},
                                 keep=None)


def _schema(kind: str) -> dict[str, Any]:
    for crd in crdgen.all_crds():
        if crd["spec"]["names"]["kind"] == kind:
            return dict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    raise KeyError(kind)


def _walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for name, child in node.get("properties", {}).items():
        out += _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        out += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        out += _walk(node["additionalProperties"], f"{path}{{}}")
    return out


@pytest.mark.parametrize("kind", ["ModelDeployment", "GPUPool", "CapacityReservation"])
def test_schemas_are_structural_and_documented(kind: str) -> None:
    for path, node in _walk(_schema(kind)):
        assert ("$ref" not in node and "anyOf" not in node) or node.get(
            "x-kubernetes-int-or-string"), path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path
        assert not ("properties" in node and "additionalProperties" in node), path
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert node.get(bound, True) is True, f"{path}: {bound} must be boolean"
        assert "title" not in node and "nullable" not in node, path
        named_field = path and not path.endswith(("[]", "{}"))
        if named_field and path not in (".apiVersion", ".kind", ".metadata"):
            assert node.get("description"), f"{path} has no description for kubectl explain"


def test_modeldeployment_crd_shape() -> None:
    crd = crdgen.crd(crdgen.KINDS[0])
    version = crd["spec"]["versions"][0]
    assert crd["spec"]["names"]["shortNames"] == ["md"]
    assert crd["spec"]["scope"] == "Namespaced"
    assert version["subresources"] == {"status": {}, "scale": {
        "specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector"}}
    shown = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert shown == ["Ready", "Replicas", "Pool", "P95", "TTFT", "Errors", "SLO", "Age"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    auto = spec["properties"]["autoscaling"]
    assert auto["x-kubernetes-validations"][0]["rule"] == "self.minReplicas <= self.maxReplicas"
    assert any("self.replicas" in r["rule"] for r in spec["x-kubernetes-validations"])
    percentile = auto["properties"]["slo"]["properties"]["latency"]["properties"]["percentile"]
    assert percentile["minimum"] == 0 and percentile["exclusiveMinimum"] is True
    assert percentile["maximum"] == 100 and percentile["exclusiveMaximum"] is True
    # Optional objects whose fields have defaults are defaulted themselves, so the inner
    # defaults apply when a user leaves the whole object out.
    assert spec["properties"]["triton"]["default"] == {}
    assert spec["properties"]["triton"]["properties"]["image"]["default"].startswith("nvcr.io/")
    assert "x-kubernetes-preserve-unknown-fields" not in yaml.safe_dump(spec)


def test_gpupool_and_reservation_are_cluster_scoped_with_columns() -> None:
    crds = {c["spec"]["names"]["kind"]: c for c in crdgen.all_crds()}
    pool = crds["GPUPool"]["spec"]
    assert pool["scope"] == "Cluster"
    columns = [c["name"] for c in pool["versions"][0]["additionalPrinterColumns"]]
    assert columns[:5] == ["GPU", "Nodes", "GPUs", "Allocated", "Free"]
    assert crds["CapacityReservation"]["spec"]["scope"] == "Cluster"
    assert {"ClusterKopfPeering", "KopfPeering"} <= set(crds)


def test_list_map_keys_are_required_or_defaulted() -> None:
    # The API server refuses a list-map whose key fields could be absent.
    for kind in ("ModelDeployment", "GPUPool", "CapacityReservation"):
        for path, node in _walk(_schema(kind)):
            for key in node.get("x-kubernetes-list-map-keys", []):
                item = node["items"]
                assert key in item.get("required", []) or "default" in item["properties"][key], (
                    path, key)


def test_structural_rejects_what_kubernetes_cannot_express() -> None:
    with pytest.raises(SchemaError):
        structural({"anyOf": [{"type": "integer"}, {"type": "boolean"}]})
    with pytest.raises(SchemaError):
        structural({"type": "object", "properties": {"x": {"$ref": "#/$defs/Missing"}}})
    assert structural({"anyOf": [{"type": "integer"}, {"type": "string", "pattern": "^a"}]}) == {
        "x-kubernetes-int-or-string": True, "pattern": "^a"}
    assert structural({"type": "integer", "exclusiveMinimum": 0}) == {
        "type": "integer", "minimum": 0, "exclusiveMinimum": True}


def test_stdout_mode_prints_every_crd(capsys: pytest.CaptureFixture[str]) -> None:
    assert manifests.main(["--stdout"]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert sorted(d["metadata"]["name"] for d in docs) == sorted(
        c["metadata"]["name"] for c in crdgen.all_crds())
