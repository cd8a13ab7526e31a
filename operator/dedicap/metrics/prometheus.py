"""A small client for Prometheus' HTTP API (instant and range queries), with timeouts and bounded
retries.

No global state: every :class:`PrometheusClient` owns its HTTP session, and its address comes
from configuration (a flag, the ``DEDICAP_PROMETHEUS_URL`` environment variable, the Helm value
that sets it), resolved by :func:`resolve_url`.

Errors are split by what the caller should do about them:

- :class:`PrometheusUnavailable`: Prometheus could not be reached or did not answer in time,
  even after the retries (connection refused, timeout, 5xx, 429, a non-Prometheus answer). An
  expected outage: hold, report, try again at the next evaluation.
- :class:`QueryError`: Prometheus answered and refused the query (``bad_data`` for a malformed
  query, ``execution`` for one that cannot be evaluated). A bug or a misconfiguration: retrying
  the same query would give the same answer, so it is not retried.
"""

from __future__ import annotations

import math
import os
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import requests

ENV_URL = "DEDICAP_PROMETHEUS_URL"


class PrometheusError(Exception):
    """Any failure to get an answer to a query."""


class PrometheusUnavailable(PrometheusError):
    """Prometheus did not answer (after `attempts` tries); `cause` says what happened last."""

    def __init__(self, url: str, attempts: int, cause: str) -> None:
        super().__init__(f"Prometheus at {url} unavailable after {attempts} attempt(s): {cause}")
        self.url = url
        self.attempts = attempts
        self.cause = cause


class QueryError(PrometheusError):
    """Prometheus refused `query`; `error_type` and `error` are its own words."""

    def __init__(self, query: str, error_type: str, error: str, status: int | None = None) -> None:
        super().__init__(f"Prometheus rejected the query ({error_type}: {error}): {query}")
        self.query = query
        self.error_type = error_type
        self.error = error
        self.status = status


@dataclass(frozen=True)
class Sample:
    """One element of an instant vector (or a scalar, with no labels)."""

    labels: Mapping[str, str]
    timestamp: float
    value: float  # NaN and +-Inf as Prometheus reports them


@dataclass(frozen=True)
class Series:
    """One series of a range query: its labels and its (unix time, value) points."""

    labels: Mapping[str, str]
    points: tuple[tuple[float, float], ...]


# Prometheus refuses a range query of more than 11,000 points per series.
MAX_POINTS_PER_QUERY = 10_000


def resolve_url(flag: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """Prometheus' base URL: the flag if given, else ``$DEDICAP_PROMETHEUS_URL``, else None.

    Raises ValueError for something that is not an http(s) URL, so a typo fails at start-up
    rather than at every evaluation.
    """
    env = os.environ if environ is None else environ
    raw = flag if flag else env.get(ENV_URL, "")
    raw = raw.strip()
    if not raw:
        return None
    parsed = urllib.parse.urlsplit(raw)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"Prometheus URL must look like http(s)://host:port[/prefix], got {raw!r}")
    return raw.rstrip("/")


def _parse_value(pair: Any) -> tuple[float, float]:
    ts, text = pair
    # float() reads Prometheus' "NaN", "+Inf" and "-Inf" as they are.
    return float(ts), float(text)


@dataclass
class PrometheusClient:
    """Instant queries against one Prometheus.

    `timeout_s` bounds each HTTP attempt (and is passed to Prometheus as the evaluation
    timeout); a query makes at most ``1 + retries`` attempts, waiting ``backoff_s * 2**i``
    (capped at `max_backoff_s`) between them, so the worst case is bounded and known.
    """

    base_url: str
    timeout_s: float = 5.0
    retries: int = 2
    backoff_s: float = 0.25
    max_backoff_s: float = 2.0
    headers: Mapping[str, str] = field(default_factory=dict)
    verify: bool | str = True  # TLS verification, or a CA bundle path
    sleep: Callable[[float], None] = time.sleep
    _session: requests.Session = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.retries < 0 or self.timeout_s <= 0:
            raise ValueError("retries must be >= 0 and timeout_s > 0")
        self.base_url = self.base_url.rstrip("/")
        self._session = requests.Session()
        self._session.headers.update({"Accept": "application/json", **self.headers})

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> PrometheusClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def worst_case_s(self) -> float:
        """The longest one query can take before it raises PrometheusUnavailable."""
        waits = sum(min(self.max_backoff_s, self.backoff_s * 2**i) for i in range(self.retries))
        return (1 + self.retries) * self.timeout_s + waits

    def query(self, expr: str, at: float | None = None) -> list[Sample]:
        """Evaluate `expr` at unix time `at` (Prometheus' now if None).

        Returns the instant vector's samples; a scalar comes back as one sample without labels.
        """
        kind, result = self._query(expr, at)
        if kind == "vector":
            return [Sample(labels=dict(item.get("metric", {})),
                           timestamp=_parse_value(item["value"])[0],
                           value=_parse_value(item["value"])[1]) for item in result]
        if kind == "scalar":
            ts, value = _parse_value(result)
            return [Sample(labels={}, timestamp=ts, value=value)]
        raise QueryError(expr, "unexpected_result",
                         f"expected an instant vector or a scalar, got a {kind}")

    def query_range(self, expr: str, start: float, end: float, step_s: float) -> list[Series]:
        """Evaluate `expr` every `step_s` seconds from `start` to `end` (unix times).

        Long ranges are asked for in pieces of at most MAX_POINTS_PER_QUERY steps and joined;
        a series has no point where Prometheus had no data (the caller sees the gap)."""
        if step_s <= 0 or end < start:
            raise ValueError("a range query needs step_s > 0 and end >= start")
        merged: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
        piece_start = start
        while piece_start <= end:
            piece_end = min(end, piece_start + (MAX_POINTS_PER_QUERY - 1) * step_s)
            form = {"query": expr, "start": f"{piece_start:.3f}", "end": f"{piece_end:.3f}",
                    "step": f"{step_s:g}", "timeout": f"{self.timeout_s:g}s"}
            kind, result = self._post("/api/v1/query_range", form, expr)
            if kind != "matrix":
                raise QueryError(expr, "unexpected_result", f"expected a matrix, got a {kind}")
            for item in result:
                key = tuple(sorted(dict(item.get("metric", {})).items()))
                merged.setdefault(key, []).extend(_parse_value(v) for v in item["values"])
            piece_start = piece_end + step_s
        return [Series(labels=dict(k), points=tuple(v)) for k, v in merged.items()]

    def query_scalar(self, expr: str, at: float | None = None) -> float:
        """A single number: a scalar, or a vector of one sample; NaN for an empty vector."""
        samples = self.query(expr, at)
        if not samples:
            return math.nan
        if len(samples) > 1:
            raise QueryError(expr, "unexpected_result",
                             f"expected one sample, got {len(samples)}")
        return samples[0].value

    def ready(self) -> bool:
        """True if Prometheus answers its readiness endpoint now (one attempt, no retries)."""
        try:
            resp = self._session.get(f"{self.base_url}/-/ready", timeout=self.timeout_s,
                                     verify=self.verify)
        except requests.RequestException:
            return False
        return resp.status_code == 200

    def _query(self, expr: str, at: float | None) -> tuple[str, Any]:
        form: dict[str, str] = {"query": expr, "timeout": f"{self.timeout_s:g}s"}
        if at is not None:
            form["time"] = f"{at:.3f}"
        return self._post("/api/v1/query", form, expr)

    def _post(self, path: str, form: Mapping[str, str], expr: str) -> tuple[str, Any]:
        url = f"{self.base_url}{path}"
        attempts = 1 + self.retries
        cause = ""
        for attempt in range(attempts):
            if attempt:
                self.sleep(min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))
            try:
                # POST: the combined query is long, and URLs have limits that forms do not.
                resp = self._session.post(url, data=form, timeout=self.timeout_s,
                                          verify=self.verify)
            except requests.Timeout:
                cause = f"no answer within {self.timeout_s:g}s"
                continue
            except requests.RequestException as err:
                cause = f"{type(err).__name__}: {err}"
                continue
            body = _json_or_none(resp)
            status = resp.status_code
            if status >= 500 or status == 429:
                cause = f"HTTP {status}" + (f" ({body.get('error')})" if body else "")
                continue
            if body is None or "status" not in body:
                # Something answers, but not Prometheus' API: a wrong address or a proxy page.
                raise PrometheusUnavailable(
                    self.base_url, attempt + 1,
                    f"HTTP {status} without a Prometheus API response: {resp.text[:200]!r}")
            if body["status"] != "success":
                raise QueryError(expr, str(body.get("errorType", "unknown")),
                                 str(body.get("error", "")), status)
            data = body.get("data") or {}
            return str(data.get("resultType", "")), data.get("result")
        raise PrometheusUnavailable(self.base_url, attempts, cause)


def _json_or_none(resp: requests.Response) -> dict[str, Any] | None:
    try:
        body = resp.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
