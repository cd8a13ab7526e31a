"""Calibrate the LLM replica model on a GPU: prefill throughput and decode step time of an
8B-class Llama, built from its configuration with random weights (bf16, nothing downloaded).

    python benchmarks/llm_calibrate.py --out benchmarks/results/llm-calibration   # on a GPU

What continuous batching costs, measured directly with PyTorch and transformers:

- prefill: tokens per second of one forward pass over `batch` prompts of `length` tokens,
  against prompt length and batch (the cost per prompt token, ``prefill_per_token_s``);
- decode: the time of one engine step, one token for each of `n` running sequences whose KV
  cache (in GPU memory) holds `context` tokens each, against `n` and `context` (the step's fixed
  cost, the cost per sequence and per context token: ``step_base_s``, ``per_seq_s``,
  ``per_ctx_token_s``), through the model's own KV cache (a ``DynamicCache`` filled by a
  prefill of `context` tokens, then one decode step timed with CUDA events);
- the KV cache per token the model's configuration implies, and the tokens the GPU's free
  memory holds at vLLM's ``gpu_memory_utilization`` (``kv_tokens``).

It writes ``<out>.json`` (every point and the least-squares fit of the constants, in
``LLMCost``'s fields) and ``<out>.md`` (tables and the command), and prints the fit. This is a
model in eager PyTorch, not vLLM's or TensorRT-LLM's kernels: its figures bound what an engine
does (an engine with paged attention and CUDA graphs is faster, mostly in the fixed cost), and
the fit is what ``dedicap.sim.llm_replica.PRESETS`` would take in place of the data-sheet
constants. Needs: torch with CUDA, transformers (``pip install torch transformers``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

LLAMA_8B = {  # Llama-3-8B's configuration (no weights are read)
    "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "max_position_embeddings": 8192, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
}


def build_model(layers: int | None, device: str) -> tuple[Any, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(LLAMA_8B)
    if layers is not None:
        cfg["num_hidden_layers"] = layers
    config = LlamaConfig(**cfg, torch_dtype="bfloat16")
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)  # random weights, from the config
    model.eval()
    return model, config


def timed(fn: Any, repeat: int, device: str) -> float:
    """Median seconds of `fn()` over `repeat` runs (after one warm-up), CUDA-synchronised."""
    import torch

    fn()
    times = []
    for _ in range(repeat):
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def measure_prefill(model: Any, lengths: list[int], batches: list[int], repeat: int,
                    device: str) -> list[dict[str, float]]:
    import torch

    out = []
    vocab = model.config.vocab_size
    for length in lengths:
        for batch in batches:
            ids = torch.randint(0, vocab, (batch, length), device=device)
            try:
                with torch.inference_mode():
                    s = timed(lambda ids=ids: model(input_ids=ids, use_cache=False), repeat,
                              device)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                continue
            out.append({"length": length, "batch": batch, "seconds": s,
                        "tokens_per_s": batch * length / s})
            print(f"prefill {batch} x {length}: {s * 1000:.1f} ms, "
                  f"{batch * length / s:,.0f} tokens/s", flush=True)
    return out


def measure_decode(model: Any, sequences: list[int], contexts: list[int], repeat: int,
                   device: str) -> list[dict[str, float]]:
    import torch
    from transformers import DynamicCache

    out = []
    vocab = model.config.vocab_size
    for context in contexts:
        for n in sequences:
            try:
                with torch.inference_mode():
                    cache = DynamicCache()
                    prompt = torch.randint(0, vocab, (n, context), device=device)
                    model(input_ids=prompt, past_key_values=cache, use_cache=True)
                    step = torch.randint(0, vocab, (n, 1), device=device)
                    filled = cache.get_seq_length()

                    def one(step: Any = step, cache: Any = cache, filled: int = filled) -> None:
                        model(input_ids=step, past_key_values=cache, use_cache=True)
                        cache.crop(filled)  # the same context every repeat

                    s = timed(one, repeat, device)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                continue
            out.append({"sequences": n, "context": context, "seconds": s,
                        "context_tokens": n * context})
            print(f"decode {n} sequences x {context} context: {s * 1000:.2f} ms/step",
                  flush=True)
    return out


def fit(prefill: list[dict[str, float]], decode: list[dict[str, float]]) -> dict[str, float]:
    """Least squares: step = base + per_seq*n + per_ctx*(n*context); prefill per token from the
    largest batches (where the GPU is compute-bound, as an engine's chunks are)."""
    import numpy as np

    out: dict[str, float] = {}
    if decode:
        a = np.array([[1.0, d["sequences"], d["context_tokens"]] for d in decode])
        y = np.array([d["seconds"] for d in decode])
        coef, *_ = np.linalg.lstsq(a, y, rcond=None)
        out.update(step_base_s=float(coef[0]), per_seq_s=float(coef[1]),
                   per_ctx_token_s=float(coef[2]))
    if prefill:
        big = [p for p in prefill if p["batch"] * p["length"] >= 2048] or prefill
        out["prefill_per_token_s"] = float(np.median([1.0 / p["tokens_per_s"] for p in big]))
    return out


def kv_tokens(config: Any, utilization: float) -> dict[str, float]:
    """KV cache bytes per token, and the tokens the GPU holds at `utilization` of its memory
    beside the weights (as vLLM sizes its cache; activations and graphs take a few GB more)."""
    import torch

    head_dim = config.hidden_size // config.num_attention_heads
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 2
    free, total = torch.cuda.mem_get_info()
    used = total - free
    room = utilization * total - used
    return {"kv_bytes_per_token": per_token, "gpu_memory_bytes": total,
            "in_use_bytes": used, "kv_tokens": max(room, 0) / per_token}


def write(out: Path, result: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# LLM replica calibration: {result['gpu']}", "",
             f"Command: `{result['command']}`", "",
             "Constants (LLMCost fields, least-squares fit):", "",
             "| constant | value |", "|---|---|",
             *(f"| {k} | {v:.4g} |" for k, v in result["fit"].items()), "",
             "| prefill batch | prompt length | ms | tokens/s |", "|---|---|---|---|",
             *(f"| {p['batch']} | {p['length']} | {1000 * p['seconds']:.1f} | "
               f"{p['tokens_per_s']:,.0f} |" for p in result["prefill"]), "",
             "| running sequences | context | ms per step |", "|---|---|---|",
             *(f"| {d['sequences']} | {d['context']} | {1000 * d['seconds']:.2f} |"
               for d in result["decode"]), ""]
    out.with_suffix(".md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/llm-calibration"))
    ap.add_argument("--layers", type=int, default=None,
                    help="fewer layers than the 8B model's 32 (a quick check of the script)")
    ap.add_argument("--lengths", default="128,512,1024,2048,4096")
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--sequences", default="1,8,32,64,128,256")
    ap.add_argument("--contexts", default="256,1024,2048,4096")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: this script measures a GPU (use --device cpu --layers 2 only to "
              "check that it runs)", file=sys.stderr)
        return 2
    ints = [[int(x) for x in v.split(",")] for v in
            (args.lengths, args.batches, args.sequences, args.contexts)]
    model, config = build_model(args.layers, args.device)
    prefill = measure_prefill(model, ints[0], ints[1], args.repeat, args.device)
    decode = measure_decode(model, ints[2], ints[3], args.repeat, args.device)
    result: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__, "python": platform.python_version(),
        "layers": config.num_hidden_layers, "command": " ".join(["python", *sys.argv]),
        "prefill": prefill, "decode": decode, "fit": fit(prefill, decode)}
    if args.device.startswith("cuda"):
        result["kv"] = kv_tokens(config, args.gpu_memory_utilization)
        result["fit"]["kv_tokens"] = result["kv"]["kv_tokens"]
    write(args.out, result)
    print(json.dumps(result["fit"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
