"""When work runs: the view's changes turned into reconciles of the ModelDeployments they
concern, and capacity rounds, taken by worker threads from one work queue.

| change in the view | work |
|---|---|
| a ModelDeployment added, its spec (generation), labels or deletion changed | reconcile it |
| (its status alone changed — the operator's own writes) | nothing |
| a child (Deployment, Service, ...) or a replica pod of it changed | reconcile it |
| a GPUPool added, removed or its spec changed | reconcile those listing it; capacity |
| a Node's GPUs, readiness or labels changed | reconcile the users of its pools; capacity |
| a pod holding GPUs came, went or moved | capacity; reconcile those waiting for room |
| a CapacityReservation changed (spec or admission) | reconcile those naming it; capacity |
| a Namespace, or a quota or RoleBinding of capacity management, changed | capacity |

"Waiting for room" are ModelDeployments whose status says replicas are not placed or not ready:
GPUs freed anywhere may be theirs now. Everything else placed and running does not move because
room appeared elsewhere, so it is not reconciled for it. Besides these triggers every served
ModelDeployment is reconciled once per `resync_s`, spread over that time (a safety net that
costs no API request when nothing changed), and all at once when this process starts acting.

A worker reconciles a key only while the peering gate lets this process act for the key's
namespace; a failed reconcile is retried with a per-key backoff.
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dedicap.api.models import GPUPool
from dedicap.controller.capacity import CapacityLoop
from dedicap.controller.informer import Key
from dedicap.controller.kube import KubeError
from dedicap.controller.loop import BackgroundLoop
from dedicap.controller.peering import PeeringGate
from dedicap.controller.reconcile import Reconciler
from dedicap.controller.view import CHILD_KINDS, ClusterView, md_key_of
from dedicap.controller.workqueue import WorkQueue
from dedicap.decide.cluster import NodeInfo, PodInfo, selects

log = logging.getLogger(__name__)


def _spec_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    o, n = old.get("metadata") or {}, new.get("metadata") or {}
    return (o.get("generation") != n.get("generation")
            or bool(o.get("deletionTimestamp")) != bool(n.get("deletionTimestamp"))
            or o.get("labels") != n.get("labels") or o.get("uid") != n.get("uid"))


def _waiting_for_room(raw: Mapping[str, Any]) -> bool:
    for cond in (raw.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "CapacityConstrained" and cond.get("status") == "True":
            return True
        if cond.get("type") == "Ready" and cond.get("status") == "False":
            return True
        if cond.get("type") == "Progressing" and cond.get("reason") == "MovingPools":
            return True
    return False


def _pools_of(raw: Mapping[str, Any]) -> list[str]:
    return list(((raw.get("spec") or {}).get("placement") or {}).get("pools") or [])


def _key(raw: Mapping[str, Any]) -> Key:
    meta = raw.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""


class Dispatcher(BackgroundLoop):
    def __init__(self, view: ClusterView, reconciler: Reconciler, gate: PeeringGate,
                 capacity: CapacityLoop | None = None, *, workers: int = 4,
                 resync_s: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__("dedicap-dispatch", 1.0)
        self.view = view
        self.reconciler = reconciler
        self.gate = gate
        self.capacity = capacity
        self.workers = workers
        self.resync_s = resync_s
        self.clock = clock
        self.queue = WorkQueue()
        self._threads: list[threading.Thread] = []
        self._was_active = False
        self._next_resync: dict[Key, float] = {}
        # The same due times, ordered: each second costs only what is due, not a pass over a
        # thousand ModelDeployments (entries whose time moved or whose key went are skipped).
        self._resync_heap: list[tuple[float, Key]] = []
        self._phased_version: int | None = None
        self.reconciles = 0
        self.failures = 0

    # ----------------------------------------------------------------- wiring

    def register(self) -> None:
        v = self.view
        v.on_change("ModelDeployment", self._md_changed)
        for kind in CHILD_KINDS:
            v.on_change(kind, self._child_changed)
        v.on_change("Pod", self._pod_changed)
        v.on_change("Node", self._node_changed)
        v.on_change("GPUPool", self._pool_changed)
        v.on_change("CapacityReservation", self._reservation_changed)
        for kind in ("Namespace", "ResourceQuota", "RoleBinding"):
            if kind in v.informers:
                v.on_change(kind, lambda old, new: self._kick())

    def start(self) -> None:
        for i in range(self.workers):
            t = threading.Thread(target=self._work, name=f"dedicap-reconcile-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        super().start()

    def stop(self, timeout: float = 20.0) -> None:
        self.queue.close()
        super().stop(timeout)

    # ----------------------------------------------------------------- change handlers

    def _kick(self) -> None:
        if self.capacity is not None:
            self.capacity.kick()

    def _md_changed(self, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if new is None:
            if old is not None:
                key = _key(old)
                self.reconciler.forget(*key)
                self._next_resync.pop(key, None)
            return
        if old is None or _spec_changed(old, new):
            self.queue.add(_key(new))

    def _child_changed(self, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        key = md_key_of(new or old or {})
        if key is not None:
            self.queue.add(key)

    def _pod_changed(self, old: PodInfo | None, new: PodInfo | None) -> None:
        pod = new or old
        assert pod is not None
        if pod.modeldeployment:
            self.queue.add((pod.namespace, pod.modeldeployment))
        def gpus(p: PodInfo | None) -> tuple[str, int, bool, int] | None:
            return (p.node, p.gpus, p.bound, p.priority) if p is not None and p.holds_gpus \
                else None

        before, after = gpus(old), gpus(new)
        if before != after:
            self._kick()
            if before is not None and (after is None or after[0] != before[0]):
                self._room_freed()  # GPUs left a node

    def _node_changed(self, old: NodeInfo | None, new: NodeInfo | None) -> None:
        self._kick()
        labels = [n.labels for n in (old, new) if n is not None]
        pools = {name for name, raw in self._pools().items()
                 if any(selects(raw.spec.node_selector, ls) for ls in labels)}
        self._enqueue(md for md in self.view.modeldeployments()
                      if pools.intersection(_pools_of(md)))

    def _pool_changed(self, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        self._kick()
        if old is None or new is None or _spec_changed(old, new):
            name = _key(new or old or {})[1]
            self._enqueue(md for md in self.view.modeldeployments() if name in _pools_of(md))

    def _reservation_changed(self, old: dict[str, Any] | None,
                             new: dict[str, Any] | None) -> None:
        self._kick()
        name = _key(new or old or {})[1]
        self._enqueue(md for md in self.view.modeldeployments()
                      if (md.get("spec") or {}).get("reservation") == name)

    def _room_freed(self) -> None:
        self._enqueue(md for md in self.view.modeldeployments() if _waiting_for_room(md))

    def _pools(self) -> dict[str, GPUPool]:
        return dict(self.view.state().pools)

    def _enqueue(self, mds: Iterable[Mapping[str, Any]]) -> None:
        for md in mds:
            self.queue.add(_key(md))

    # ----------------------------------------------------------------- resync and handover

    def tick(self) -> None:
        """Enqueue everything when this process starts acting; otherwise each served
        ModelDeployment once per `resync_s`, at a random phase so they spread out."""
        try:
            self.gate.announce()
        except KubeError as err:
            log.warning("cannot announce this process: %s", err)
        if not self.view.synced:
            return
        active = self.gate.active("resync")
        now = self.clock()
        if active and not self._was_active:
            log.info("acting: reconciling every served ModelDeployment")
            self._next_resync.clear()
            self._resync_heap.clear()
            self._phased_version = None
            self._enqueue(self.view.modeldeployments())
        self._was_active = active
        if not active:
            return
        version = self.view.modeldeployments_version()
        if version != self._phased_version:
            # New ones get a random phase, so that they spread out.
            self._phased_version = version
            for md in self.view.modeldeployments():
                key = _key(md)
                if key not in self._next_resync:
                    self._schedule(key, now + random.uniform(0, self.resync_s))
        heap = self._resync_heap
        while heap and heap[0][0] <= now:
            due, key = heapq.heappop(heap)
            if self._next_resync.get(key) != due:
                continue  # forgotten, or scheduled again since
            if self.view.modeldeployment(*key) is None:
                self._next_resync.pop(key, None)
                continue
            self._schedule(key, now + self.resync_s)
            self.queue.add(key)

    def _schedule(self, key: Key, due: float) -> None:
        self._next_resync[key] = due
        heapq.heappush(self._resync_heap, (due, key))

    # ----------------------------------------------------------------- workers

    def _work(self) -> None:
        while True:
            key = self.queue.get()
            if key is None:
                return
            assert isinstance(key, tuple)
            namespace, name = key
            try:
                if self.gate.allows() and self.gate.acts_for(namespace):
                    self.reconciler.reconcile(namespace, name)
                    self.reconciles += 1
                self.queue.forget(key)
            except KubeError as err:
                self.failures += 1
                delay = self.queue.retry(key)
                log.warning("reconcile of %s/%s failed (retry in %.1fs): %s", namespace, name,
                            delay, err)
            except Exception:
                self.failures += 1
                delay = self.queue.retry(key)
                log.exception("reconcile of %s/%s failed (retry in %.1fs)", namespace, name,
                              delay)
            finally:
                self.queue.done(key)
