"""A JSON control file a running Triton model re-reads, so tests can change its behaviour live.

The file holds an object of overrides (e.g. ``{"fail_ratio": 1}``); removing it restores the
model's configuration. It is stat-ed at most once per period: cheap enough for every execute.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import fields, replace
from typing import Any, TypeVar

T = TypeVar("T")


class ControlFile:
    def __init__(self, path: str, period_s: float = 0.5) -> None:
        self.path = path
        self.period_s = period_s
        self._checked = -float("inf")
        self._mtime: float | None = None
        self.values: dict[str, Any] = {}

    def poll(self) -> bool:
        """Re-read the file if it is due and changed; True when the overrides changed."""
        now = time.monotonic()
        if not self.path or now - self._checked < self.period_s:
            return False
        self._checked = now
        try:
            mtime = os.stat(self.path).st_mtime
        except OSError:
            changed = self._mtime is not None
            self._mtime, self.values = None, {}
            return changed
        if mtime == self._mtime:
            return False
        try:
            with open(self.path) as fh:
                values = json.load(fh)
        except (OSError, ValueError):
            return False
        self._mtime = mtime
        self.values = values if isinstance(values, dict) else {}
        return True


def parameter(parameters: dict[str, Any], key: str) -> str:
    """A Triton model config parameter's string value ("" when absent)."""
    value = parameters.get(key, {})
    return str(value.get("string_value", "")) if isinstance(value, dict) else ""


def with_overrides(behaviour: T, values: dict[str, Any]) -> T:
    """A copy of the (frozen dataclass, float fields) `behaviour` with the known keys of
    `values` applied; unknown keys and malformed values are ignored."""
    known = {f.name for f in fields(behaviour)}  # type: ignore[arg-type]
    changes: dict[str, float] = {}
    for key, value in values.items():
        if key in known:
            try:
                changes[key] = float(value)
            except (TypeError, ValueError):
                continue
    return replace(behaviour, **changes)  # type: ignore[type-var]
