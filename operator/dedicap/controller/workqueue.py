"""A work queue of object keys, as client-go's: what the reconcile workers take from.

- A key is queued at most once: adding a queued key again is a no-op, so a burst of events
  about one object costs one reconcile.
- A key is processed by one worker at a time: added while in process, it is queued again when
  that worker is done (the reconcile sees the latest state), never handed to a second worker.
- `add_after` delays a key (periodic re-checks); `retry` delays it with a per-key exponential
  backoff, which `forget` resets after a success.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field


@dataclass
class WorkQueue:
    base_backoff_s: float = 0.5
    max_backoff_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _queue: deque[Hashable] = field(default_factory=deque, init=False)
    _queued: set[Hashable] = field(default_factory=set, init=False)
    _processing: set[Hashable] = field(default_factory=set, init=False)
    _dirty: set[Hashable] = field(default_factory=set, init=False)  # re-added while processing
    _later: list[tuple[float, int, Hashable]] = field(default_factory=list, init=False)
    _failures: dict[Hashable, int] = field(default_factory=dict, init=False)
    _seq: int = field(default=0, init=False)
    _cond: threading.Condition = field(default_factory=threading.Condition, init=False)
    _closed: bool = field(default=False, init=False)

    def add(self, key: Hashable) -> None:
        with self._cond:
            self._add(key)

    def _add(self, key: Hashable) -> None:
        if key in self._processing:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.append(key)
            self._cond.notify()

    def add_after(self, key: Hashable, delay_s: float) -> None:
        if delay_s <= 0:
            self.add(key)
            return
        with self._cond:
            self._seq += 1
            heapq.heappush(self._later, (self.clock() + delay_s, self._seq, key))
            self._cond.notify()

    def retry(self, key: Hashable) -> float:
        """Queue `key` again after its backoff; the delay used."""
        with self._cond:
            n = self._failures.get(key, 0)
            self._failures[key] = n + 1
        delay = min(self.base_backoff_s * (2 ** n), self.max_backoff_s)
        self.add_after(key, delay)
        return delay

    def forget(self, key: Hashable) -> None:
        with self._cond:
            self._failures.pop(key, None)

    def get(self, timeout: float | None = None) -> Hashable | None:
        """The next key to process (mark it done with `done`), or None on timeout or close."""
        deadline = None if timeout is None else self.clock() + timeout
        with self._cond:
            while True:
                self._promote()
                if self._closed:
                    return None
                if self._queue:
                    key = self._queue.popleft()
                    self._queued.discard(key)
                    self._processing.add(key)
                    return key
                waits = []
                if self._later:
                    waits.append(self._later[0][0] - self.clock())
                if deadline is not None:
                    left = deadline - self.clock()
                    if left <= 0:
                        return None
                    waits.append(left)
                self._cond.wait(max(min(waits), 0.0) if waits else None)

    def _promote(self) -> None:
        now = self.clock()
        while self._later and self._later[0][0] <= now:
            _, _, key = heapq.heappop(self._later)
            self._add(key)

    def done(self, key: Hashable) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self._add(key)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)

    def pending(self) -> int:
        """Keys queued or waiting for their time."""
        with self._cond:
            return len(self._queue) + len(self._later)
