"""Streaming load for LLM replicas: open-loop Poisson arrivals of token requests against a
ModelDeployment's streaming (decoupled) Triton model, measuring at the client what a user of an
LLM feels: time to first token (TTFT) and time per output token (TPOT, the gaps between
tokens), besides the whole request.

Each request is one gRPC bidirectional stream (tritonclient's ``stream_infer``) carrying
``PROMPT_TOKENS`` and ``MAX_TOKENS``; the model answers with one response per token and an empty
final response. Arrivals, endpoint spreading and bounds are the request-level load generator's
(``loadgen.pace``). The token counts come from fixed values or a list of (prompt, output) shapes
drawn at random (e.g. a token trace's rows).

    python -m dedicap_local.loadgen_stream -n acme -m chat --profile 30:2,60:8 \
        --prompt-tokens 200 --max-tokens 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dedicap_local.loadgen import (
    Clients,
    Endpoints,
    Report,
    Step,
    _round,
    classify,
    endpoints_for,
    pace,
    parse_profile,
    percentile,
    step_percentiles,
)

Shape = tuple[int, int]  # (prompt tokens, tokens to generate)


@dataclass
class StreamReport(Report):
    """What the clients saw; times in seconds, of requests that completed."""

    ttft: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)  # every token after a request's first
    tokens: int = 0
    incomplete: int = 0  # streams that ended (or timed out) before their last token

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        ttft = [x * 1000 for x in self.ttft]
        gaps = [x * 1000 for x in self.gaps]
        out.update({
            "tokens": self.tokens, "incomplete": self.incomplete,
            "ttft_p50_ms": _round(percentile(ttft, 50)),
            "ttft_p95_ms": _round(percentile(ttft, 95)),
            "tpot_p50_ms": _round(percentile(gaps, 50)),
            "tpot_p95_ms": _round(percentile(gaps, 95)),
            "tokens_per_s": round(self.tokens / self.elapsed_s, 1) if self.elapsed_s else None,
        })
        return out


def _final(result: Any) -> bool:
    params = result.get_response().parameters
    return "triton_final_response" in params and bool(params["triton_final_response"].bool_param)


async def drive_stream(endpoints: Endpoints, profile: Sequence[Step], *,
                       shapes: Sequence[Shape] = ((200, 20),), seed: int | None = None,
                       max_requests: int | None = None, max_in_flight: int = 256,
                       timeout_s: float = 60.0, stop: threading.Event | None = None,
                       model: str | None = None) -> StreamReport:
    """Run `profile` against `endpoints` with streaming token requests and report."""
    rng = random.Random(seed)
    report = StreamReport()
    steps: list[dict[str, Any]] = [
        {"duration_s": s.duration_s, "rps": s.rps, "sent": 0, "succeeded": 0, "failed": 0,
         "ttft": []} for s in profile]
    clients = Clients()
    grpcclient = clients.module
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def one(endpoint: dict[str, str], index: int, sent_at: float) -> None:
        client = clients.get(endpoint)
        prompt, wanted = shapes[rng.randrange(len(shapes))]
        inputs = []
        for name, value in (("PROMPT_TOKENS", prompt), ("MAX_TOKENS", wanted)):
            tensor = grpcclient.InferInput(name, [1], "INT32")
            tensor.set_data_from_numpy(np.array([value], dtype=np.int32))
            inputs.append(tensor)

        async def request() -> AsyncIterator[dict[str, Any]]:
            yield {"model_name": model or endpoint["model"], "inputs": inputs,
                   "enable_empty_final_response": True}

        t0 = time.perf_counter()
        first: float | None = None
        last = t0
        gaps: list[float] = []
        received = 0
        stream = client.stream_infer(request())
        try:
            async with asyncio.timeout(timeout_s):
                async for result, error in stream:
                    if error is not None:
                        raise error
                    now = time.perf_counter()
                    if _final(result) and result.as_numpy("TOKEN") is None:
                        break
                    received += 1
                    if first is None:
                        first = now - t0
                    else:
                        gaps.append(now - last)
                    last = now
                    if _final(result):
                        break
        except Exception as err:
            report.failures[classify(err)] += 1
            steps[index]["failed"] += 1
            return
        finally:
            with contextlib.suppress(Exception):
                stream.cancel()
        report.tokens += received
        if first is None or received < wanted:
            report.incomplete += 1
            report.failures["incomplete"] += 1
            steps[index]["failed"] += 1
            return
        report.succeeded += 1
        report.latencies.append(last - t0)
        report.ttft.append(first)
        report.gaps.extend(gaps)
        steps[index]["succeeded"] += 1
        steps[index]["ttft"].append(first)

    try:
        await pace(profile, rng, endpoints, report, steps, one, max_requests=max_requests,
                   max_in_flight=max_in_flight, stop=stop, wait_s=timeout_s + 5)
    finally:
        await clients.close()
    report.elapsed_s = loop.time() - start
    step_percentiles(steps, "ttft", report)
    return report


def run_stream(endpoints: Endpoints, profile: Sequence[Step], **kwargs: Any) -> StreamReport:
    """Blocking wrapper around `drive_stream` (a `loadgen.Background` runner)."""
    return asyncio.run(drive_stream(endpoints, profile, **kwargs))


def read_shapes(path: Path, limit: int = 100_000) -> list[Shape]:
    """(prompt, output) token counts from a CSV with ContextTokens and GeneratedTokens columns
    (the Azure LLM inference trace's)."""
    import csv

    out: list[Shape] = []
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            out.append((max(int(row["ContextTokens"]), 1), max(int(row["GeneratedTokens"]), 1)))
            if len(out) >= limit:
                break
    if not out:
        raise ValueError(f"{path}: no rows with ContextTokens and GeneratedTokens")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dedicap_local.loadgen_stream",
                                     description="Streaming token load against a "
                                                 "ModelDeployment's LLM replicas.")
    parser.add_argument("--namespace", "-n", required=True)
    parser.add_argument("--modeldeployment", "-m", required=True)
    parser.add_argument("--profile", required=True, help="DURATION_S:RPS[,DURATION_S:RPS...]")
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument("--prompt-tokens", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=20)
    parser.add_argument("--shapes", type=Path, default=None,
                        help="CSV with ContextTokens,GeneratedTokens: draw shapes from it")
    parser.add_argument("--timeout", type=float, default=60.0, help="per request, seconds")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    shapes = (read_shapes(args.shapes) if args.shapes
              else [(args.prompt_tokens, args.max_tokens)])
    report = run_stream(endpoints_for(args.namespace, args.modeldeployment, args.run_dir),
                        parse_profile(args.profile), shapes=shapes, seed=args.seed,
                        timeout_s=args.timeout)
    json.dump(report.summary(), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0 if report.sent and not report.failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
