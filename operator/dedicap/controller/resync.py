"""The operator's periodic work, on a thread of its own beside kopf.

Some state changes without any event dedicap watches: a pod bound or gone changes a pool's
free GPUs, a node added or removed changes where replicas fit, capacity freed by one tenant is
usable by another. So, each at its own interval:

- `pool-status` (`--pool-refresh-seconds`): every GPUPool's status, from Nodes and Pods;
- `pool-users` (`--resync-seconds`, first after one interval: a start reconciles everything
  anyway): every served ModelDeployment that lists an existing pool, re-reconciled once;
- `capacity` (`--capacity-seconds`; not with `--no-capacity`): the capacity reconcile.

Why not kopf timers: a timer needs a finalizer on the object it hangs on, and with the operator
gone (`helm uninstall`) nothing removes it, so deleting a GPUPool, or the GPUPool CRD, hangs.
This thread needs no finalizer. It follows peering like the autoscaler (`peering.PeeringGate`):
only the process kopf lets act does the work. `release_legacy_finalizers` removes, once at
start, the finalizer older versions left on GPUPools.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from dedicap.controller import events
from dedicap.controller.capacity import CapacityController
from dedicap.controller.handlers import LEGACY_FINALIZER, reconcile_each
from dedicap.controller.kube import FIELD_MANAGER, KINDS, Kube, KubeError
from dedicap.controller.loop import BackgroundLoop
from dedicap.controller.peering import PeeringGate
from dedicap.controller.reconcile import Reconciler, Recorder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResyncIntervals:
    pool_status_s: float = 10.0
    pool_users_s: float = 30.0
    capacity_s: float = 15.0


@dataclass
class _Job:
    name: str
    interval_s: float
    run: Callable[[], None]
    due: float


class PeriodicResync(BackgroundLoop):
    """Runs the periodic jobs while peering lets this process act. A job's next run is one
    interval after its last one ended, as kopf's timers did, so a slow round never piles up."""

    def __init__(self, kube: Kube, reconciler: Reconciler, gate: PeeringGate,
                 intervals: ResyncIntervals, *, capacity: CapacityController | None = None,
                 namespaces: tuple[str, ...] = (), instance: str = "", tick_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__("dedicap-resync", tick_s)
        self.kube = kube
        self.reconciler = reconciler
        self.gate = gate
        self.capacity = capacity
        self.namespaces = namespaces
        self.instance = instance
        self.clock = clock
        now = clock()
        self.jobs = [_Job("pool-status", intervals.pool_status_s, self.refresh_pools, now),
                     _Job("pool-users", intervals.pool_users_s, self.resync_pool_users,
                          now + intervals.pool_users_s)]
        if capacity is not None:
            self.jobs.append(_Job("capacity", intervals.capacity_s, self.run_capacity, now))

    def tick(self) -> list[str]:
        """Run the jobs that are due; their names. The peering object is read only when some
        job is due, and a job stays due while a peer acts, so it runs as soon as this process
        takes over."""
        if not any(self.clock() >= job.due for job in self.jobs) or not self.gate.active():
            return []
        ran = []
        for job in self.jobs:
            if self.stopping:
                break
            if self.clock() < job.due:
                continue
            try:
                job.run()
            except KubeError as err:
                log.warning("resync %s failed: %s", job.name, err)
            job.due = self.clock() + job.interval_s
            ran.append(job.name)
        return ran

    # ----------------------------------------------------------------- the jobs

    def _record_for(self, obj: Mapping[str, Any]) -> Recorder:
        return events.recorder(self.kube, obj, instance=self.instance, origin="resync")

    def refresh_pools(self) -> None:
        for pool in self.kube.list("GPUPool"):
            if self.stopping:
                return
            name = pool["metadata"]["name"]
            try:
                self.reconciler.refresh_pool(pool, self._record_for(pool))
            except KubeError as err:
                if err.not_found:  # deleted since the list: nothing to refresh
                    log.debug("GPUPool %s is gone", name)
                    continue
                log.warning("refresh of GPUPool %s failed: %s", name, err)

    def resync_pool_users(self) -> None:
        pools = {p["metadata"]["name"] for p in self.kube.iter("GPUPool")
                 if not p["metadata"].get("deletionTimestamp")}
        users = [md for md in self.kube.iter("ModelDeployment")
                 if pools.intersection(((md.get("spec") or {}).get("placement") or {})
                                       .get("pools") or [])]
        reconcile_each(self.reconciler, self._until_stopped(users), self.namespaces,
                       self._record_for)

    def _until_stopped(self, items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for item in items:
            if self.stopping:
                return
            yield item

    def run_capacity(self) -> None:
        assert self.capacity is not None
        self.capacity.run(force=False)


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
