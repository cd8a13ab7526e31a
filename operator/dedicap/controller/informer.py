"""A watch-backed cache of one kind: list once, then watch, and keep a parsed copy of every
object — the informer of client-go, in a thread.

- **List, then watch from the list's resourceVersion**, with bookmarks, so a quiet stream
  ends and resumes without listing again. A watch the server ends (its timeout) resumes from
  the last version seen; `410 Gone` (the version is too old) and a broken connection lead to
  a new list. An API server that is down or restarting costs retries with a capped backoff,
  never the thread.
- **One parser per kind** turns each object into what the operator keeps of it (a frozen
  record, or the object without its `managedFields`); `None` means "not of interest" and
  keeps memory small (e.g. pods that neither hold GPUs nor belong to a ModelDeployment).
- **Change callbacks only for changes that matter**: `on_change(old, new)` runs when the
  parsed value differs, so a node's heartbeat or a pod's unrelated status update costs a
  comparison, not a reconcile. Callbacks run on the informer's thread and must be quick
  (they enqueue work).
- **Write-through**: after the operator writes an object, `observe_write` stores the
  answer at once, so the next reconcile does not act on the version before its own write, and
  the watch event of that write (same resourceVersion) is dropped. The callbacks see the change
  the write made to the cached copy — which may include others' changes made just before, whose
  older events are then dropped — so nothing is missed; the handlers decide what a change is
  worth (a ModelDeployment's own status write is worth nothing). This compares resourceVersions
  as numbers, which holds for etcd-backed API servers; where a version is not a number, the
  write is simply left to the watch.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from dedicap.controller.kube import Kind, Kube, KubeError

log = logging.getLogger(__name__)

T = TypeVar("T")
Key = tuple[str, str]  # (namespace or "", name)
ChangeHandler = Callable[[Any, Any], None]  # (old, new): None for added / deleted


def object_key(raw: Mapping[str, Any]) -> Key:
    meta = raw.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""


def strip(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The object as the operator keeps it: without `managedFields`, the bulk of most
    objects, which nothing of dedicap reads."""
    out = dict(raw)
    meta = dict(out.get("metadata") or {})
    meta.pop("managedFields", None)
    out["metadata"] = meta
    return out


def _version(rv: str | None) -> int | None:
    try:
        return int(rv) if rv else None
    except ValueError:
        return None


@dataclass
class _Entry(Generic[T]):
    version: str
    value: T


@dataclass
class Informer(Generic[T]):
    kube: Kube
    kind: Kind
    parse: Callable[[Mapping[str, Any]], T | None]
    namespace: str | None = None  # None: all namespaces (or a cluster-scoped kind)
    labels: str | None = None
    fields: str | None = None
    on_change: list[ChangeHandler] = field(default_factory=list)
    # Secondary index: value -> index key (None: not indexed).
    index: Callable[[T], Hashable | None] | None = None
    # Called with "relist" or "reconnect" when the informer lists again or resumes a watch
    # after an error (the operator's metrics count them).
    on_restart: Callable[[str], None] | None = None
    watch_timeout_s: float = 300.0
    max_backoff_s: float = 30.0
    _store: dict[Key, _Entry[T]] = field(default_factory=dict, init=False)
    _by_index: dict[Hashable, set[Key]] = field(default_factory=dict, init=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False)
    _synced: threading.Event = field(default_factory=threading.Event, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    _version_seen: str = field(default="", init=False)
    # Relists and watch restarts after an error (for the operator's metrics).
    relists: int = field(default=0, init=False)
    reconnects: int = field(default=0, init=False)
    # Bumped when a stored value changes: readers cache what they derive from the store.
    generation: int = field(default=0, init=False)

    # ----------------------------------------------------------------- reading

    def get(self, key: Key) -> T | None:
        with self._lock:
            entry = self._store.get(key)
            return entry.value if entry is not None else None

    def values(self) -> list[T]:
        with self._lock:
            return [e.value for e in self._store.values()]

    def items(self) -> list[tuple[Key, T]]:
        with self._lock:
            return [(k, e.value) for k, e in self._store.items()]

    def by_index(self, value: Hashable) -> list[T]:
        with self._lock:
            return [self._store[k].value for k in self._by_index.get(value, ()) if k in self._store]

    def __len__(self) -> int:
        with self._lock:
            return len(self._store)

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout: float | None = None) -> bool:
        return self._synced.wait(timeout)

    # ----------------------------------------------------------------- writing through

    def observe_write(self, raw: Mapping[str, Any]) -> None:
        """Store what the API server answered to the operator's own write, if it is newer than
        what the cache holds (module docstring). The callbacks see the change from the cached
        copy, as for a watch event: the answer may carry others' changes too (a spec edited a
        moment before), whose own, older events will be dropped."""
        new_version = _version((raw.get("metadata") or {}).get("resourceVersion"))
        if new_version is None:
            return
        key = object_key(raw)
        with self._lock:
            entry = self._store.get(key)
            old_version = _version(entry.version) if entry is not None else None
            if old_version is None and entry is not None:
                return
            if old_version is not None and old_version >= new_version:
                return
            value = self.parse(raw)
            if value is None:
                return
            old = entry.value if entry is not None else None
            self._put(key, str(new_version), value)
        if old != value:
            self._notify(old, value)

    # ----------------------------------------------------------------- the store

    def _put(self, key: Key, version: str, value: T) -> None:
        old = self._store.get(key)
        if old is not None:
            self._unindex(key, old.value)
        self._store[key] = _Entry(version, value)
        if self.index is not None:
            ix = self.index(value)
            if ix is not None:
                self._by_index.setdefault(ix, set()).add(key)
        if old is None or old.value != value:
            # what was built from the store stays valid through a change it does not keep
            # (a node's heartbeat, a pod's status detail that its parsed record leaves out)
            self.generation += 1

    def _unindex(self, key: Key, value: T) -> None:
        if self.index is None:
            return
        ix = self.index(value)
        if ix is not None and ix in self._by_index:
            self._by_index[ix].discard(key)
            if not self._by_index[ix]:
                del self._by_index[ix]

    def _remove(self, key: Key) -> T | None:
        entry = self._store.pop(key, None)
        if entry is None:
            return None
        self._unindex(key, entry.value)
        self.generation += 1
        return entry.value

    def _apply(self, event_type: str, raw: Mapping[str, Any]) -> None:
        key = object_key(raw)
        version = str((raw.get("metadata") or {}).get("resourceVersion") or "")
        with self._lock:
            entry = self._store.get(key)
            if event_type == "DELETED":
                old = self._remove(key)
                new = None
            else:
                if entry is not None and entry.version == version:
                    return  # already stored (our own write, written through)
                old_v, new_v = (_version(entry.version) if entry else None), _version(version)
                if old_v is not None and new_v is not None and new_v < old_v:
                    return  # older than a write already stored
                value = self.parse(raw)
                old = entry.value if entry is not None else None
                if value is None:
                    self._remove(key)
                    new = None
                else:
                    self._put(key, version, value)
                    new = value
        if old != new:
            self._notify(old, new)

    def _notify(self, old: T | None, new: T | None) -> None:
        for handler in self.on_change:
            try:
                handler(old, new)
            except Exception:  # a handler's bug must not stop the cache
                log.exception("%s: change handler failed", self.kind.plural)

    # ----------------------------------------------------------------- list and watch

    def _list(self) -> None:
        fresh: dict[Key, tuple[str, T]] = {}
        items, version = self.kube.list_all(self.kind, namespace=self.namespace,
                                            labels=self.labels, fields=self.fields)
        for raw in items:
            value = self.parse(raw)
            if value is not None:
                fresh[object_key(raw)] = (
                    str((raw.get("metadata") or {}).get("resourceVersion") or ""), value)
        changes: list[tuple[T | None, T | None]] = []
        with self._lock:
            for key in list(self._store):
                if key not in fresh:
                    changes.append((self._remove(key), None))
            for key, (rv, value) in fresh.items():
                old_entry = self._store.get(key)
                old = old_entry.value if old_entry is not None else None
                if old_entry is None or old_entry.version != rv:
                    self._put(key, rv, value)
                if old != value:
                    changes.append((old, value))
            self._version_seen = version
        self.relists += 1
        if self.on_restart is not None and self.relists > 1:
            self.on_restart("relist")
        self._synced.set()
        for old, new in changes:
            self._notify(old, new)

    def list_once(self) -> None:
        """List (and store) without watching: the cache of a one-shot read."""
        self._list()

    def _watch(self) -> None:
        query = {"resourceVersion": self._version_seen, "allowWatchBookmarks": "true",
                 # Spread the reconnects of many informers; the server ends the stream then.
                 "timeoutSeconds": str(int(self.watch_timeout_s * random.uniform(0.8, 1.0)))}
        if self.labels:
            query["labelSelector"] = self.labels
        if self.fields:
            query["fieldSelector"] = self.fields
        path = self.kind.path(self.namespace)
        for event in self.kube.watch(path, query, self.watch_timeout_s + 30):
            if self._stop.is_set():
                return
            kind = event.get("type")
            obj = event.get("object") or {}
            if kind == "ERROR":
                code = int(obj.get("code") or 0)
                raise KubeError(code or 500, "WATCH", path, obj)
            version = (obj.get("metadata") or {}).get("resourceVersion")
            if kind != "BOOKMARK":
                self._apply(str(kind), obj)
            if version:
                self._version_seen = str(version)

    def run(self) -> None:
        """List and watch until stopped (the thread's body)."""
        backoff = 0.5
        need_list = True
        while not self._stop.is_set():
            try:
                if need_list:
                    self._list()
                    need_list = False
                self._watch()
                backoff = 0.5
            except KubeError as err:
                if err.gone:
                    need_list = True  # expected now and then: list again at once
                    continue
                self.reconnects += 1
                if self.on_restart is not None:
                    self.on_restart("reconnect")
                # A broken connection resumes the watch from the last version seen (the server
                # replays what came since, or answers 410); any other refusal lists again.
                need_list = need_list or not err.unreachable
                log.warning("%s: watch failed (%s); retrying in %.1fs", self.kind.plural, err,
                            backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
            except Exception:  # never lose the cache's thread to a surprise
                log.exception("%s: informer round failed", self.kind.plural)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                need_list = True

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        where = f"-{self.namespace}" if self.namespace else ""
        self._thread = threading.Thread(target=self.run,
                                        name=f"informer-{self.kind.plural}{where}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


class InformerSet(Generic[T]):
    """Informers of one kind in several namespaces, read as one: for an operator that serves
    named namespaces and may list and watch only there (namespaced RBAC)."""

    def __init__(self, members: list[Informer[T]]) -> None:
        self.members = members
        self.on_change: list[ChangeHandler] = []
        for m in members:
            m.on_change = self.on_change  # one list: a handler added later reaches them all
        self.kind = members[0].kind

    def _member(self, namespace: str) -> Informer[T] | None:
        return next((m for m in self.members if m.namespace == namespace), None)

    def get(self, key: Key) -> T | None:
        member = self._member(key[0])
        return member.get(key) if member is not None else None

    def values(self) -> list[T]:
        return [v for m in self.members for v in m.values()]

    def items(self) -> list[tuple[Key, T]]:
        return [kv for m in self.members for kv in m.items()]

    def by_index(self, value: Hashable) -> list[T]:
        return [v for m in self.members for v in m.by_index(value)]

    def __len__(self) -> int:
        return sum(len(m) for m in self.members)

    @property
    def synced(self) -> bool:
        return all(m.synced for m in self.members)

    def wait_synced(self, timeout: float | None = None) -> bool:
        return all(m.wait_synced(timeout) for m in self.members)

    @property
    def generation(self) -> int:
        return sum(m.generation for m in self.members)

    @property
    def relists(self) -> int:
        return sum(m.relists for m in self.members)

    @property
    def reconnects(self) -> int:
        return sum(m.reconnects for m in self.members)

    @property
    def on_restart(self) -> Callable[[str], None] | None:
        return self.members[0].on_restart

    @on_restart.setter
    def on_restart(self, value: Callable[[str], None] | None) -> None:
        for m in self.members:
            m.on_restart = value

    @property
    def started(self) -> bool:
        return all(m.started for m in self.members)

    def observe_write(self, raw: Mapping[str, Any]) -> None:
        member = self._member(object_key(raw)[0])
        if member is not None:
            member.observe_write(raw)

    def list_once(self) -> None:
        for m in self.members:
            m.list_once()

    def start(self) -> None:
        for m in self.members:
            m.start()

    def stop(self) -> None:
        for m in self.members:
            m.stop()
