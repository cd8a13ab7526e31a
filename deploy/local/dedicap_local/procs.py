"""Background processes of the local stack, tracked by pid files so that `up` is idempotent and
`down` leaves nothing behind, even across a crash of the process that started them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


def pid_file(run_dir: Path, name: str) -> Path:
    return run_dir / "pids" / f"{name}.pid"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def running_pid(run_dir: Path, name: str) -> int | None:
    """The pid recorded for `name` if that process still runs (and is not a recycled pid)."""
    path = pid_file(run_dir, name)
    try:
        pid_text, _, marker = path.read_text().partition("\n")
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    cmd = _cmdline(pid)
    if not cmd or (marker and marker.strip() not in cmd):
        return None
    return pid


def start(
    run_dir: Path,
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Start `argv` detached in its own session, logging to run_dir/logs/<name>.log.

    Returns the pid; if a process of that name already runs with these very arguments, returns
    its pid and starts nothing. One that runs with other arguments (a changed flag, port or pin)
    is stopped and started anew.
    """
    pid = running_pid(run_dir, name)
    if pid is not None:
        if _cmdline(pid).strip() == " ".join(argv):
            return pid
        stop(run_dir, name)
    (run_dir / "pids").mkdir(parents=True, exist_ok=True)
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    log = open(run_dir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    proc = subprocess.Popen(
        list(argv),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=full_env,
        cwd=str(cwd) if cwd else None,
        start_new_session=True,
    )
    log.close()
    # The marker (the program's path) guards against a recycled pid being taken for ours.
    pid_file(run_dir, name).write_text(f"{proc.pid}\n{argv[0]}\n")
    return proc.pid


def stop(run_dir: Path, name: str, timeout: float = 15.0) -> bool:
    """Stop the process group of `name`: SIGTERM, then SIGKILL after `timeout`. True if it ran.
    The pid file goes last, so a process that `running_pid` no longer reports has exited (and
    closed its ports)."""
    pid = running_pid(run_dir, name)
    if pid is None:
        pid_file(run_dir, name).unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.05)
    pid_file(run_dir, name).unlink(missing_ok=True)
    return True


def _alive(pid: int) -> bool:
    # A zombie child of ours still "exists": reap it if it is one.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except (OSError, IndexError):
        return False
    return state != "Z"


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_for(check: Callable[[], bool], what: str, timeout: float, log: Path | None = None) -> None:
    """Poll `check` until it holds; on timeout raise with the tail of the component's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.25)
    tail = ""
    if log and log.exists():
        tail = "\n--- last lines of " + str(log) + " ---\n" + "\n".join(
            log.read_text(errors="replace").splitlines()[-30:])
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s{tail}")


def http_ok(url: str, context: object | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as resp:  # type: ignore[arg-type]
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError):
        return False
