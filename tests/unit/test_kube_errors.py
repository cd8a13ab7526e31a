"""How the operator reads the API server's refusals (kube.py)."""

from __future__ import annotations

from dedicap.controller.kube import KubeError

# What the NamespaceLifecycle admission answers a create in a namespace being deleted.
TERMINATING = {
    "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden",
    "code": 403,
    "message": 'poddisruptionbudgets.policy "m" is forbidden: unable to create new content in '
               "namespace t because it is being terminated",
    "details": {"name": "m", "group": "policy", "kind": "poddisruptionbudgets",
                "causes": [{"reason": "NamespaceTerminating",
                            "message": "namespace t is being terminated",
                            "field": "metadata.namespace"}]},
}


def test_a_create_in_a_terminating_namespace_is_told_apart_from_other_refusals() -> None:
    assert KubeError(403, "PATCH", "/x", TERMINATING).namespace_terminating
    rbac = {**TERMINATING, "message": "forbidden: User cannot patch", "details": {"causes": []}}
    assert not KubeError(403, "PATCH", "/x", rbac).namespace_terminating
    assert not KubeError(422, "PATCH", "/x", {**TERMINATING, "code": 422}).namespace_terminating
    assert not KubeError(403, "PATCH", "/x", "plain text").namespace_terminating
    assert not KubeError(0, "PATCH", "/x", None).namespace_terminating
