"""What a kubelet reports about a pod's container, for the tritonserver of a pod on a kwok
node: Ready when its model serves (a readiness probe); when it dies and is started again,
NotReady with the container's `restartCount` up and its `lastState` terminated, then Ready
again once the new process serves. kwok reports a ModelDeployment's pod Running (not Ready)
once and never looks at a Running pod again, so these patches do not fight its Stages. Every
patch is built from the pod as read just before (`containerStatuses` is replaced whole), so
a readiness verdict never undoes a restart count.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

LOG = logging.getLogger("dedicap.dataplane")


def _stamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _container(pod: Mapping[str, Any]) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    if statuses:
        return dict(statuses[0])
    first = ((pod.get("spec") or {}).get("containers") or [{}])[0]
    return {"name": first.get("name", ""), "image": first.get("image", ""), "restartCount": 0}


def _conditions(ready: bool, now: datetime) -> list[dict[str, Any]]:
    value = "True" if ready else "False"
    return [{"type": t, "status": value, "lastTransitionTime": _stamp(now)}
            for t in ("ContainersReady", "Ready")]


def crashed(pod: Mapping[str, Any], now: datetime, message: str) -> dict[str, Any]:
    """The status patch (strategic merge) for a container that just exited and is being
    started again: NotReady, one more restart, the exit in `lastState`. (The list of container
    statuses is replaced whole: the patch carries all of it.)"""
    c = _container(pod)
    started = ((c.get("state") or {}).get("running") or {}).get("startedAt") or _stamp(now)
    container = {
        **c, "ready": False, "started": False,
        "restartCount": int(c.get("restartCount") or 0) + 1,
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": message,
                                     "startedAt": started, "finishedAt": _stamp(now)}},
        "state": {"running": {"startedAt": _stamp(now)}}}
    return {"status": {"conditions": _conditions(False, now), "containerStatuses": [container]}}


def readiness(pod: Mapping[str, Any], now: datetime, ready: bool) -> dict[str, Any]:
    """The status patch for a readiness probe's verdict: the Ready and ContainersReady
    conditions (merged by type) and the containers' `ready`, the rest of their statuses kept
    as the pod has them now (the list is replaced whole)."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    patch: dict[str, Any] = {"conditions": _conditions(ready, now)}
    if statuses:
        patch["containerStatuses"] = [{**c, "ready": ready} for c in statuses]
    return {"status": patch}


def serving(pod: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The status patch for a restarted container whose model is ready again."""
    # containerStatuses is replaced whole by a patch (it has no merge key): keep the rest.
    container = {**_container(pod), "ready": True, "started": True}
    return {"status": {"conditions": _conditions(True, now), "containerStatuses": [container]}}


class Reporter:
    """Patches the pods of crashed and restarted processes through the API (best effort: a
    status that cannot be written is logged, the process is restarted all the same)."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self._crashed: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def _patch(self, namespace: str, name: str, build: Any, *args: Any) -> bool:
        try:
            pod = self.core.api_client.sanitize_for_serialization(
                self.core.read_namespaced_pod(name, namespace, _request_timeout=10))
            self.core.patch_namespaced_pod_status(
                name, namespace, build(pod, datetime.now(UTC), *args),
                _content_type="application/strategic-merge-patch+json", _request_timeout=10)
            return True
        except Exception as err:  # the pod may be gone; the API server may be restarting
            LOG.warning("cannot report the container of %s/%s: %s", namespace, name, err)
            return False

    def set_ready(self, namespace: str, name: str, ready: bool) -> None:
        """A readiness probe's verdict on a replica, from the pod as it is now; a crashed
        container's pod is left to the crash report until its new process serves."""
        with self._lock:
            if (namespace, name) in self._crashed:
                return
        self._patch(namespace, name, readiness, ready)

    def crashed(self, namespace: str, name: str) -> None:
        with self._lock:
            self._crashed.add((namespace, name))
        LOG.info("tritonserver of %s/%s exited: pod NotReady, container restarted", namespace,
                 name)
        self._patch(namespace, name, crashed, "tritonserver exited")

    def started(self, namespace: str, name: str) -> None:
        with self._lock:
            if (namespace, name) not in self._crashed:
                return  # a first start: kwok has reported the pod already
        if self._patch(namespace, name, serving):
            with self._lock:
                self._crashed.discard((namespace, name))
