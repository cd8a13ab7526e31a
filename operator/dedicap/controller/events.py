"""Kubernetes Events that explain the operator's decisions, aggregated as kubectl users expect.

Every loop (reconcile, capacity, autoscaler) posts through one `EventRecorder`. An Event that
repeats one already posted about the same object (same type, reason and message) within
`aggregate_s` is not posted again: the existing Event's `count` goes up and its
`lastTimestamp` moves, as the kubelet's and client-go's recorders do, so `kubectl describe`
shows `x12 over 5m` instead of twelve lines and etcd does not fill with copies.

Posting happens on a thread of its own, as client-go's broadcaster does: a reconcile hands its
Events over and goes on, so an API server answering slowly delays the explanations, never the
work. The queue is bounded (`max_queued`): under a flood the oldest explanations are dropped,
with a log line. A failure to post is logged, never raised: an Event is worth less than the work
that caused it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from dedicap.api import conditions as c
from dedicap.controller.kube import Kube, KubeError

log = logging.getLogger(__name__)

COMPONENT = "dedicap"


@dataclass
class _Posted:
    namespace: str
    name: str
    count: int
    last: datetime


@dataclass
class EventRecorder:
    kube: Kube
    instance: str = ""
    aggregate_s: float = 600.0
    max_remembered: int = 4096
    # Post from a thread of its own (False: in the caller's thread, for one-shot tools).
    background: bool = True
    max_queued: int = 10_000
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    _posted: OrderedDict[tuple[str, str, str, str], _Posted] = field(
        default_factory=OrderedDict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    posted: int = field(default=0, init=False)  # new Event objects
    aggregated: int = field(default=0, init=False)  # repeats counted into an existing one
    dropped: int = field(default=0, init=False)  # lost to a full queue
    _queue: queue.Queue[tuple[Any, ...] | None] = field(init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._queue = queue.Queue(self.max_queued)

    def record(self, involved: Mapping[str, Any], type_: str, reason: str, message: str,
               *, when: datetime | None = None) -> None:
        """Post (or count) one Event about `involved`, a whole object with apiVersion and
        kind. Events of cluster-scoped objects go to `default`, where kopf and the kubelet put
        theirs."""
        meta = involved.get("metadata") or {}
        message = message[:1024]
        when = when or self.clock()
        log.info("%s/%s: %s %s: %s", meta.get("namespace", ""), meta.get("name"), type_,
                 reason, message)
        if not self.background:
            self._record(involved, type_, reason, message, when)
            return
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="dedicap-events",
                                                    daemon=True)
                    self._thread.start()
        try:
            self._queue.put_nowait((dict(involved), type_, reason, message, when))
        except queue.Full:
            self.dropped += 1
            log.warning("event queue full: dropped %s about %s", reason, meta.get("name"))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every Event handed over is posted (tests, shutdown)."""
        done = threading.Event()
        self._queue.put(("flush", done))
        return done.wait(timeout) if self._thread is not None else True

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if item[0] == "flush":
                item[1].set()
                continue
            try:
                self._record(*item)
            except Exception:  # never lose the poster to a surprise
                log.exception("posting an event failed")

    def _record(self, involved: Mapping[str, Any], type_: str, reason: str, message: str,
                when: datetime) -> None:
        meta = involved.get("metadata") or {}
        key = (str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}"),
               type_, reason, message)
        with self._lock:
            seen = self._posted.get(key)
            if seen is not None and when - seen.last > timedelta(seconds=self.aggregate_s):
                seen = None
        try:
            if seen is not None and self._count(seen, when):
                return
            self._post(key, involved, type_, reason, message, when)
        except KubeError as err:
            log.warning("cannot post event %s about %s: %s", reason, meta.get("name"), err)

    def _count(self, seen: _Posted, when: datetime) -> bool:
        """Count one more into the Event already posted; False when it is gone."""
        count = seen.count + 1
        try:
            self.kube.request(
                "PATCH", f"/api/v1/namespaces/{seen.namespace}/events/{seen.name}",
                body={"count": count, "lastTimestamp": c.timestamp(when)},
                content_type="application/merge-patch+json")
        except KubeError as err:
            if err.not_found:  # expired (the API server keeps Events for an hour)
                return False
            raise
        with self._lock:
            seen.count, seen.last = count, when
            self.aggregated += 1
        return True

    def _post(self, key: tuple[str, str, str, str], involved: Mapping[str, Any], type_: str,
              reason: str, message: str, when: datetime) -> None:
        meta = involved["metadata"]
        namespace = meta.get("namespace") or "default"
        stamp = c.timestamp(when)
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": namespace},
            "involvedObject": {"apiVersion": involved.get("apiVersion"),
                               "kind": involved.get("kind"), "name": meta["name"],
                               **({"namespace": meta["namespace"]}
                                  if meta.get("namespace") else {}),
                               "uid": meta.get("uid"),
                               "resourceVersion": meta.get("resourceVersion")},
            "type": type_, "reason": reason, "message": message,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.instance or COMPONENT,
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        }
        created = self.kube.request("POST", f"/api/v1/namespaces/{namespace}/events",
                                    body=event)
        name = str((created.get("metadata") or {}).get("name") or "")
        with self._lock:
            self.posted += 1
            if name:
                self._posted[key] = _Posted(namespace, name, 1, when)
                self._posted.move_to_end(key)
                while len(self._posted) > self.max_remembered:
                    self._posted.popitem(last=False)
