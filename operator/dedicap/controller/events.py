"""Events posted straight through the API, for code that runs outside kopf's handlers.

kopf's `kopf.event` only works inside a kopf handler (it reads kopf's context), so the
operator's own threads (the autoscaler, the periodic resync) post their Events themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from dedicap.controller import conditions as c
from dedicap.controller.kube import Kube, KubeError
from dedicap.controller.reconcile import Recorder
from dedicap.decide.render import MANAGER

log = logging.getLogger(__name__)


def post(kube: Kube, involved: Mapping[str, Any], type_: str, reason: str, message: str, *,
         instance: str, origin: str, when: datetime | None = None) -> None:
    """Post one Event about `involved` (a whole object with apiVersion and kind). Events of
    cluster-scoped objects go to `default`, where kopf and the kubelet put theirs. A failure is
    logged, never raised: an Event is worth less than the work that caused it."""
    meta = involved["metadata"]
    namespace = meta.get("namespace") or "default"
    stamp = c.timestamp(when or datetime.now(UTC))
    event = {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.{origin}-", "namespace": namespace},
        "involvedObject": {"apiVersion": involved.get("apiVersion"),
                           "kind": involved.get("kind"), "name": meta["name"],
                           **({"namespace": meta["namespace"]} if meta.get("namespace") else {}),
                           "uid": meta.get("uid"),
                           "resourceVersion": meta.get("resourceVersion")},
        "type": type_, "reason": reason, "message": message[:1024],
        "source": {"component": MANAGER},
        "reportingComponent": MANAGER,
        "reportingInstance": instance or MANAGER,
        "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
    }
    try:
        kube.request("POST", f"/api/v1/namespaces/{namespace}/events", body=event)
    except KubeError as err:
        log.warning("cannot post event %s: %s", reason, err)


def recorder(kube: Kube, involved: Mapping[str, Any], *, instance: str, origin: str
             ) -> Recorder:
    """A reconcile `Recorder` that logs each Event and posts it through the API."""
    def record(type: str, reason: str, message: str) -> None:
        meta = involved["metadata"]
        log.info("%s/%s: %s %s: %s", meta.get("namespace", ""), meta.get("name"), type, reason,
                 message)
        post(kube, involved, type, reason, message, instance=instance, origin=origin)
    return record
