"""The operator's probes: `/healthz` (liveness) and `/readyz` (readiness) on one small HTTP server.

- **Liveness**: kopf's event loop answers within a few seconds. A loop that is stuck (a handler
  blocking it, a deadlock) does not, and the kubelet restarts the container. Before kopf has
  started, the process counts as alive (it is starting).
- **Readiness**: the API server answers, and this process either acts or stands by: it acts
  when the peering gate says so, and stands by while its own entry is live in the peering
  object (kopf has announced it; a peer with a higher priority acts). A process that cannot
  reach the API server, or that kopf has not announced yet, is not ready. A Deployment's
  rolling update waits for readiness, so it never replaces a working operator with one that
  could not take over.

`connected` is one cheap request (`GET /version`, short timeout); it is the one function to
point at a shared, watch-backed view of the cluster once the operator has one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import kopf

from dedicap.controller.kube import Kube, KubeError
from dedicap.controller.peering import PeeringGate

log = logging.getLogger(__name__)


def announced(peers: Mapping[str, Any] | None, priority: int, now: datetime) -> bool:
    """Whether a live entry with this process's priority is in the peering object's status:
    kopf has announced this process (priorities are unique per process)."""
    for info in (peers or {}).values():
        if not isinstance(info, Mapping):
            continue
        try:
            if int(info.get("priority", 0)) != priority:
                continue
            seen = datetime.fromisoformat(str(info["lastseen"]))
            lifetime = int(info.get("lifetime", 60))
        except (KeyError, TypeError, ValueError):
            continue
        if seen.tzinfo is None:
            seen = seen.replace(tzinfo=UTC)
        if (now - seen).total_seconds() < lifetime:
            return True
    return False


@dataclass
class Health:
    """Answers the probes. `kube` should have a short timeout: a probe must answer in time."""

    kube: Kube
    gate: PeeringGate
    loop_timeout: float = 5.0
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    loop: asyncio.AbstractEventLoop | None = field(default=None, init=False)

    def connected(self) -> str | None:
        """None when the API server answers; else why not."""
        try:
            self.kube.request("GET", "/version")
        except Exception as err:  # KubeError, and the client's own connection errors
            return f"API server not reachable: {err}"
        return None

    def role(self) -> str:
        """'acting', 'standing by' or 'not announced' (starting, or dropped from peering)."""
        if self.gate.allows():
            return "acting"
        return ("standing by" if announced(self.gate.peers(), self.gate.priority, self.clock())
                else "not announced")

    def readiness(self) -> tuple[bool, str]:
        problem = self.connected()
        if problem:
            return False, problem
        try:
            role = self.role()
        except KubeError as err:
            return False, f"cannot read peering: {err}"
        return role in ("acting", "standing by"), role

    def liveness(self) -> tuple[bool, str]:
        loop = self.loop
        if loop is None:
            return True, "starting"
        try:
            future = asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop)
            future.result(timeout=self.loop_timeout)
        except (RuntimeError, TimeoutError) as err:
            return False, f"kopf's event loop does not answer: {err or 'timeout'}"
        return True, "ok"

    def register(self, registry: kopf.OperatorRegistry) -> None:
        """Learn kopf's event loop when kopf starts (the liveness check runs a no-op on it)."""

        @kopf.on.startup(registry=registry, id="health")
        async def remember_loop(**_: Any) -> None:
            self.loop = asyncio.get_running_loop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True


def serve(health: Health, address: str, port: int) -> ThreadingHTTPServer:
    """Serve /healthz and /readyz on `address:port` from a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            checks = {"/healthz": health.liveness, "/readyz": health.readiness}
            check = checks.get(self.path.split("?", 1)[0])
            if check is None:
                self.send_error(404)
                return
            ok, text = check()
            body = f"{'ok' if ok else 'failed'}: {text}\n".encode()
            self.send_response(200 if ok else 503)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # probes every few seconds would drown the operator's log

    server_class: type[ThreadingHTTPServer] = _Server
    if ":" in address:  # an IPv6 pod address
        class _Server6(_Server):
            address_family = socket.AF_INET6
        server_class = _Server6
    server = server_class((address, port), Handler)
    thread = threading.Thread(target=server.serve_forever, name="health", daemon=True)
    thread.start()
    log.info("probes on http://%s:%d/healthz and /readyz", address, port)
    return server


def shutdown(server: ThreadingHTTPServer | None) -> None:
    if server is not None:
        with contextlib.suppress(Exception):
            server.shutdown()
            server.server_close()
