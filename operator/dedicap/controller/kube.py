"""A small, typed door to the Kubernetes API: get, list, server-side apply, merge-patch status,
delete. It talks JSON over the official client's authenticated connection and knows the paths
of the few kinds dedicap touches, so no discovery round trips are needed at start-up.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import kubernetes

FIELD_MANAGER = "dedicap"


@dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str
    plural: str
    namespaced: bool

    @property
    def base(self) -> str:
        group_version = self.api_version
        return f"/api/{group_version}" if "/" not in group_version else f"/apis/{group_version}"

    def path(self, namespace: str | None = None, name: str | None = None,
             subresource: str | None = None) -> str:
        parts = [self.base]
        if self.namespaced and namespace:
            parts.append(f"namespaces/{quote(namespace)}")
        parts.append(self.plural)
        if name:
            parts.append(quote(name))
        if subresource:
            parts.append(subresource)
        return "/".join(parts)


KINDS: dict[str, Kind] = {k.kind: k for k in (
    Kind("v1", "Node", "nodes", False),
    Kind("v1", "Pod", "pods", True),
    Kind("v1", "Service", "services", True),
    Kind("v1", "Namespace", "namespaces", False),
    Kind("apps/v1", "Deployment", "deployments", True),
    Kind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets", True),
    Kind("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies", True),
    Kind("monitoring.coreos.com/v1", "ServiceMonitor", "servicemonitors", True),
    Kind("dedicap.dev/v1alpha1", "ModelDeployment", "modeldeployments", True),
    Kind("dedicap.dev/v1alpha1", "GPUPool", "gpupools", False),
    Kind("dedicap.dev/v1alpha1", "CapacityReservation", "capacityreservations", False),
    Kind("kopf.dev/v1", "ClusterKopfPeering", "clusterkopfpeerings", False),
    Kind("apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions",
         False),
)}


class KubeError(Exception):
    """A non-2xx answer of the API server, with its Status message."""

    def __init__(self, status: int, method: str, path: str, body: Any) -> None:
        self.status = status
        self.body = body
        message = body.get("message") if isinstance(body, dict) else str(body)[:500]
        super().__init__(f"{method} {path}: HTTP {status}: {message}")

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


def load_config(kubeconfig: str | None = None) -> kubernetes.client.ApiClient:
    """An API client from the in-cluster service account, else from the kubeconfig."""
    configuration = kubernetes.client.Configuration()
    try:
        if kubeconfig is not None:
            raise kubernetes.config.ConfigException("explicit kubeconfig")
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(config_file=kubeconfig,
                                           client_configuration=configuration)
    return kubernetes.client.ApiClient(configuration)


class Kube:
    """Thread-safe: the handlers run in kopf's executor threads and share one client."""

    def __init__(self, api: kubernetes.client.ApiClient, timeout: float = 30.0) -> None:
        self._api = api
        self._timeout = timeout
        self._lock = threading.Lock()
        # Told of every failed request: (verb, HTTP status or "error" for no answer).
        self.on_error: Callable[[str, int | str], None] | None = None

    def request(self, method: str, path: str, *, query: Mapping[str, str] | None = None,
                body: Any = None, content_type: str = "application/json") -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        with self._lock:  # param_serialize mutates shared default headers
            _, url, headers, body, _ = self._api.param_serialize(
                method=method, resource_path=path,
                query_params=list((query or {}).items()), header_params=headers, body=body,
                auth_settings=["BearerToken"])
        try:
            response = self._api.call_api(method, url, header_params=headers, body=body,
                                          _request_timeout=self._timeout)
        except Exception:
            if self.on_error is not None:
                self.on_error(method, "error")
            raise
        raw = response.read()
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        if not 200 <= response.status < 300:
            if self.on_error is not None:
                self.on_error(method, response.status)
            raise KubeError(response.status, method, path, data)
        return data

    # -------------------------------------------------------------------- reads

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            return dict(self.request("GET", KINDS[kind].path(namespace, name)))
        except KubeError as err:
            if err.not_found:
                return None
            raise

    def list(self, kind: str, namespace: str | None = None, *, labels: str | None = None,
             fields: str | None = None) -> list[dict[str, Any]]:
        return list(self.iter(kind, namespace, labels=labels, fields=fields))

    def iter(self, kind: str, namespace: str | None = None, *, labels: str | None = None,
             fields: str | None = None, page: int = 500) -> Iterator[dict[str, Any]]:
        query: dict[str, str] = {"limit": str(page)}
        if labels:
            query["labelSelector"] = labels
        if fields:
            query["fieldSelector"] = fields
        info = KINDS[kind]
        while True:
            data = self.request("GET", info.path(namespace), query=query)
            for item in data.get("items", []):
                # List items carry no apiVersion/kind; callers want whole objects.
                item.setdefault("apiVersion", info.api_version)
                item.setdefault("kind", info.kind)
                yield item
            token = (data.get("metadata") or {}).get("continue")
            if not token:
                return
            query["continue"] = token

    # -------------------------------------------------------------------- writes

    def apply(self, obj: Mapping[str, Any], *, subresource: str | None = None) -> dict[str, Any]:
        """Server-side apply with dedicap's one field manager, taking over conflicting fields
        (the operator is the owner of its children)."""
        meta = obj["metadata"]
        path = KINDS[obj["kind"]].path(meta.get("namespace"), meta["name"], subresource)
        return dict(self.request(
            "PATCH", path, query={"fieldManager": FIELD_MANAGER, "force": "true"},
            body=dict(obj), content_type="application/apply-patch+yaml"))

    def patch_merge(self, kind: str, name: str, patch: Mapping[str, Any], *,
                    namespace: str | None = None, subresource: str | None = None,
                    ) -> dict[str, Any]:
        return dict(self.request(
            "PATCH", KINDS[kind].path(namespace, name, subresource),
            query={"fieldManager": FIELD_MANAGER}, body=dict(patch),
            content_type="application/merge-patch+json"))

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        return dict(self.request("POST", KINDS[obj["kind"]].path(meta.get("namespace")),
                                 query={"fieldManager": FIELD_MANAGER}, body=dict(obj)))

    def delete(self, kind: str, name: str, namespace: str | None = None, *,
               uid: str | None = None) -> bool:
        """Delete in the background (the garbage collector removes what it owns). With `uid`,
        only that incarnation is deleted: a same-named successor is left alone. False when
        there was nothing to delete."""
        body: dict[str, Any] = {"propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self.request("DELETE", KINDS[kind].path(namespace, name), body=body)
            return True
        except KubeError as err:
            if err.not_found or err.conflict:
                return False
            raise
