"""The local stack's Prometheus: Debian's `prometheus` binary with a configuration this project
owns, and file-based service discovery so that the local data plane can publish every Triton
process it starts (one JSON file per target) without a reload.

Intervals are short (2 s scrape, 2 s rule evaluation, 2 s discovery refresh) so that tests and the
demo see a change within seconds; a real cluster scrapes Triton every 15-30 s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from dedicap_local import procs

NAME = "prometheus"
DEFAULT_PORT = 29090
SCRAPE_INTERVAL = "2s"
EVALUATION_INTERVAL = "2s"
SD_REFRESH_INTERVAL = "2s"

_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


def _home(run_dir: Path) -> Path:
    return run_dir / "prometheus"


def targets_dir(run_dir: Path) -> Path:
    """Where file-based discovery looks: every `*.json` here is a list of target groups."""
    return _home(run_dir) / "targets"


def rules_dir(run_dir: Path) -> Path:
    """Recording and alerting rules (`*.yml`) dropped here are loaded on start or reload."""
    return _home(run_dir) / "rules"


def _binary() -> str:
    found = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path(
        "/usr/bin/prometheus").exists() else None)
    if not found:
        raise FileNotFoundError("prometheus not found on PATH: install Debian's `prometheus`")
    return found


def render_config(run_dir: Path, port: int) -> str:
    """The configuration, as YAML text (JSON is YAML, and needs no extra library)."""
    config = {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "scrape_timeout": SCRAPE_INTERVAL,
            "evaluation_interval": EVALUATION_INTERVAL,
        },
        "rule_files": [str(rules_dir(run_dir) / "*.yml")],
        "scrape_configs": [
            {
                "job_name": "prometheus",
                "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
            },
            {
                # A target's labels may set `job` or `__metrics_path__` to override these.
                "job_name": "triton",
                "file_sd_configs": [
                    {
                        "files": [str(targets_dir(run_dir) / "*.json")],
                        "refresh_interval": SD_REFRESH_INTERVAL,
                    }
                ],
            },
        ],
    }
    return json.dumps(config, indent=2) + "\n"


def _port_file(run_dir: Path) -> Path:
    return _home(run_dir) / "port"


def url(run_dir: Path) -> str | None:
    """The URL of the Prometheus running for `run_dir`, or None if none runs."""
    if procs.running_pid(run_dir, NAME) is None:
        return None
    try:
        port = int(_port_file(run_dir).read_text())
    except (OSError, ValueError):
        return None
    return f"http://127.0.0.1:{port}"


def start(run_dir: Path, port: int = DEFAULT_PORT, timeout: float = 60.0) -> str:
    """Start Prometheus for `run_dir` (or find it running) and wait until it is ready.

    Returns its base URL. Idempotent: a second call returns the running one's URL, whatever port
    it was started on.
    """
    running = url(run_dir)
    if running is not None:
        procs.wait_for(lambda: procs.http_ok(running + "/-/ready"), "prometheus", timeout,
                       run_dir / "logs" / f"{NAME}.log")
        return running
    if procs.port_open(port):
        raise RuntimeError(
            f"port {port} is taken by another process (a system Prometheus service?); "
            "stop it or choose another port")
    home = _home(run_dir)
    for path in (home / "data", targets_dir(run_dir), rules_dir(run_dir)):
        path.mkdir(parents=True, exist_ok=True)
    config = home / "prometheus.yml"
    _atomic_write(config, render_config(run_dir, port))
    _port_file(run_dir).write_text(f"{port}\n")
    argv = [
        _binary(),
        f"--config.file={config}",
        f"--storage.tsdb.path={home / 'data'}",
        "--storage.tsdb.retention.time=2d",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
        "--log.level=warn",
    ]
    procs.start(run_dir, NAME, argv, cwd=home)
    base = f"http://127.0.0.1:{port}"
    procs.wait_for(lambda: procs.http_ok(base + "/-/ready"), "prometheus", timeout,
                   run_dir / "logs" / f"{NAME}.log")
    return base


def stop(run_dir: Path) -> None:
    """Stop the Prometheus of `run_dir`; its data and target files stay for the next start."""
    procs.stop(run_dir, NAME)


def _target_file(run_dir: Path, name: str) -> Path:
    return targets_dir(run_dir) / f"{_SAFE_NAME.sub('_', name)}.json"


def _atomic_write(path: Path, text: str) -> None:
    # Prometheus watches the directory: it must never read a half-written file, and the
    # temporary name must not match the `*.json` pattern.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    tmp.write_text(text)
    os.replace(tmp, path)


def write_target(run_dir: Path, name: str, address: str, labels: dict[str, str]) -> None:
    """Publish one scrape target (`host:port`) with its labels, replacing any earlier `name`."""
    group = [{"targets": [address], "labels": dict(labels)}]
    _atomic_write(_target_file(run_dir, name), json.dumps(group, indent=1) + "\n")


def remove_target(run_dir: Path, name: str) -> None:
    """Withdraw the target `name`; Prometheus drops it at its next discovery refresh."""
    _target_file(run_dir, name).unlink(missing_ok=True)


def list_targets(run_dir: Path) -> dict[str, list[dict[str, object]]]:
    """The published target files by name (what discovery will see)."""
    out: dict[str, list[dict[str, object]]] = {}
    directory = targets_dir(run_dir)
    if not directory.is_dir():
        return out
    for path in sorted(directory.glob("*.json")):
        try:
            out[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return out
