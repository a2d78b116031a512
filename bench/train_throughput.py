"""Training throughput: hyperlex's recipe against transformers.Trainer + PEFT, fp32 and bf16, side by side.

    python bench/train_throughput.py                       # SmolLM2-135M (the default profile)
    python bench/train_throughput.py --profile tiny-test --steps 4   # a quick check
    python bench/train_throughput.py --steps 4 --batch-size 1       # a busy 2-core machine

Same base model, same LoRA config, same samples (the demo corpus, formatted and encoded once by
hyperlex), same number of optimizer steps, same learning-rate schedule. The baseline is the usual
way: `Trainer` with `DataCollatorForSeq2Seq` padding each batch to its longest sample (dynamic
padding), once in fp32 and once with `bf16=True` (autocast over fp32 weights, Trainer's own
mixed precision), each in a child process of its own (a fresh process, as a user runs it: the
recipe's allocator setting, engine.training.allocator, would otherwise carry over to it). It
draws as many samples per step as hyperlex's packed steps hold, so both see the same amount of
data. hyperlex runs in the profile's precision (`auto`: what
engine.training.precision picks here, and why) and, when that is not fp32, once more in fp32
for the held-out loss against fp32. Throughput is real (non-padding) tokens per second of
optimizer-step time, measured the same way for all, and also per CPU-second (process time),
which a busy shared machine disturbs far less than wall time. Every held-out loss is computed by
one function.

After the timed runs: the machine line, then the roofline: tokens/s against what the measured
matmul GFLOP/s allow for this model, with the FLOPs per token counted by
engine.training.flops (stated on the line). Peak RSS is measured in a child process each for
fp32, bf16, int8 and int4, and with gradient checkpointing.

Goals (issue 17, on an AMX Xeon): >= 3x Trainer fp32, >= 1.5x Trainer bf16, >= 50% of the bf16
roofline, held-out loss within 2% of fp32.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def held_out_loss(peft_model, data, pad_id: int, batch_size: int) -> float:
    """Token-mean loss over the held-out samples, unpacked: the same function for both runs."""
    import torch

    from engine.data import collate, pack_samples
    from engine.training.loss import STATS_SIZE, LossModel, summarise

    model = LossModel(peft_model).eval()
    packs = pack_samples(data.held_out, 10**9, seed=0, packing=False)
    stats = torch.zeros(STATS_SIZE, dtype=torch.float64)
    with torch.no_grad():
        for first in range(0, len(packs), batch_size):
            stats += model(collate(data.held_out, packs[first:first + batch_size],
                                   pad_id))["stats"]
    peft_model.train()
    return float(summarise(stats.tolist())["loss"])


def median_tokens_per_s(tokens: int, steps: int, step_seconds: list[float]) -> float:
    """Mean tokens per step over the median step time: what a step runs at undisturbed.

    On a shared machine a neighbour can stall a few steps several times over; the median
    step is what the code does, the total what the machine let it do. Both are printed.
    """
    ordered = sorted(step_seconds)
    if not ordered:
        return 0.0
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return tokens / max(steps, 1) / median


def run_hyperlex(profile, steps: int, run_dir: Path):
    from engine.training import LoRARecipe, RunConfig

    recipe = LoRARecipe(RunConfig(profile=profile, run_dir=run_dir, max_steps=steps))
    step_seconds: list[float] = []
    train_step = recipe._train_step

    def timed_step(batches):
        began = time.perf_counter()
        out = train_step(batches)
        step_seconds.append(time.perf_counter() - began)
        return out

    recipe._train_step = timed_step  # type: ignore[method-assign]
    recipe.setup()
    try:
        recipe.data.held_out, held_out = [], recipe.data.held_out  # evaluate outside the timing
        recipe.eval_packs = []
        cpu_began = time.process_time()
        recipe.train()
        cpu_seconds = time.process_time() - cpu_began
        recipe.data.held_out = held_out
        tokens = recipe.tokens_seen
        seconds = recipe.train_seconds
        samples_per_step = sum(len(p.members) for p in recipe.train_packs) / len(
            recipe.train_packs) * recipe.per_step
        loss = held_out_loss(recipe.peft_model, recipe.data, recipe.pad_id,
                             recipe.section.batch_size)
        from engine.training.flops import lora_step_flops

        flops = lora_step_flops(recipe.peft_model, [len(s.input_ids) for s in recipe.data.train],
                                sum(sum(1 for x in s.labels[1:] if x != -100)
                                    for s in recipe.data.train))
        median = median_tokens_per_s(tokens, steps, step_seconds)
        # The caller keeps the recipe for its data and tokenizer, not its model: free that
        # before the next run loads another (three models at once ran a 24 GB machine out).
        recipe.peft_model = recipe.loss_model = recipe.optimizer = recipe.scheduler = None
        gc.collect()
        return {"tokens": tokens, "flops": flops, "median_tokens_per_s": median, "precision": recipe.placement.precision,
                "precision_reason": recipe.precision.reason, "seconds": seconds, "tokens_per_s": tokens / seconds,
                "cpu_seconds": cpu_seconds, "tokens_per_cpu_s": tokens / cpu_seconds,
                "held_out_loss": loss, "samples_per_step": samples_per_step,
                "train_loss_last": recipe.losses[-1]}, recipe
    finally:
        recipe.cleanup()


def run_trainer(profile, recipe, steps: int, samples_per_step: int, out_dir: Path,
                bf16: bool = False) -> dict:
    """transformers.Trainer + PEFT with dynamic padding on the very same encoded samples.

    The base loads in fp32 either way; `bf16=True` is Trainer's mixed precision (autocast).
    """
    import torch
    from peft import get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from engine.tokenizer import resize_embeddings
    from engine.training.model import load_base, lora_config

    torch.manual_seed(profile.training.seed)
    base = load_base(profile.model.base, dataclasses.replace(recipe.placement, precision="fp32"),
                     False)
    resize_embeddings(base, recipe.hypertokenizer)
    model = get_peft_model(base, lora_config(profile, base, recipe.hypertokenizer))
    rows = [{"input_ids": s.input_ids, "labels": s.labels, "attention_mask": [1] * len(s.input_ids)}
            for s in recipe.data.train]

    class Timer(TrainerCallback):
        def __init__(self):
            self.seconds = self.cpu_seconds = 0.0
            self.steps: list[float] = []
            self.began = self.cpu_began = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.began, self.cpu_began = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            self.steps.append(time.perf_counter() - self.began)
            self.seconds += self.steps[-1]
            self.cpu_seconds += time.process_time() - self.cpu_began

    class CountingCollator(DataCollatorForSeq2Seq):
        tokens = 0

        def __call__(self, features, return_tensors=None):
            CountingCollator.tokens += sum(len(f["input_ids"]) for f in features)
            return super().__call__(features, return_tensors)

    timer = Timer()
    section = profile.training
    args = TrainingArguments(
        output_dir=str(out_dir), max_steps=steps, per_device_train_batch_size=samples_per_step,
        learning_rate=section.learning_rate, lr_scheduler_type="cosine",
        warmup_steps=min(section.warmup_steps, steps), max_grad_norm=section.max_grad_norm,
        weight_decay=0.0, logging_steps=1, save_strategy="no", report_to=[], seed=section.seed,
        use_cpu=recipe.placement.device == "cpu", dataloader_num_workers=0,
        remove_unused_columns=False, disable_tqdm=True, bf16=bf16)
    CountingCollator.tokens = 0
    collator = CountingCollator(recipe.hypertokenizer.hf, padding=True, label_pad_token_id=-100)
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator,
                      callbacks=[timer])
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    loss = held_out_loss(model, recipe.data, recipe.pad_id, section.batch_size)
    del trainer, model, base
    gc.collect()
    return {"tokens": CountingCollator.tokens, "seconds": timer.seconds,
            "tokens_per_s": CountingCollator.tokens / timer.seconds,
            "median_tokens_per_s": median_tokens_per_s(CountingCollator.tokens, steps,
                                                       timer.steps),
            "cpu_seconds": timer.cpu_seconds,
            "tokens_per_cpu_s": CountingCollator.tokens / timer.cpu_seconds, "held_out_loss": loss,
            "train_loss_last": losses[-1] if losses else None}


def size_flags(batch_size: int | None, max_seq_len: int | None, threads: int | None) -> list[str]:
    """The command-line flags that hand a child process the parent's sizes."""
    command: list[str] = []
    for flag, value in (("--batch-size", batch_size), ("--max-seq-len", max_seq_len),
                        ("--threads", threads)):
        if value:
            command += [flag, str(value)]
    return command


def sized_profile(name: str, batch_size: int | None, max_seq_len: int | None,
                  threads: int | None):
    """The profile `name` with the sizes given on the command line (its own where not)."""
    from engine.profiles import load_profile

    profile = load_profile(name)
    profile.device.threads = threads or profile.device.threads
    profile.training.batch_size = batch_size or profile.training.batch_size
    profile.training.max_seq_len = max_seq_len or profile.training.max_seq_len
    return profile


def child_trainer(args, samples_per_step: int, bf16: bool) -> dict:
    """Run the Trainer baseline in a child process: a fresh process, as a user runs it.

    hyperlex's recipe sets the C allocator to keep freed memory for its steps
    (engine.training.allocator), which holds for the whole process; a Trainer run after it in
    the same process would inherit that and not be the usual way any more.
    """
    command = [sys.executable, __file__, "--profile", args.profile, "--steps", str(args.steps),
               "--child-trainer", "bf16" if bf16 else "fp32",
               "--child-samples-per-step", str(samples_per_step),
               *size_flags(args.batch_size, args.max_seq_len, args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"the Trainer {'bf16' if bf16 else 'fp32'} child failed "
                         f"(exit {done.returncode}):\n" + "\n".join(done.stderr.splitlines()[-15:]))
    return json.loads(done.stdout.strip().splitlines()[-1])


def child_trainer_main(args) -> None:
    from engine.training import LoRARecipe, RunConfig

    profile = sized_profile(args.profile, args.batch_size, args.max_seq_len, args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        recipe = LoRARecipe(RunConfig(profile=profile, run_dir=Path(scratch) / "data",
                                      max_steps=args.steps))
        recipe.setup()  # the same samples as the parent's (setup does not touch the allocator)
        try:
            recipe.peft_model = recipe.loss_model = recipe.optimizer = recipe.scheduler = None
            gc.collect()
            result = run_trainer(profile, recipe, args.steps, args.child_samples_per_step,
                                 Path(scratch) / "trainer", bf16=args.child_trainer == "bf16")
        finally:
            recipe.cleanup()
    print(json.dumps(result))


def child_rss(profile_name: str, precision: str, checkpointing: bool, steps: int,
              batch_size: int | None, max_seq_len: int | None, threads: int | None) -> dict:
    """Run hyperlex in a child process at one precision; it reports its own peak RSS."""
    command = [sys.executable, __file__, "--profile", profile_name, "--rss-steps", str(steps),
               "--child-precision", precision]
    if checkpointing:
        command.append("--child-checkpointing")
    command += size_flags(batch_size, max_seq_len, threads)
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        return {"precision": precision, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    """This process's peak RSS in MiB: VmHWM, which starts afresh at exec.

    getrusage's ru_maxrss does not: a child forked from a large parent inherits the parent's
    figure, so every child would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_main(profile_name: str, precision: str, checkpointing: bool, steps: int,
               batch_size: int | None, max_seq_len: int | None, threads: int | None) -> None:
    profile = sized_profile(profile_name, batch_size, max_seq_len, threads)
    profile.device.precision = precision
    profile.training.gradient_checkpointing = checkpointing
    with tempfile.TemporaryDirectory() as scratch:
        result, _ = run_hyperlex(profile, steps, Path(scratch) / "run")
    peak = peak_rss_mb()
    print(json.dumps({"precision": precision, "checkpointing": checkpointing,
                      "peak_rss_mb": round(peak, 1),
                      "tokens_per_s": round(result["tokens_per_s"], 1),
                      "held_out_loss": round(result["held_out_loss"], 4)}))


def describe_run(name: str, run: dict) -> str:
    return (f"{name:26s}: {run['tokens_per_s']:8.1f} tokens/s ({run['tokens']} tokens in "
            f"{run['seconds']:.1f} s; median step {run['median_tokens_per_s']:.1f}), "
            f"{run['tokens_per_cpu_s']:.1f} tokens/CPU-s, held-out loss "
            f"{run['held_out_loss']:.4f}")


def matmul_gflops_per_cpu_second(dtype_name: str, repeats: int = 5) -> float | None:
    """The machine line's matmul, timed in process time: GFLOP per CPU-second.

    A neighbour on a shared machine stretches wall time but not this process's CPU time, so
    with one torch thread this bound holds whatever the load (with more, waiting threads spin
    and count). Read it against the runs' tokens per CPU-second.
    """
    import torch

    from engine.machine import _PROBE_K, _PROBE_M, _PROBE_N

    try:
        dtype = getattr(torch, dtype_name)
        a = torch.randn(_PROBE_M, _PROBE_K).to(dtype)
        b = torch.randn(_PROBE_K, _PROBE_N).to(dtype)
        torch.matmul(a, b)
        best = float("inf")
        for _ in range(repeats):
            began = time.process_time()
            torch.matmul(a, b)
            best = min(best, time.process_time() - began)
    except (RuntimeError, TypeError):
        return None
    return 2 * _PROBE_M * _PROBE_K * _PROBE_N / max(best, 1e-9) / 1e9


def roofline_lines(run: dict, machine: dict) -> tuple[list[str], dict]:
    """What the measured matmul GFLOP/s allow for this model, and the fraction reached."""
    flops = run["flops"]
    lines = [f"FLOPs per token: {flops.describe()}"]
    out: dict = {"flops_per_token": flops.per_token, "six_n_flops_per_token": flops.six_n}
    for dtype in ("fp32", "bf16"):
        gflops = machine.get(f"{dtype}_gflops")
        if not gflops:
            lines.append(f"roofline {dtype}: n/a (no {dtype} matmul measured here)")
            continue
        bound = gflops * 1e9 / flops.per_token
        fraction = run["tokens_per_s"] / bound
        out[f"{dtype}_roofline_tokens_per_s"] = bound
        out[f"{dtype}_roofline_fraction"] = fraction
        used = " <- the precision this run used" if run["precision"] == dtype else ""
        lines.append(f"roofline {dtype}: {gflops:.0f} GFLOP/s / {flops.per_token / 1e6:.4g} MFLOP "
                     f"= {bound:.0f} tokens/s; hyperlex {run['tokens_per_s']:.1f} is "
                     f"{fraction:.0%} of it (6 x params: {gflops * 1e9 / flops.six_n:.0f} "
                     f"tokens/s){used}")
        if used and run.get("median_tokens_per_s"):
            # The whole run includes its first steps, which fault in the step's memory afresh;
            # the median step is the steady state. Both are printed, neither instead of the other.
            steady = run["median_tokens_per_s"] / bound
            out[f"{dtype}_roofline_fraction_median_step"] = steady
            lines.append(f"roofline {dtype}, median step: {run['median_tokens_per_s']:.1f} "
                         f"tokens/s is {steady:.0%} of it")
    for dtype, gflops in machine.get("per_cpu_second", {}).items():
        if gflops:
            bound = gflops * 1e9 / flops.per_token
            fraction = run["tokens_per_cpu_s"] / bound
            out[f"{dtype}_cpu_roofline_fraction"] = fraction
            lines.append(f"roofline {dtype} per CPU-second: {gflops:.0f} GFLOP/CPU-s = "
                         f"{bound:.0f} tokens/CPU-s; hyperlex {run['tokens_per_cpu_s']:.1f} is "
                         f"{fraction:.0%} of it")
    return lines, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps for each run")
    parser.add_argument("--rss-steps", type=int, default=2, help="steps of each RSS child")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="packed rows per hyperlex step (profile default)")
    parser.add_argument("--max-seq-len", type=int, default=None,
                        help="tokens per packed row (profile default)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for every run (profile default; 1 on a machine "
                             "whose cores other work shares: no thread then waits on another)")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--skip-fp32", action="store_true",
                        help="no hyperlex fp32 run (no held-out loss against fp32)")
    parser.add_argument("--json", action="store_true", help="also print one JSON line at the end")
    parser.add_argument("--child-precision", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-trainer", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-samples-per-step", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_trainer:
        child_trainer_main(args)
        return
    if args.child_precision:
        child_main(args.profile, args.child_precision, args.child_checkpointing, args.rss_steps,
                   args.batch_size, args.max_seq_len, args.threads)
        return

    import torch

    profile = sized_profile(args.profile, args.batch_size, args.max_seq_len, args.threads)
    section = profile.training
    with tempfile.TemporaryDirectory() as scratch:
        ours, recipe = run_hyperlex(profile, args.steps, Path(scratch) / "hyperlex")
        per_step = max(1, round(ours["samples_per_step"]))
        print(f"config: model {profile.model.base}, {recipe.placement.device}, precision "
              f"{profile.device.precision} -> {recipe.placement.precision} "
              f"({recipe.precision.reason}), torch threads {torch.get_num_threads()}, "
              f"cores {os.cpu_count()}; LoRA r={profile.lora.r} alpha={profile.lora.alpha} "
              f"on {','.join(profile.lora.target_modules)}; {args.steps} optimizer steps; "
              f"lr {section.learning_rate} cosine, warm-up {section.warmup_steps}; "
              f"{len(recipe.data.train)} train / {len(recipe.data.held_out)} held-out samples "
              f"({recipe.mode}); hyperlex packs to {section.max_seq_len} tokens x "
              f"{section.batch_size} rows (~{ours['samples_per_step']:.1f} samples/step); "
              f"Trainer batch {per_step} samples/step with dynamic padding", flush=True)
        fp32 = ours
        if ours["precision"] != "fp32" and not args.skip_fp32:
            fp32_profile = sized_profile(args.profile, args.batch_size, args.max_seq_len,
                                         args.threads)
            fp32_profile.device.precision = "fp32"
            fp32, _ = run_hyperlex(fp32_profile, args.steps, Path(scratch) / "hyperlex-fp32")
        base = child_trainer(args, per_step, bf16=False)
        base_bf16 = child_trainer(args, per_step, bf16=True)
    print(describe_run(f"hyperlex ({ours['precision']})", ours))
    if fp32 is not ours:
        print(describe_run("hyperlex (fp32)", fp32))
    print(describe_run("Trainer + PEFT fp32 (pad)", base))
    print(describe_run("Trainer + PEFT bf16=True", base_bf16))
    ratios = {}
    for name, other, goal in (("Trainer fp32", base, 3.0), ("Trainer bf16", base_bf16, 1.5)):
        ratio = ours["tokens_per_s"] / other["tokens_per_s"]
        cpu_ratio = ours["tokens_per_cpu_s"] / other["tokens_per_cpu_s"]
        median_ratio = ours["median_tokens_per_s"] / other["median_tokens_per_s"]
        ratios[name] = {"tokens_per_s": ratio, "tokens_per_cpu_s": cpu_ratio,
                        "median_step": median_ratio}
        # On a shared machine wall time depends on the neighbours; CPU time much less so.
        print(f"ratio hyperlex/{name}: {ratio:.2f}x tokens/s, {cpu_ratio:.2f}x per CPU-second, "
              f"{median_ratio:.2f}x median step (goal >= {goal}x); held-out loss "
              f"{(ours['held_out_loss'] / other['held_out_loss'] - 1) * 100:+.2f}% vs it")
    against_fp32 = ours["held_out_loss"] / fp32["held_out_loss"] - 1
    if fp32 is not ours:
        print(f"held-out loss {ours['precision']} vs fp32 (hyperlex, same steps): "
              f"{ours['held_out_loss']:.4f} vs {fp32['held_out_loss']:.4f}, "
              f"{against_fp32 * 100:+.2f}% (goal within 2%); fp32 speed-up "
              f"{ours['tokens_per_s'] / fp32['tokens_per_s']:.2f}x")
    per_cpu_second = {dtype: matmul_gflops_per_cpu_second(name)
                      for dtype, name in (("fp32", "float32"), ("bf16", "bfloat16"))}
    from engine.machine import print_machine

    machine = print_machine()  # after every timed run, so the probe cannot disturb them
    lines, roofline = roofline_lines(ours, {**machine, "per_cpu_second": per_cpu_second})
    print("\n".join(lines))
    rss = []
    if not args.skip_rss:
        print("peak RSS of a hyperlex run (child process each, "
              f"{args.rss_steps} steps):")
        for precision, checkpointing in (("fp32", False), ("bf16", False), ("int8", False),
                                         ("int4", False), ("fp32", True), ("bf16", True)):
            row = child_rss(args.profile, precision, checkpointing, args.rss_steps,
                            args.batch_size, args.max_seq_len, args.threads)
            rss.append(row)
            label = f"{precision}{' + grad. checkpointing' if checkpointing else ''}"
            if "error" in row:
                print(f"  {label:28s}: failed: {row['error']}")
            else:
                print(f"  {label:28s}: {row['peak_rss_mb']:8.1f} MiB peak RSS, "
                      f"{row['tokens_per_s']:.1f} tokens/s")
    if args.json:
        def plain(run: dict) -> dict:
            return {k: v for k, v in run.items() if k != "flops"}

        print(json.dumps({"hyperlex": plain(ours), "hyperlex_fp32": plain(fp32),
                          "trainer_fp32": base, "trainer_bf16": base_bf16, "ratios": ratios,
                          "held_out_vs_fp32": against_fp32, "roofline": roofline, "rss": rss,
                          "machine": machine}))


if __name__ == "__main__":
    main()
