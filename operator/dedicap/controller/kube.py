"""A small, typed door to the Kubernetes API: get, list, server-side apply, merge-patch status,
delete. It talks JSON over the official client's authenticated connection and knows the paths
of the few kinds dedicap touches, so no discovery round trips are needed at start-up.
"""

from __future__ import annotations

import builtins
import json
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import kubernetes
import urllib3

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
    # What capacity management writes.
    Kind("v1", "ResourceQuota", "resourcequotas", True),
    Kind("scheduling.k8s.io/v1", "PriorityClass", "priorityclasses", False),
    Kind("rbac.authorization.k8s.io/v1", "Role", "roles", True),
    Kind("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings", True),
    Kind("rbac.authorization.k8s.io/v1", "ClusterRole", "clusterroles", False),
    Kind("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "clusterrolebindings", False),
)}


class KubeError(Exception):
    """A request the API server did not answer with a 2xx: a non-2xx answer with its Status
    message, or (`status` 0) no answer at all — connection refused or reset, a timeout, a TLS
    failure — as while the API server restarts. Every loop of the operator handles this one
    exception, so an API server that is down costs a round, never the loop."""

    def __init__(self, status: int, method: str, path: str, body: Any) -> None:
        self.status = status
        self.body = body
        message = body.get("message") if isinstance(body, dict) else str(body)[:500]
        what = f"HTTP {status}" if status else "no answer"
        super().__init__(f"{method} {path}: {what}: {message}")

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def gone(self) -> bool:
        """410: a watch's resourceVersion is too old; list again."""
        return self.status == 410

    @property
    def unreachable(self) -> bool:
        return self.status == 0

    @property
    def namespace_terminating(self) -> bool:
        """403 from the NamespaceLifecycle admission: nothing new may be created in a namespace
        being deleted."""
        details = self.body.get("details") if isinstance(self.body, dict) else None
        causes = (details or {}).get("causes") or [] if isinstance(details, dict) else []
        return self.status == 403 and any(
            isinstance(c, dict) and c.get("reason") == "NamespaceTerminating" for c in causes)


# What the client raises when the API server does not answer: urllib3's errors (refused,
# reset, timeouts, TLS; MaxRetryError wraps the first ones), the client's own status-0
# ApiException (it turns TLS errors into one) and socket-level OSErrors.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    urllib3.exceptions.HTTPError, kubernetes.client.exceptions.ApiException, OSError)


# Characters YAML does not take raw: DEL and the C1 controls are refused, NEL and the Unicode
# line and paragraph separators would be read as line breaks, a byte-order mark may be dropped.
_YAML_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff]")


def apply_body(obj: Mapping[str, Any]) -> bytes:
    """A server-side apply patch: JSON (which is YAML) that the API server's YAML reader takes
    back unchanged. Not the client's own json.dumps: its ASCII escapes of characters beyond the
    Basic Multilingual Plane are surrogate pairs ("\\ud83e..."), which that reader refuses
    (HTTP 400). UTF-8 as it is, but for the characters YAML will not take raw, escaped."""
    text = json.dumps(dict(obj), ensure_ascii=False)
    return _YAML_UNSAFE.sub(lambda m: f"\\u{ord(m[0]):04x}", text).encode()


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


# Called after every request with (method, path, status); status 0: no answer.
RequestObserver = Callable[[str, str, int], None]


class Kube:
    """Thread-safe: the operator's threads share one client."""

    def __init__(self, api: kubernetes.client.ApiClient, timeout: float = 30.0) -> None:
        self._api = api
        self._timeout = timeout
        self._lock = threading.Lock()
        self.observers: list[RequestObserver] = []

    def _send(self, method: str, path: str, query: Mapping[str, str] | None, body: Any,
              content_type: str, timeout: float | tuple[float, float]) -> Any:
        """The raw response (not read yet). Raises KubeError(0) when nothing answers."""
        headers = {"Accept": "application/json", "Content-Type": content_type}
        with self._lock:  # param_serialize mutates shared default headers
            _, url, headers, body, _ = self._api.param_serialize(
                method=method, resource_path=path,
                query_params=list((query or {}).items()), header_params=headers, body=body,
                auth_settings=["BearerToken"])
        try:
            return self._api.call_api(method, url, header_params=headers, body=body,
                                      _request_timeout=timeout)
        except TRANSPORT_ERRORS as err:
            self._observe(method, path, 0)
            raise KubeError(0, method, path, f"{type(err).__name__}: {err}") from err

    def _observe(self, method: str, path: str, status: int) -> None:
        for observer in self.observers:
            observer(method, path, status)

    def request(self, method: str, path: str, *, query: Mapping[str, str] | None = None,
                body: Any = None, content_type: str = "application/json") -> Any:
        response = self._send(method, path, query, body, content_type, self._timeout)
        try:
            raw = response.read()
        except TRANSPORT_ERRORS as err:  # the connection broke mid-answer
            self._observe(method, path, 0)
            raise KubeError(0, method, path, f"{type(err).__name__}: {err}") from err
        self._observe(method, path, response.status)
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        if not 200 <= response.status < 300:
            raise KubeError(response.status, method, path, data)
        return data

    def watch(self, path: str, query: Mapping[str, str], read_timeout: float
              ) -> Iterator[dict[str, Any]]:
        """The events of a watch request (`?watch=1`), one dict per line, until the server
        ends the stream. Raises KubeError for a refused watch or a broken connection."""
        response = self._send("GET", path, {**query, "watch": "1"}, None, "application/json",
                              (10.0, read_timeout))
        if not 200 <= response.status < 300:
            raw = response.read()
            self._observe("WATCH", path, response.status)
            try:
                data = json.loads(raw)
            except ValueError:
                data = raw.decode(errors="replace")
            raise KubeError(response.status, "WATCH", path, data)
        self._observe("WATCH", path, response.status)
        stream = response.response  # urllib3's, unread
        buffer = b""
        try:
            for chunk in stream.stream(64 * 1024, decode_content=True):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        except TRANSPORT_ERRORS as err:
            raise KubeError(0, "WATCH", path, f"{type(err).__name__}: {err}") from err
        finally:
            stream.release_conn()

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

    def list_all(self, kind: Kind, *, namespace: str | None = None, labels: str | None = None,
                 fields: str | None = None, page: int = 500
                 ) -> tuple[builtins.list[dict[str, Any]], str]:
        """Every object of `kind` (in `namespace`, or all namespaces), and the list's
        resourceVersion to watch from."""
        query: dict[str, str] = {"limit": str(page)}
        if labels:
            query["labelSelector"] = labels
        if fields:
            query["fieldSelector"] = fields
        items: builtins.list[dict[str, Any]] = []
        while True:
            data = self.request("GET", kind.path(namespace), query=query)
            for item in data.get("items", []):
                item.setdefault("apiVersion", kind.api_version)
                item.setdefault("kind", kind.kind)
                items.append(item)
            meta = data.get("metadata") or {}
            if not meta.get("continue"):
                return items, str(meta.get("resourceVersion") or "")
            query["continue"] = meta["continue"]

    # -------------------------------------------------------------------- writes

    def apply(self, obj: Mapping[str, Any], *, subresource: str | None = None) -> dict[str, Any]:
        """Server-side apply with dedicap's one field manager, taking over conflicting fields
        (the operator is the owner of its children)."""
        meta = obj["metadata"]
        path = KINDS[obj["kind"]].path(meta.get("namespace"), meta["name"], subresource)
        return dict(self.request(
            "PATCH", path, query={"fieldManager": FIELD_MANAGER, "force": "true"},
            body=apply_body(obj), content_type="application/apply-patch+yaml"))

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
