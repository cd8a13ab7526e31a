"""What an upgrade from an older dedicap needs once, at start.

Versions that ran periodic work on kopf timers left the finalizer `dedicap.dev/timers` on every
GPUPool; with no operator running, nothing would ever remove it and deleting a pool (or the
GPUPool CRD) would hang. `release_legacy_finalizers` removes exactly that finalizer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from dedicap.controller.kube import FIELD_MANAGER, KINDS, Kube, KubeError

log = logging.getLogger(__name__)

# The finalizer kopf's timers put on GPUPools before the periodic work left kopf.
LEGACY_FINALIZER = "dedicap.dev/timers"


def release_legacy_finalizers(kube: Kube) -> list[str]:
    """Remove `dedicap.dev/timers`, which older versions' kopf timers put on every GPUPool, so
    an upgraded cluster can delete its pools with no operator running. Only that finalizer,
    each by a JSON patch that first tests it is still at the index read, so a finalizer someone
    else adds or removes meanwhile is never touched. Never fatal: a failure is logged. The names
    of the pools it was removed from."""
    released: list[str] = []
    try:
        pools = kube.list("GPUPool")
    except KubeError as err:
        log.warning("cannot list GPUPools to remove %s: %s", LEGACY_FINALIZER, err)
        return released
    for pool in pools:
        name = pool["metadata"]["name"]
        try:
            if _release_legacy_finalizer(kube, pool):
                released.append(name)
        except KubeError as err:
            log.warning("cannot remove %s from GPUPool %s: %s", LEGACY_FINALIZER, name, err)
    if released:
        log.info("removed the finalizer %s, left by an older dedicap, from GPUPools %s",
                 LEGACY_FINALIZER, ", ".join(released))
    return released


def _release_legacy_finalizer(kube: Kube, pool: Mapping[str, Any], attempts: int = 3) -> bool:
    name = pool["metadata"]["name"]
    for _ in range(attempts):
        finalizers = list(pool["metadata"].get("finalizers") or [])
        if LEGACY_FINALIZER not in finalizers:
            return False
        at = f"/metadata/finalizers/{finalizers.index(LEGACY_FINALIZER)}"
        try:
            kube.request("PATCH", KINDS["GPUPool"].path(name=name),
                         query={"fieldManager": FIELD_MANAGER},
                         body=[{"op": "test", "path": at, "value": LEGACY_FINALIZER},
                               {"op": "remove", "path": at}],
                         content_type="application/json-patch+json")
            return True
        except KubeError as err:
            if err.not_found:
                return False
            if err.status not in (409, 422):  # 422: the test failed, the list changed
                raise
        fresh = kube.get("GPUPool", name)
        if fresh is None:
            return False
        pool = fresh
    return False
