"""A periodic loop on a daemon thread: the operator's own work beside kopf's handlers.

The autoscaler and the periodic resync each run one. A round that raises is logged and the
loop goes on (one bad round must not end the work for good); `stop()` ends it between rounds,
and a long round can check `stopping` to end early.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)


class BackgroundLoop:
    """Call `tick()` every `interval_s` seconds on a thread named `name` until stopped."""

    def __init__(self, name: str, interval_s: float) -> None:
        self.loop_name = name
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def tick(self) -> Any:
        raise NotImplementedError

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.loop_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 20.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # one bad round must not end the loop for good
                log.exception("%s: round failed", self.loop_name)
            self._stop.wait(self.interval_s)
