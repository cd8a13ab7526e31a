"""Real Triton Inference Server processes for the local stack.

The `nvidia-pytriton` wheel ships a real `tritonserver` (2.51) with the Python backend. We run
that binary directly (not through PyTriton's Python API), with a model repository generated here
and the same flags the operator renders for a cluster: explicit model control, `--load-model`,
summary latencies in the metrics. It runs on the CPU; the model (models/simulated_replica.py)
stands in for a GPU replica.

Traps handled here:
- the binary finds its libraries through its RPATH, but the Python backend's stub and libraries
  are resolved from the backend directory we copy, so `nvidia_pytriton.libs` goes on
  LD_LIBRARY_PATH as well;
- the stub embeds the system libpython3.11 and imports packages (numpy<2) through the `python3`
  found on PATH, not PYTHONPATH: this interpreter's environment's bin/ goes first on PATH;
- `/v2/health/ready` answers before any model is loaded: readiness means the model's own
  `/v2/models/<name>/ready`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dedicap_local import procs

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
MODEL_SOURCE = Path(__file__).parent / "models" / "simulated_replica.py"
LLM_SOURCE = Path(__file__).parent / "models" / "streaming_llm.py"
KIND_BATCH, KIND_LLM = "batch", "llm"
# ModelSpec fields the streaming LLM model reads (models/streaming_llm.py, LLMBehaviour)
LLM_FIELDS = ("step_ms", "per_seq_ms", "per_ctx_token_us", "prefill_ms_per_token", "kv_tokens",
              "max_num_seqs", "chunk_tokens")


def _pytriton_root() -> Path:
    import pytriton  # the `local` extra; imported late so the rest of the stack works without it

    return Path(pytriton.__file__).parent


def tritonserver_binary() -> Path:
    return _pytriton_root() / "tritonserver" / "bin" / "tritonserver"


def libs_dir() -> Path:
    return _pytriton_root().parent / "nvidia_pytriton.libs"


def prepare_backends(run_dir: Path) -> Path:
    """A backend directory with the Python backend and the stub for this interpreter's version.

    Copied once per run dir (PyTriton does the same per server); returns the directory to pass as
    `--backend-directory`.
    """
    dist = _pytriton_root() / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise FileNotFoundError(f"no Triton Python backend stub for Python {version} in {dist}")
    target = run_dir / "triton" / "backends"
    python_dir = target / "python"
    wanted = {
        python_dir / "libtriton_python.so": dist / "backends" / "python" / "libtriton_python.so",
        python_dir / "triton_python_backend_utils.py":
            dist / "backends" / "python" / "triton_python_backend_utils.py",
        python_dir / "triton_python_backend_stub": stub,
    }
    python_dir.mkdir(parents=True, exist_ok=True)
    for dst, src in wanted.items():
        if not dst.exists() or dst.stat().st_size != src.stat().st_size:
            # Several data plane threads may prepare at once: each copies to its own name.
            tmp = dst.with_name(f"{dst.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            shutil.copy2(src, tmp)
            os.replace(tmp, dst)
    return target


def server_env() -> dict[str, str]:
    """Environment for tritonserver: its libraries, and this environment's python3 first."""
    env_bin = Path(sys.prefix) / "bin"
    ld = os.environ.get("LD_LIBRARY_PATH", "")
    return {
        "PATH": f"{env_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "LD_LIBRARY_PATH": f"{libs_dir()}:{ld}" if ld else str(libs_dir()),
    }


@dataclass(frozen=True)
class ModelSpec:
    """The simulated replica's Triton configuration (see models/simulated_replica.py)."""

    name: str
    max_batch_size: int = 8
    max_queue_delay_us: int = 2000
    base_ms: float = 20.0
    per_item_ms: float = 5.0
    fail_ratio: float = 0.0
    jitter: float = 0.0
    # Queue policy: requests waiting longer are rejected (counted as REJECTED); 0 = no timeout.
    queue_timeout_us: int = 0
    # Queue bound: requests beyond it are refused at once (Triton 2.51: not counted as REJECTED).
    max_queue_size: int = 0
    instance_count: int = 1
    # "llm": the streaming LLM replica (models/streaming_llm.py) instead of the request-level
    # one; the fields below are its cost and budgets, and fail_ratio applies to it as well
    kind: str = KIND_BATCH
    step_ms: float = 50.0
    per_seq_ms: float = 5.0
    per_ctx_token_us: float = 0.0
    prefill_ms_per_token: float = 0.05
    kv_tokens: int = 6000
    max_num_seqs: int = 16
    chunk_tokens: int = 512

    def capacity_rps(self) -> float:
        """Throughput when every batch is full: the most this replica can serve."""
        per_batch_s = (self.base_ms + self.per_item_ms * self.max_batch_size) / 1000.0
        return self.max_batch_size * self.instance_count / per_batch_s if per_batch_s else 0.0


def render_config(spec: ModelSpec, control_file: Path | None = None) -> str:
    """config.pbtxt for the simulated replica (or the streaming LLM one)."""
    if spec.kind == KIND_LLM:
        return render_llm_config(spec, control_file)
    params = {
        "base_ms": spec.base_ms,
        "per_item_ms": spec.per_item_ms,
        "fail_ratio": spec.fail_ratio,
        "jitter": spec.jitter,
    }
    lines = [
        f'name: "{spec.name}"',
        'backend: "python"',
        f"max_batch_size: {spec.max_batch_size}",
        'input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ -1 ] } ]',
        'output [ { name: "OUTPUT" data_type: TYPE_FP32 dims: [ -1 ] } ]',
        f"instance_group [ {{ kind: KIND_CPU count: {spec.instance_count} }} ]",
        "dynamic_batching {",
        f"  max_queue_delay_microseconds: {spec.max_queue_delay_us}",
    ]
    if spec.queue_timeout_us or spec.max_queue_size:
        policy = ["  default_queue_policy {"]
        if spec.queue_timeout_us:
            policy += [
                "    timeout_action: REJECT",
                f"    default_timeout_microseconds: {spec.queue_timeout_us}",
                "    allow_timeout_override: true",
            ]
        if spec.max_queue_size:
            policy.append(f"    max_queue_size: {spec.max_queue_size}")
        lines += [*policy, "  }"]
    lines.append("}")
    for key, value in params.items():
        lines.append(f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}')
    if control_file is not None:
        lines.append(
            f'parameters {{ key: "control_file" value {{ string_value: "{control_file}" }} }}')
    return "\n".join(lines) + "\n"


def render_llm_config(spec: ModelSpec, control_file: Path | None = None) -> str:
    """config.pbtxt for the streaming LLM replica: decoupled, one request per execute."""
    lines = [
        f'name: "{spec.name}"',
        'backend: "python"',
        "max_batch_size: 0",
        "model_transaction_policy { decoupled: true }",
        'input [ { name: "PROMPT_TOKENS" data_type: TYPE_INT32 dims: [ 1 ] },',
        '        { name: "MAX_TOKENS" data_type: TYPE_INT32 dims: [ 1 ] } ]',
        'output [ { name: "TOKEN" data_type: TYPE_INT32 dims: [ 1 ] } ]',
        "instance_group [ { kind: KIND_CPU count: 1 } ]",
    ]
    params: dict[str, object] = {key: getattr(spec, key) for key in (*LLM_FIELDS, "fail_ratio")}
    if control_file is not None:
        params["control_file"] = control_file
    for key, value in params.items():
        lines.append(f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}')
    return "\n".join(lines) + "\n"


def write_model_repository(repo: Path, spec: ModelSpec, control_file: Path | None = None) -> Path:
    """Generate `<repo>/<model>/{config.pbtxt,1/model.py}`; returns the repository path."""
    model_dir = repo / spec.name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(render_config(spec, control_file))
    source = LLM_SOURCE if spec.kind == KIND_LLM else MODEL_SOURCE
    shutil.copyfile(source, model_dir / "1" / "model.py")
    return repo


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel's choice; another process may race)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def can_listen_on(address: str) -> bool:
    """Whether this machine can bind `address` (a pod address routed to the loopback device)."""
    try:
        with socket.socket() as s:
            s.bind((address, 0))
        return True
    except OSError:
        return False


def ports_free(address: str, ports: Iterable[int]) -> bool:
    """Whether a server could listen on every one of `ports` at `address` now. SO_REUSEADDR as
    servers set it, so connections of a stopped process lingering in TIME_WAIT do not count."""
    for port in ports:
        try:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((address, port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports (sockets held together so the kernel cannot repeat one)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass(frozen=True)
class TritonHandle:
    """One running tritonserver; what is needed to reach, publish and stop it."""

    name: str
    model: str
    http_port: int
    grpc_port: int
    metrics_port: int
    run_dir: str
    spec: dict[str, Any] = field(default_factory=dict)
    # Where it listens: 127.0.0.1, or the pod's own address on the local stack.
    address: str = "127.0.0.1"

    @property
    def http_url(self) -> str:
        return f"http://{self.http_address}"

    @property
    def http_address(self) -> str:
        return f"{self.address}:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"{self.address}:{self.grpc_port}"

    @property
    def metrics_address(self) -> str:
        return f"{self.address}:{self.metrics_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.metrics_address}/metrics"

    @property
    def pid(self) -> int | None:
        return procs.running_pid(Path(self.run_dir), process_name(self.name))

    def model_ready(self) -> bool:
        return procs.http_ok(f"{self.http_url}/v2/models/{self.model}/ready")

    @property
    def control_file(self) -> Path:
        return instance_dir(Path(self.run_dir), self.name) / "control.json"

    @property
    def log_file(self) -> Path:
        return Path(self.run_dir) / "logs" / f"{process_name(self.name)}.log"


def process_name(name: str) -> str:
    return "triton-" + _SAFE.sub("_", name)


def instance_dir(run_dir: Path, name: str) -> Path:
    return run_dir / "triton" / "instances" / _SAFE.sub("_", name)


def server_argv(repo: Path, backends: Path, model: str, http_port: int, grpc_port: int,
                metrics_port: int, address: str = "127.0.0.1") -> list[str]:
    return [
        str(tritonserver_binary()),
        f"--model-repository={repo}",
        "--model-control-mode=explicit",
        f"--load-model={model}",
        "--strict-readiness=true",
        f"--backend-directory={backends}",
        f"--http-address={address}",
        f"--http-port={http_port}",
        f"--grpc-address={address}",
        f"--grpc-port={grpc_port}",
        f"--metrics-address={address}",
        f"--metrics-port={metrics_port}",
        "--metrics-config=summary_latencies=true",
        "--allow-gpu-metrics=false",
        # No GPU here: no pinned or CUDA memory pools to set up.
        "--pinned-memory-pool-byte-size=0",
        "--exit-timeout-secs=5",
        "--log-verbose=0",
    ]


def find_triton(run_dir: Path, name: str) -> TritonHandle | None:
    """The handle of instance `name` if its process still runs (adoption after a restart)."""
    if procs.running_pid(run_dir, process_name(name)) is None:
        return None
    try:
        data = json.loads((instance_dir(run_dir, name) / "handle.json").read_text())
        return TritonHandle(**data)
    except (OSError, ValueError, TypeError):
        return None


def start_triton(
    run_dir: Path,
    name: str,
    model: ModelSpec | str,
    http_port: int | None = None,
    grpc_port: int | None = None,
    metrics_port: int | None = None,
    *,
    timeout: float = 120.0,
    wait: bool = True,
    address: str = "127.0.0.1",
) -> TritonHandle:
    """Start a tritonserver named `name` serving `model` on `address` (ports chosen if omitted).

    Idempotent per name: if that instance already runs, returns its handle. With `wait`, returns
    once the model itself is ready (raises TimeoutError with the server's log tail otherwise, and
    stops the process).
    """
    existing = find_triton(run_dir, name)
    if existing is not None:
        if wait:
            _wait_ready(existing, timeout)
        return existing
    spec = ModelSpec(name=model) if isinstance(model, str) else model
    if http_port is None or grpc_port is None or metrics_port is None:
        chosen = free_ports(3)
        http_port = http_port or chosen[0]
        grpc_port = grpc_port or chosen[1]
        metrics_port = metrics_port or chosen[2]
    home = instance_dir(run_dir, name)
    if home.exists():
        shutil.rmtree(home / "repo", ignore_errors=True)
    home.mkdir(parents=True, exist_ok=True)
    handle = TritonHandle(name=name, model=spec.name, http_port=http_port, grpc_port=grpc_port,
                          metrics_port=metrics_port, run_dir=str(run_dir), spec=asdict(spec),
                          address=address)
    repo = write_model_repository(home / "repo", spec, handle.control_file)
    backends = prepare_backends(run_dir)
    argv = server_argv(repo, backends, spec.name, http_port, grpc_port, metrics_port, address)
    # Empty log per start, so a failure's tail is this start's.
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    handle.log_file.write_bytes(b"")
    procs.start(run_dir, process_name(name), argv, env=server_env(), cwd=home)
    (home / "handle.json").write_text(json.dumps(asdict(handle), indent=1) + "\n")
    if wait:
        try:
            _wait_ready(handle, timeout)
        except TimeoutError:
            stop_triton(run_dir, name)
            raise
    return handle


def _wait_ready(handle: TritonHandle, timeout: float) -> None:
    run_dir = Path(handle.run_dir)

    def ready() -> bool:
        if procs.running_pid(run_dir, process_name(handle.name)) is None:
            raise _Exited()
        return handle.model_ready()

    try:
        procs.wait_for(ready, f"tritonserver {handle.name} (model {handle.model})", timeout,
                       handle.log_file)
    except _Exited:
        tail = "\n".join(handle.log_file.read_text(errors="replace").splitlines()[-30:])
        raise TimeoutError(f"tritonserver {handle.name} exited before its model was ready:\n"
                           f"{tail}") from None


class _Exited(Exception):
    pass


def wait_ready(handle: TritonHandle, timeout: float = 120.0) -> None:
    """Block until the handle's model answers ready; raises TimeoutError if it does not."""
    _wait_ready(handle, timeout)


def stop_triton(run_dir: Path, name: str | TritonHandle, timeout: float = 15.0) -> bool:
    """Stop instance `name` (SIGTERM, then SIGKILL) and forget it. True if it was running."""
    key = name.name if isinstance(name, TritonHandle) else name
    was_running = procs.stop(run_dir, process_name(key), timeout=timeout)
    home = instance_dir(run_dir, key)
    with contextlib.suppress(OSError):
        (home / "handle.json").unlink()
    shutil.rmtree(home, ignore_errors=True)
    return was_running


def list_instances(run_dir: Path) -> list[TritonHandle]:
    """Handles of every instance whose process still runs under `run_dir`."""
    root = run_dir / "triton" / "instances"
    out: list[TritonHandle] = []
    if not root.is_dir():
        return out
    for home in sorted(root.iterdir()):
        try:
            data = json.loads((home / "handle.json").read_text())
        except (OSError, ValueError):
            continue
        handle = find_triton(run_dir, str(data.get("name", "")))
        if handle is not None:
            out.append(handle)
    return out


def batch_stats(handle: TritonHandle) -> dict[int, tuple[int, int]]:
    """{batch size: (executions, compute-infer ns)} so far, from Triton's statistics API: what
    its Prometheus metrics only give as totals (the policy sees count / exec_count)."""
    url = f"{handle.http_url}/v2/models/{handle.model}/stats"
    with urllib.request.urlopen(url, timeout=10) as r:
        stats = json.load(r)["model_stats"][0]
    return {int(b["batch_size"]): (int(b["compute_infer"]["count"]),
                                   int(b["compute_infer"]["ns"]))
            for b in stats.get("batch_stats", [])}


def set_behaviour(handle: TritonHandle, **overrides: float) -> None:
    """Change the running model's behaviour (base_ms, per_item_ms, fail_ratio, jitter; for the
    streaming LLM model its LLM_FIELDS and fail_ratio) live.

    The model reads the control file at most twice a second; an empty call restores its config.
    """
    path = handle.control_file
    if not overrides:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(overrides))
    os.replace(tmp, path)


def wait_stopped(handle: TritonHandle, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and handle.pid is not None:
        time.sleep(0.1)
