"""The operator's background loop: rounds on a thread, a failing round does not end it, stop
ends it between rounds."""

from __future__ import annotations

import threading

from dedicap.controller.loop import BackgroundLoop


class Counting(BackgroundLoop):
    def __init__(self, fail_on: set[int]) -> None:
        super().__init__("test-loop", 0.01)
        self.rounds = 0
        self.fail_on = fail_on
        self.reached = threading.Event()

    def tick(self) -> None:
        self.rounds += 1
        if self.rounds >= 5:
            self.reached.set()
        if self.rounds in self.fail_on:
            raise RuntimeError("a bad round")


def test_rounds_go_on_after_a_failing_one_and_stop_ends_the_thread() -> None:
    loop = Counting(fail_on={1, 2})
    loop.start()
    assert loop.reached.wait(5.0), loop.rounds
    loop.stop(timeout=5.0)
    assert loop.stopping
    assert loop._thread is not None and not loop._thread.is_alive()
    after = loop.rounds
    loop.reached.wait(0.05)
    assert loop.rounds == after  # no round after stop


def test_stop_before_start_is_harmless() -> None:
    loop = Counting(fail_on=set())
    loop.stop(timeout=0.1)
    assert loop.stopping and loop.rounds == 0
