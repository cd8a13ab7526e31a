"""The Prometheus HTTP API client against a tiny scripted HTTP server on 127.0.0.1 (real sockets):
answers, retries with backoff, timeouts, and the two kinds of failure."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dedicap.metrics.prometheus import (
    PrometheusClient,
    PrometheusUnavailable,
    QueryError,
    resolve_url,
)


@dataclass
class Reply:
    status: int = 200
    body: str = ""
    delay_s: float = 0.0


@dataclass
class Script:
    """Replies served in order (the last one repeats) and the requests received."""

    replies: list[Reply] = field(default_factory=list)
    requests: list[tuple[str, str, dict[str, list[str]]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next(self) -> Reply:
        with self.lock:
            return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]


def ok(result_type: str, result: object) -> Reply:
    return Reply(body=json.dumps({"status": "success",
                                  "data": {"resultType": result_type, "result": result}}))


def api_error(status: int, error_type: str, error: str) -> Reply:
    return Reply(status=status, body=json.dumps({"status": "error", "errorType": error_type,
                                                 "error": error}))


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, form: dict[str, list[str]]) -> None:
            script.requests.append((self.command, self.path, form))
            reply = script.next()
            if reply.delay_s:
                time.sleep(reply.delay_s)
            data = reply.body.encode()
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            self._answer(urllib.parse.parse_qs(self.rfile.read(length).decode()))

        def do_GET(self) -> None:
            self._answer({})

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", script
    httpd.shutdown()
    httpd.server_close()


class Sleeps(list[float]):
    """A real sleep that remembers how long it was asked to wait."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)
        time.sleep(seconds)


def client(url: str, *, timeout_s: float = 2.0, retries: int = 2, backoff_s: float = 0.01,
           max_backoff_s: float = 2.0, sleeps: Sleeps | None = None) -> PrometheusClient:
    return PrometheusClient(url, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s,
                            max_backoff_s=max_backoff_s,
                            sleep=sleeps if sleeps is not None else Sleeps())


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_vector_answer_with_nan_and_labels(server: tuple[str, Script]) -> None:
    url, script = server
    script.replies = [ok("vector", [
        {"metric": {"pod": "a"}, "value": [1700000000.5, "12.5"]},
        {"metric": {"pod": "b"}, "value": [1700000000.5, "NaN"]},
        {"metric": {}, "value": [1700000000.5, "+Inf"]},
    ])]
    with client(url) as c:
        samples = c.query('up{job="x"}', at=1700000000.5)
    assert [s.labels for s in samples] == [{"pod": "a"}, {"pod": "b"}, {}]
    assert samples[0].value == 12.5 and samples[0].timestamp == 1700000000.5
    assert math.isnan(samples[1].value) and samples[2].value == math.inf
    method, path, form = script.requests[0]
    # POSTed as a form: long queries do not hit URL length limits.
    assert (method, path) == ("POST", "/api/v1/query")
    assert form["query"] == ['up{job="x"}'] and form["time"] == ["1700000000.500"]
    assert form["timeout"] == ["2s"]


def test_scalar_answers(server: tuple[str, Script]) -> None:
    url, script = server
    script.replies = [ok("scalar", [1700000000, "3"]), ok("vector", []),
                      ok("vector", [{"metric": {}, "value": [1, "7"]}])]
    with client(url) as c:
        assert c.query_scalar("scalar(3)") == 3.0
        assert math.isnan(c.query_scalar("absent_metric"))
        assert c.query_scalar("sum(x)") == 7.0


def test_more_than_one_sample_is_not_a_scalar(server: tuple[str, Script]) -> None:
    url, script = server
    script.replies = [ok("vector", [{"metric": {"a": "1"}, "value": [1, "1"]},
                                    {"metric": {"a": "2"}, "value": [1, "2"]}])]
    with client(url) as c, pytest.raises(QueryError, match="expected one sample"):
        c.query_scalar("x")


def test_a_matrix_is_refused(server: tuple[str, Script]) -> None:
    url, script = server
    script.replies = [ok("matrix", [])]
    with client(url) as c, pytest.raises(QueryError, match="got a matrix"):
        c.query("x[1m]")


def test_5xx_is_retried_with_backoff_then_succeeds(server: tuple[str, Script]) -> None:
    url, script = server
    script.replies = [api_error(503, "timeout", "query timed out"), Reply(502, "bad gateway"),
                      ok("vector", [{"metric": {}, "value": [1, "1"]}])]
    sleeps = Sleeps()
    c = client(url, retries=2, backoff_s=0.05, sleeps=sleeps)
    assert c.query_scalar("x") == 1.0
    assert len(script.requests) == 3
    assert sleeps == [0.05, 0.1]


def test_persistent_5xx_gives_unavailable_after_bounded_attempts(
        server: tuple[str, Script]) -> None:
    url, script = server
    script.replies = [api_error(503, "unavailable", "TSDB not ready")]
    sleeps = Sleeps()
    c = client(url, retries=3, backoff_s=0.01, max_backoff_s=0.02, sleeps=sleeps)
    with pytest.raises(PrometheusUnavailable) as caught:
        c.query("x")
    assert len(script.requests) == 4
    assert caught.value.attempts == 4 and "HTTP 503 (TSDB not ready)" in caught.value.cause
    assert sleeps == [0.01, 0.02, 0.02]


def test_bad_query_is_a_query_error_with_prometheus_words_and_not_retried(
        server: tuple[str, Script]) -> None:
    url, script = server
    script.replies = [api_error(400, "bad_data", 'parse error: unexpected "}"')]
    c = client(url, retries=3)
    with pytest.raises(QueryError) as caught:
        c.query("sum(x}")
    err = caught.value
    assert (err.query, err.error_type, err.status) == ("sum(x}", "bad_data", 400)
    assert 'unexpected "}"' in err.error and "sum(x}" in str(err)
    assert len(script.requests) == 1


def test_execution_error_is_a_query_error(server: tuple[str, Script]) -> None:
    url, script = server
    script.replies = [api_error(422, "execution", "many-to-many matching not allowed")]
    with client(url) as c, pytest.raises(QueryError, match="many-to-many"):
        c.query("a / b")


def test_timeout_is_retried_then_unavailable(server: tuple[str, Script]) -> None:
    url, script = server
    script.replies = [Reply(delay_s=1.0, body="{}")]
    c = client(url, timeout_s=0.2, retries=1)
    started = time.monotonic()
    with pytest.raises(PrometheusUnavailable, match=r"no answer within 0\.2s"):
        c.query("x")
    elapsed = time.monotonic() - started
    assert len(script.requests) == 2
    # Bounded: two attempts of 0.2 s and one short backoff, not the server's full second each.
    assert elapsed < c.worst_case_s() + 0.5 < 1.5


def test_slow_answer_then_fast_one_succeeds(server: tuple[str, Script]) -> None:
    url, script = server
    script.replies = [Reply(delay_s=1.0, body="{}"), ok("scalar", [1, "5"])]
    assert client(url, timeout_s=0.3, retries=1).query_scalar("x") == 5.0


def test_connection_refused_is_unavailable() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    sleeps = Sleeps()
    c = client(url, retries=2, sleeps=sleeps)
    with pytest.raises(PrometheusUnavailable) as caught:
        c.query("up")
    assert caught.value.attempts == 3 and caught.value.url == url
    assert "ConnectionError" in caught.value.cause
    assert sleeps == [0.01, 0.02]
    assert not c.ready()


def test_something_that_is_not_prometheus_is_unavailable(server: tuple[str, Script]) -> None:
    url, script = server
    script.replies = [Reply(404, "<html>not found</html>")]
    with client(url) as c, pytest.raises(PrometheusUnavailable, match="without a Prometheus API"):
        c.query("up")
    assert len(script.requests) == 1


def test_ready(server: tuple[str, Script]) -> None:
    url, script = server
    script.replies = [Reply(200, "Prometheus Server is Ready.")]
    assert client(url + "/").ready()
    assert script.requests[-1][:2] == ("GET", "/-/ready")


def test_clients_share_nothing(server: tuple[str, Script]) -> None:
    url, script = server
    script.replies = [ok("scalar", [1, "1"])]
    a = PrometheusClient(url, headers={"Authorization": "Bearer a"})
    b = PrometheusClient(url)
    assert a._session is not b._session
    assert "Authorization" not in b._session.headers


def test_resolve_url_from_flag_then_environment() -> None:
    env = {"DEDICAP_PROMETHEUS_URL": "http://prometheus.monitoring:9090/"}
    assert resolve_url("https://p.example:9090/prom/", env) == "https://p.example:9090/prom"
    assert resolve_url(None, env) == "http://prometheus.monitoring:9090"
    assert resolve_url("", env) == "http://prometheus.monitoring:9090"
    assert resolve_url(None, {}) is None
    assert resolve_url(None, {"DEDICAP_PROMETHEUS_URL": "  "}) is None
    for bad in ("prometheus:9090", "ftp://p:21", "http://"):
        with pytest.raises(ValueError, match="http"):
            resolve_url(bad, {})


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        PrometheusClient("http://127.0.0.1:1", retries=-1)
    with pytest.raises(ValueError):
        PrometheusClient("http://127.0.0.1:1", timeout_s=0)


def test_range_query_in_pieces_joined_per_series(server: tuple[str, Script]) -> None:
    url, script = server
    piece = [{"metric": {"pod": "a"}, "values": [[1000.0, "1"], [1060.0, "NaN"]]}]
    script.replies = [ok("matrix", piece), ok("matrix", piece)]
    with client(url) as c:
        # 12,000 steps: more than one query may ask for, so it goes in two pieces
        series = c.query_range("sum(rate(x[1m]))", 0.0, 60.0 * 11_999, 60.0)
    assert [s.labels for s in series] == [{"pod": "a"}]
    assert len(series[0].points) == 4 and math.isnan(series[0].points[1][1])
    assert [(m, p) for m, p, _ in script.requests] == [("POST", "/api/v1/query_range")] * 2
    first, second = (r[2] for r in script.requests)
    assert first["step"] == ["60"] and float(first["end"][0]) == 60.0 * 9_999
    assert float(second["start"][0]) == 60.0 * 10_000
    assert float(second["end"][0]) == 60.0 * 11_999
    script.replies = [ok("vector", [])]
    with client(url) as c:
        with pytest.raises(QueryError, match="expected a matrix"):
            c.query_range("x", 0.0, 60.0, 60.0)
        with pytest.raises(ValueError):
            c.query_range("x", 10.0, 0.0, 60.0)
