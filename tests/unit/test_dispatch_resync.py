"""The resync safety net's schedule: every served ModelDeployment once per `resync_s`, at a
random phase, new ones included and deleted ones dropped, without a pass over all of them
each second (dispatch.py)."""

from __future__ import annotations

from collections import Counter
from typing import Any, cast

from dedicap.controller.dispatch import Dispatcher


class _View:
    """The part of the cluster view the schedule reads."""

    synced = True

    def __init__(self) -> None:
        self.mds: dict[tuple[str, str], dict[str, Any]] = {}
        self.version = 0

    def put(self, namespace: str, name: str) -> None:
        self.mds[(namespace, name)] = {"metadata": {"namespace": namespace, "name": name}}
        self.version += 1

    def delete(self, namespace: str, name: str) -> None:
        del self.mds[(namespace, name)]
        self.version += 1

    def modeldeployments(self) -> list[dict[str, Any]]:
        return list(self.mds.values())

    def modeldeployments_version(self) -> int:
        return self.version

    def modeldeployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.mds.get((namespace, name))


class _Gate:
    def announce(self) -> None:
        pass

    def active(self, loop: str) -> bool:
        return True


def _drain(d: Dispatcher) -> list[Any]:
    keys = []
    while (key := d.queue.get(timeout=0)) is not None:
        d.queue.done(key)
        keys.append(key)
    return keys


def test_each_modeldeployment_is_resynced_once_per_interval_and_only_while_it_exists() -> None:
    now = [0.0]
    view = _View()
    for i in range(20):
        view.put("t", f"m{i}")
    d = Dispatcher(cast(Any, view), cast(Any, None), cast(Any, _Gate()), resync_s=10.0,
                   clock=lambda: now[0])
    d.tick()
    assert len(_drain(d)) == 20  # starting to act: everything at once
    seen: Counter[Any] = Counter()
    first: dict[Any, int] = {}
    for second in range(1, 61):
        now[0] = float(second)
        if second == 25:
            view.delete("t", "m0")
            view.put("t", "late")
        d.tick()
        for key in _drain(d):
            seen[key] += 1
            first.setdefault(key, second)
    assert seen[("t", "m0")] in (2, 3)  # within its first 25 s: once at a random phase, then 10 s
    assert all(seen[("t", f"m{i}")] in (5, 6) for i in range(1, 20))  # 60 s / 10 s
    assert seen[("t", "late")] in (3, 4)  # from t=25 on
    # spread over the interval, not all at the same second
    assert len({first[("t", f"m{i}")] for i in range(20)}) > 3
