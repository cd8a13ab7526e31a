"""Load generator for the local data plane: an open-loop Poisson rate profile against the ready
replicas of a ModelDeployment, spread over them as a Service would, through tritonclient (gRPC).

Open loop means arrivals do not wait for answers: when replicas are too slow, requests pile up
in Triton's queue and latency grows, as real traffic would make it. Everything is bounded: the
profile's total duration, `max_requests`, and `max_in_flight` (arrivals beyond it are counted as
`dropped`, not sent, to protect the machine running the test).

    python -m dedicap_local.loadgen -n acme -m support-bot --profile 30:5,60:20

The endpoints come from the data plane's `run_dir/dataplane/endpoints/<ns>.<md>.json`, re-read
every second, so new replicas take load as soon as their model is ready.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import json
import math
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

INPUT_SHAPE = (1, 4)


@dataclass(frozen=True)
class Step:
    duration_s: float
    rps: float


def parse_profile(text: str) -> list[Step]:
    """`"30:5,60:20"` -> 30 s at 5 req/s, then 60 s at 20 req/s."""
    steps = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            duration, rps = (float(x) for x in part.split(":"))
        except ValueError:
            raise ValueError(f"profile step {part!r} is not DURATION_S:RPS") from None
        if duration <= 0 or rps < 0 or not math.isfinite(duration + rps):
            raise ValueError(f"profile step {part!r}: duration must be > 0 and rate >= 0")
        steps.append(Step(duration, rps))
    if not steps:
        raise ValueError("empty profile")
    return steps


def arrival_times(profile: Sequence[Step], rng: random.Random,
                  max_requests: int | None = None) -> Iterator[tuple[float, int]]:
    """Poisson arrivals: (offset from start in s, step index), increasing, within the profile.

    A step's exponential gap that crosses into the next step is redrawn there: the process is
    memoryless, so this is exactly a piecewise-constant-rate Poisson process.
    """
    start = 0.0
    count = 0
    for index, step in enumerate(profile):
        end = start + step.duration_s
        t = start
        if step.rps > 0:
            while True:
                t += rng.expovariate(step.rps)
                if t >= end:
                    break
                if max_requests is not None and count >= max_requests:
                    return
                count += 1
                yield t, index
        start = end


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=float), q))


def classify(err: BaseException) -> str:
    """A failure's kind: the categories Triton's metrics use where the client can tell them."""
    text = str(err).lower()
    status = ""
    with contextlib.suppress(Exception):
        status = str(err.status() or "").upper()  # type: ignore[attr-defined]
    if "timeout expired" in text:
        return "rejected_timeout"  # Triton's queue policy: counted as REJECTED by Triton
    if "maximum queue size" in text:
        return "rejected_queue_full"  # refused at enqueue: Triton 2.51 counts it nowhere
    if isinstance(err, asyncio.TimeoutError) or "DEADLINE_EXCEEDED" in status or "deadline" in text:
        return "client_timeout"
    if "INTERNAL" in status or "failed to process the request" in text:
        return "backend"
    if "UNAVAILABLE" in status or "connect" in text:
        return "unavailable"
    return "other"


@dataclass
class Report:
    """What the clients saw. Latencies are of successful requests only, in seconds."""

    sent: int = 0
    succeeded: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    dropped: int = 0  # arrivals not sent: too many in flight
    no_endpoints: int = 0  # arrivals not sent: no ready replica
    latencies: list[float] = field(default_factory=list)
    # every request sent: (seconds from the start when it was sent, latency in s or NaN when it
    # failed), so that a caller can judge any window (a minute, the time after a step)
    timeline: list[tuple[float, float]] = field(default_factory=list)
    per_step: list[dict[str, Any]] = field(default_factory=list)
    per_endpoint: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    started_at: float = 0.0  # unix time of offset 0

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def summary(self) -> dict[str, Any]:
        lat_ms = [x * 1000 for x in self.latencies]
        return {
            "sent": self.sent, "succeeded": self.succeeded, "failed": self.failed,
            "failures": dict(self.failures), "dropped": self.dropped,
            "no_endpoints": self.no_endpoints, "elapsed_s": round(self.elapsed_s, 2),
            "p50_ms": _round(percentile(lat_ms, 50)), "p95_ms": _round(percentile(lat_ms, 95)),
            "p99_ms": _round(percentile(lat_ms, 99)),
            "per_endpoint": dict(self.per_endpoint), "steps": self.per_step,
        }


def step_minutes(report: Report, profile: Sequence[Step]) -> list[dict[str, Any]]:
    """The clients' requests by the minute of the load step in which they completed (a failure
    counts where it was sent): each step's first minute, its second, ... (a step's last one may
    be shorter). What "no minute above the SLO after the first of each step" is judged on."""
    bounds: list[tuple[int, int, float, float]] = []  # (step, minute, from, to)
    start = 0.0
    for index, step in enumerate(profile):
        end = start + step.duration_s
        for minute in range(1, math.ceil(step.duration_s / 60.0 - 1e-9) + 1):
            a = start + 60.0 * (minute - 1)
            bounds.append((index, minute, a, min(a + 60.0, end)))
        start = end
    out = []
    for index, minute, a, b in bounds:
        lat = [x for t, x in report.timeline if math.isfinite(x) and a <= t + x < b]
        failed = sum(1 for t, x in report.timeline if not math.isfinite(x) and a <= t < b)
        out.append({"step": index, "minute": minute, "start_s": a, "end_s": b,
                    "rps": profile[index].rps, "requests": len(lat) + failed, "failed": failed,
                    "p95_ms": _round(percentile([x * 1000 for x in lat], 95))})
    return out


def _round(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 1)


class Endpoints:
    """Ready replicas, round robin, re-read from a file or given as a fixed list."""

    def __init__(self, source: Path | Sequence[dict[str, str]], refresh_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._file = source if isinstance(source, Path) else None
        self._list = [] if isinstance(source, Path) else list(source)
        self._refresh_s = refresh_s
        self._clock = clock
        self._read_at = -math.inf
        self._next = 0

    def current(self) -> list[dict[str, str]]:
        if self._file is not None and self._clock() - self._read_at >= self._refresh_s:
            self._read_at = self._clock()
            try:
                data = json.loads(self._file.read_text())
                self._list = list(data.get("endpoints", []))
            except (OSError, ValueError, AttributeError):
                self._list = []
        return self._list

    def pick(self) -> dict[str, str] | None:
        endpoints = self.current()
        if not endpoints:
            return None
        self._next = (self._next + 1) % len(endpoints)
        return endpoints[self._next]


async def pace(profile: Sequence[Step], rng: random.Random, endpoints: Endpoints,
               report: Report, steps: list[dict[str, Any]],
               one: Callable[[dict[str, str], int, float], Coroutine[Any, Any, None]], *,
               max_requests: int | None,
               max_in_flight: int, stop: threading.Event | None, wait_s: float,
               arrivals: Sequence[float] | None = None) -> None:
    """Open-loop arrivals: start `one(endpoint, step index, send offset)` at each Poisson
    arrival of `profile` (or at each of `arrivals`, offsets in seconds, e.g. a trace's own
    request times; `profile` then only names the steps they count in), counting in `report`
    and `steps`; then wait up to `wait_s` for those in flight; whatever is still running then
    is cancelled."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    report.started_at = time.time()
    in_flight: set[asyncio.Task[None]] = set()
    try:
        times = (arrival_times(profile, rng, max_requests) if arrivals is None
                 else _in_steps(arrivals, profile, max_requests))
        for offset, index in times:
            if stop is not None and stop.is_set():
                break
            delay = start + offset - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            endpoint = endpoints.pick()
            if endpoint is None:
                report.no_endpoints += 1
                continue
            if len(in_flight) >= max_in_flight:
                report.dropped += 1
                continue
            report.sent += 1
            steps[index]["sent"] += 1
            report.per_endpoint[endpoint.get("pod", endpoint["grpc"])] += 1
            task = asyncio.create_task(one(endpoint, index, offset))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(set(in_flight), timeout=wait_s)
    finally:
        for task in list(in_flight):
            task.cancel()


class Clients:
    """One asynchronous gRPC client per endpoint address, closed together."""

    def __init__(self) -> None:
        import tritonclient.grpc.aio as grpcclient

        self.module = grpcclient
        self._clients: dict[str, Any] = {}

    def get(self, endpoint: dict[str, str]) -> Any:
        address = endpoint["grpc"]
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = self.module.InferenceServerClient(address)
        return client

    async def close(self) -> None:
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                await client.close()


def step_percentiles(steps: list[dict[str, Any]], key: str, report: Report) -> None:
    """Move `steps` into `report.per_step`, each step's list of seconds under `key` replaced by
    its p50 and p95 in ms (``<key>p50_ms``: key "latencies" gives ``p50_ms``)."""
    prefix = "" if key == "latencies" else f"{key}_"
    for step in steps:
        ms = [x * 1000 for x in step.pop(key)]
        step[f"{prefix}p50_ms"] = _round(percentile(ms, 50))
        step[f"{prefix}p95_ms"] = _round(percentile(ms, 95))
        report.per_step.append(step)


async def drive(endpoints: Endpoints, profile: Sequence[Step], *, seed: int | None = None,
                max_requests: int | None = None, max_in_flight: int = 256,
                timeout_s: float = 10.0, stop: threading.Event | None = None,
                model: str | None = None, arrivals: Sequence[float] | None = None) -> Report:
    """Run `profile` against `endpoints` (entries with `grpc` and `model`) and report (with
    `arrivals`, at those send offsets: see `pace`)."""
    rng = random.Random(seed)
    report = Report()
    steps: list[dict[str, Any]] = [
        {"duration_s": s.duration_s, "rps": s.rps, "sent": 0, "succeeded": 0, "failed": 0,
         "latencies": []} for s in profile]
    clients = Clients()
    data = np.ones(INPUT_SHAPE, dtype=np.float32)
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def one(endpoint: dict[str, str], index: int, sent_at: float) -> None:
        client = clients.get(endpoint)
        inp = clients.module.InferInput("INPUT", list(INPUT_SHAPE), "FP32")
        inp.set_data_from_numpy(data)
        t0 = time.perf_counter()
        try:
            await client.infer(model or endpoint["model"], [inp], client_timeout=timeout_s)
        except Exception as err:
            report.failures[classify(err)] += 1
            report.timeline.append((sent_at, math.nan))
            steps[index]["failed"] += 1
            return
        latency = time.perf_counter() - t0
        report.succeeded += 1
        report.latencies.append(latency)
        report.timeline.append((sent_at, latency))
        steps[index]["succeeded"] += 1
        steps[index]["latencies"].append(latency)

    try:
        await pace(profile, rng, endpoints, report, steps, one, max_requests=max_requests,
                   max_in_flight=max_in_flight, stop=stop, wait_s=timeout_s + 5,
                   arrivals=arrivals)
    finally:
        await clients.close()
    report.elapsed_s = loop.time() - start
    step_percentiles(steps, "latencies", report)
    return report


def _in_steps(arrivals: Sequence[float], profile: Sequence[Step],
              max_requests: int | None) -> Iterator[tuple[float, int]]:
    """Given send times with the index of the profile step each falls in (the last step takes
    whatever lies beyond the profile)."""
    ends = list(itertools.accumulate(step.duration_s for step in profile))
    for count, t in enumerate(arrivals):
        if max_requests is not None and count >= max_requests:
            return
        yield float(t), min(bisect.bisect_right(ends, t), len(ends) - 1)


def default_run_dir() -> Path:
    from dedicap_local.stack import RUN_DIR

    return RUN_DIR


def endpoints_for(namespace: str, modeldeployment: str, run_dir: Path | None = None) -> Endpoints:
    from dedicap_local.dataplane import endpoints_file

    return Endpoints(endpoints_file(run_dir or default_run_dir(), namespace, modeldeployment))


def run_profile(endpoints: Endpoints, profile: Sequence[Step], **kwargs: Any) -> Report:
    """Blocking wrapper around `drive`."""
    return asyncio.run(drive(endpoints, profile, **kwargs))


class Background:
    """Load running in a thread while a test watches something else; `stop()` ends it early.
    `runner` is `run_profile` or another with its signature (the streaming one)."""

    def __init__(self, endpoints: Endpoints, profile: Sequence[Step], *,
                 runner: Callable[..., Any] | None = None, **kwargs: Any) -> None:
        self._stop = threading.Event()
        self.report: Any = None
        self.error: BaseException | None = None
        run = runner or run_profile

        def target() -> None:
            try:
                self.report = run(endpoints, profile, stop=self._stop, **kwargs)
            except BaseException as err:  # surfaced by join()
                self.error = err

        self._thread = threading.Thread(target=target, name="loadgen", daemon=True)
        self._thread.start()

    def stop(self) -> Any:
        self._stop.set()
        return self.join()

    def running(self) -> bool:
        """Whether the profile is still being offered (False once it ran to its end)."""
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> Any:
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        if self.report is None:
            raise TimeoutError("load generator still running")
        return self.report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dedicap_local.loadgen",
                                     description="Poisson load against a ModelDeployment's "
                                                 "replicas on the local stack.")
    parser.add_argument("--namespace", "-n", required=False)
    parser.add_argument("--modeldeployment", "-m", required=False)
    parser.add_argument("--profile", required=True, help="DURATION_S:RPS[,DURATION_S:RPS...]")
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument("--grpc", default=None,
                        help="host:port[,host:port] of Triton gRPC endpoints instead of a "
                             "ModelDeployment (then --model is needed)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--max-in-flight", type=int, default=256)
    parser.add_argument("--timeout", type=float, default=10.0, help="per request, seconds")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    profile = parse_profile(args.profile)
    if args.grpc:
        if not args.model:
            parser.error("--grpc needs --model")
        fixed = [{"grpc": a, "model": args.model, "pod": a} for a in args.grpc.split(",")]
        endpoints = Endpoints(fixed)
    elif args.namespace and args.modeldeployment:
        endpoints = endpoints_for(args.namespace, args.modeldeployment, args.run_dir)
    else:
        parser.error("give --namespace and --modeldeployment, or --grpc")
    report = run_profile(endpoints, profile, seed=args.seed, max_requests=args.max_requests,
                         max_in_flight=args.max_in_flight, timeout_s=args.timeout,
                         model=args.model)
    json.dump(report.summary(), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0 if report.sent and not report.failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
