"""The reconcile work queue: one entry per key, one worker per key, delays and backoff."""

from __future__ import annotations

import threading

from dedicap.controller.workqueue import WorkQueue


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_key_added_twice_is_queued_once() -> None:
    q = WorkQueue()
    q.add("a")
    q.add("b")
    q.add("a")
    assert len(q) == 2
    assert q.get(0) == "a" and q.get(0) == "b" and q.get(0) is None


def test_a_key_added_while_processing_comes_back_after_done_not_before() -> None:
    q = WorkQueue()
    q.add("a")
    assert q.get(0) == "a"
    q.add("a")  # an event arrives while a worker reconciles it
    assert q.get(0) is None  # no second worker gets it meanwhile
    q.done("a")
    assert q.get(0) == "a"  # the latest state is reconciled once more
    q.done("a")
    assert q.get(0) is None


def test_delayed_keys_wait_for_their_time() -> None:
    clock = Clock()
    q = WorkQueue(clock=clock)
    q.add_after("late", 10)
    q.add_after("soon", 1)
    assert q.get(0) is None and q.pending() == 2
    clock.t = 1.0
    assert q.get(0) == "soon"
    clock.t = 10.0
    assert q.get(0) == "late"


def test_retry_backs_off_exponentially_and_forget_resets() -> None:
    q = WorkQueue(base_backoff_s=0.5, max_backoff_s=3)
    assert [q.retry("k") for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    q.forget("k")
    assert q.retry("k") == 0.5


def test_get_blocks_until_a_key_arrives_and_close_releases_waiters() -> None:
    q = WorkQueue()
    got: list[object] = []
    worker = threading.Thread(target=lambda: got.append(q.get()))
    worker.start()
    q.add("x")
    worker.join(10)
    assert got == ["x"]
    waiting = threading.Thread(target=lambda: got.append(q.get()))
    waiting.start()
    q.close()
    waiting.join(10)
    assert got == ["x", None] and not waiting.is_alive()
