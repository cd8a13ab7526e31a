"""Small helpers shared by the integration tests (importable because pytest puts tests/ on the
path): bounded polling and Prometheus' HTTP API."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any


def wait_until(check: Callable[[], Any], what: str, timeout: float = 90, every: float = 1) -> Any:
    """Poll `check` until it returns something truthy and return that; fail after `timeout`
    with the last value seen, so a failure says how far things got."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def prom_query(prom_url: str, promql: str) -> list[dict[str, Any]]:
    """An instant query through Prometheus' HTTP API; the result vector."""
    qs = urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(f"{prom_url}/api/v1/query?{qs}", timeout=5) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result
