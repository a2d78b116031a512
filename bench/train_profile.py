"""Where a training step spends its time: torch.profiler over a few recipe steps, by op group.

    python bench/train_profile.py                          # SmolLM2-135M, the profile's precision
    python bench/train_profile.py --precision fp32 --steps 3
    python bench/train_profile.py --profile tiny-test --steps 2    # a quick check

Runs the real recipe (the default profile, demo corpus), skips one warm-up step, then profiles
`--steps` optimizer steps and sums each op's own CPU time (self time, so nothing is counted
twice) into groups: the matrix products of the decoder and of the output head (told apart by
the vocabulary-sized dimension), attention, dtype casts and copies, element-wise ops, the
optimizer, and the rest. Prints a Markdown table (the one in docs/training.md) with the baseline
named: the step's wall time measured outside the profiler in the same run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear",
          "aten::baddbmm", "aten::_mkldnn_matmul", "mkldnn::_linear_pointwise"}
ATTENTION = ("scaled_dot_product", "flash_attention", "_efficient_attention")
CASTS = {"aten::to", "aten::_to_copy", "aten::copy_", "aten::clone", "aten::contiguous"}
OPTIMIZER = ("_foreach", "aten::addcdiv", "aten::addcmul", "aten::lerp", "aten::sqrt",
             "Optimizer.step")
SOFTMAX = ("softmax", "log_softmax", "logsumexp", "nll_loss", "cross_entropy", "aten::exp")
ELEMENTWISE = ("aten::mul", "aten::add", "aten::sub", "aten::div", "aten::silu", "aten::neg",
               "aten::pow", "aten::rsqrt", "aten::mean", "aten::cat", "aten::where",
               "aten::sum", "aten::fill_", "aten::zero_", "aten::masked", "aten::index",
               "aten::embedding", "aten::cos", "aten::sin", "aten::threshold", "silu_backward",
               "aten::randint", "aten::bitwise", "aten::gt", "aten::lt", "aten::ge", "aten::eq",
               "aten::ne", "aten::empty", "aten::scatter", "aten::gather", "aten::sigmoid")


def group_of(name: str, shapes: list, vocab: int) -> str:
    """The group an op's self time goes to."""
    if name in MATMUL:
        dims = [d for shape in shapes if isinstance(shape, (list, tuple)) for d in shape]
        return "matmul: output head" if any(d >= vocab for d in dims) else "matmul: decoder"
    if any(key in name for key in ATTENTION):
        return "attention (SDPA)"
    if name in CASTS:
        return "dtype casts and copies"
    if any(key in name for key in OPTIMIZER):
        return "optimizer (AdamW) and clipping"
    if any(key in name for key in SOFTMAX):
        return "softmax / cross-entropy"
    if any(name.startswith(key) for key in ELEMENTWISE):
        return "element-wise, norms, indexing"
    return "other"


def profile_steps(recipe, steps: int
                  ) -> tuple[dict[str, float], float, list[tuple[str, str, list, float]]]:
    """Self CPU seconds by group over `steps` steps, those steps' profiled wall seconds, and
    every (op, group, input shapes, self seconds), largest first."""
    from torch.profiler import ProfilerActivity, profile

    vocab = recipe.peft_model.get_base_model().config.vocab_size
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        began = time.perf_counter()
        for _ in range(steps):
            recipe._train_step(recipe.micro_batches(recipe.step))
            recipe.step += 1
        wall = time.perf_counter() - began
    groups: dict[str, float] = defaultdict(float)
    ops = []
    for event in prof.key_averages(group_by_input_shape=True):
        shapes = list(event.input_shapes or [])
        group, seconds = group_of(event.key, shapes, vocab), event.self_cpu_time_total / 1e6
        groups[group] += seconds
        ops.append((event.key, group, shapes, seconds))
    return dict(groups), wall, sorted(ops, key=lambda op: -op[3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--precision", default=None, help="override device.precision")
    parser.add_argument("--steps", type=int, default=3, help="profiled optimizer steps")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (profile's)")
    parser.add_argument("--top", type=int, default=0, metavar="N",
                        help="also list the N ops (by input shapes) with the most self time")
    args = parser.parse_args()

    import torch

    from engine.profiles import load_profile
    from engine.training import LoRARecipe, RunConfig

    profile = load_profile(args.profile)
    if args.precision:
        profile.device.precision = args.precision
    profile.device.threads = args.threads or profile.device.threads
    with tempfile.TemporaryDirectory() as scratch:
        recipe = LoRARecipe(RunConfig(profile=profile, run_dir=Path(scratch) / "run",
                                      max_steps=args.steps * 2 + 1))
        recipe.setup()
        try:
            recipe.prepare_steps()  # as `train` does: on CPU, freed memory kept for reuse
            recipe.peft_model.train()
            began = time.perf_counter()
            recipe._train_step(recipe.micro_batches(0))  # warm-up: oneDNN picks its kernels
            recipe.step = 1
            warm_up = time.perf_counter() - began
            began = time.perf_counter()
            tokens = 0
            for _ in range(args.steps):  # unprofiled: the baseline the table is read against
                tokens += recipe._train_step(recipe.micro_batches(recipe.step))[1]
                recipe.step += 1
            plain = (time.perf_counter() - began) / args.steps
            groups, wall, ops = profile_steps(recipe, args.steps)
        finally:
            recipe.cleanup()
    total = sum(groups.values())
    print(f"{profile.model.base}, precision {profile.device.precision} -> "
          f"{recipe.placement.precision}; {args.steps} profiled steps after a warm-up "
          f"({warm_up:.1f} s); step without the profiler {plain:.2f} s "
          f"({tokens / args.steps / plain:.0f} tokens/s), with it {wall / args.steps:.2f} s; "
          f"torch threads {torch.get_num_threads()}")
    print("| op group | self CPU s / step | share |")
    print("|---|---:|---:|")
    for name, seconds in sorted(groups.items(), key=lambda item: -item[1]):
        print(f"| {name} | {seconds / args.steps:.3f} | {seconds / total:.0%} |")
    print(f"| all profiled ops | {total / args.steps:.3f} | 100% |")
    if args.top:
        print(f"\nthe {args.top} ops with the most self time (s / step, group, input shapes):")
        for name, group, shapes, seconds in ops[:args.top]:
            print(f"  {seconds / args.steps:7.3f}  {name:32s} {group:30s} {str(shapes)[:90]}")
    from engine.machine import print_machine

    print_machine()


if __name__ == "__main__":
    main()
