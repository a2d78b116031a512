"""`hyperlex demo`: the whole flow in one command, text -> scenes -> tokens -> LoRA -> text.

Stages: synthetic corpus, scenes, tokenizer with hypertokens, a short LoRA run, export (merged
GGUF with the hypertokens), and the same prompts answered by the base and the adapted model side
by side. Each finished stage writes `stages/<name>.json` with its figures; a second run reuses
finished stages, and an interrupted training run resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from engine.errors import HyperlexError
from engine.paths import dirs
from engine.profiles import load_profile
from hyperlex_console.cli.common import (
    emit_json,
    handles_errors,
    json_option,
    profile_option,
    stdout,
)

PROMPTS = [
    "Write a scene in the logic register.",
    "Write a scene in the emotion register.",
    "What is the capital of France?",
]
DOCS_PER_REGISTER = 24
DEMO_BATCH = 2
DEMO_SEQ_LEN = 256


class Stages:
    """Runs stages once each, recording their figures so that a later run can skip them."""

    def __init__(self, directory: Path, quiet: bool):
        self.directory = directory
        self.quiet = quiet
        self.figures: dict[str, Any] = {}
        (directory / "stages").mkdir(parents=True, exist_ok=True)

    def run(self, name: str, title: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        record = self.directory / "stages" / f"{name}.json"
        if record.is_file():
            figures = json.loads(record.read_text())
            self._say(f"[bold]{title}[/]: done before, reused", figures)
        else:
            if not self.quiet:
                stdout.print(f"[bold]{title}[/] ...")
            started = time.perf_counter()
            figures = work()
            figures["seconds"] = round(time.perf_counter() - started, 1)
            tmp = record.with_suffix(".tmp")
            tmp.write_text(json.dumps(figures, indent=2, ensure_ascii=False))
            tmp.replace(record)
            self._say(f"[bold]{title}[/]", figures)
        self.figures[name] = figures
        return figures

    def _say(self, heading: str, figures: dict[str, Any]) -> None:
        if self.quiet:
            return
        stdout.print(heading)
        for key, value in figures.items():
            if key != "answers":
                stdout.print(f"    {key}: {value}")


@click.command("demo")
@profile_option
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=None,
              help="Where the demo writes (default: <state>/demo/<profile>).")
@click.option("--max-steps", type=int, default=24, show_default=True,
              help="Training steps of the short LoRA run.")
@click.option("--fresh", is_flag=True, help="Start over instead of reusing finished stages.")
@json_option
@handles_errors
def group(profile_name: str, directory: Path | None, max_steps: int, fresh: bool,
          as_json: bool) -> None:
    """Run the whole flow on a synthetic corpus and compare base and adapter answers.

    Takes minutes on a CPU with the default profile; run it again to reuse finished stages.

    \b
    Example:
      hyperlex demo --profile default
    """
    profile = load_profile(profile_name)
    directory = (directory or dirs().state / "demo" / profile.name).expanduser()
    if fresh and (directory / "stages").is_dir():
        for record in (directory / "stages").glob("*.json"):
            record.unlink()
    stages = Stages(directory, quiet=as_json)
    stages.run("corpus", "1. synthetic corpus", lambda: _corpus(directory))
    stages.run("scenes", "2. scenes", lambda: _scenes(profile, directory))
    stages.run("tokenizer", "3. tokenizer with hypertokens", lambda: _tokenizer(profile, directory))
    stages.run("train", "4. short LoRA run", lambda: _train(profile, directory, max_steps))
    stages.run("export", "5. GGUF export", lambda: _export(profile, directory))
    answers = stages.run("compare", "6. base vs adapter", lambda: _compare(profile, directory))
    if as_json:
        emit_json({"dir": str(directory), "stages": stages.figures})
        return
    for row in answers["answers"]:
        stdout.print(f"\n[bold]> {row['prompt']}[/]")
        stdout.print(f"  [cyan]base   [/] {row['base']}")
        stdout.print(f"  [green]adapter[/] {row['adapter']}")
    stdout.print(f"\nEverything is in {directory}")


def _corpus(directory: Path) -> dict[str, Any]:
    from engine.corpus.synth import generate_all, write_jsonl

    docs = generate_all(DOCS_PER_REGISTER, lang="en", seed=7)
    path = write_jsonl(directory / "corpus.jsonl", docs)
    return {"documents": len(docs), "characters": sum(len(d.text) for d in docs),
            "path": str(path)}


def _scenes(profile: Any, directory: Path) -> dict[str, Any]:
    from engine.corpus.synth import generate_all
    from engine.models import load_tokenizer
    from engine.scenes.build import rule_options
    from engine.scenes.io import write_scenes
    from engine.scenes.rule import RuleSceneformer

    former = RuleSceneformer(load_tokenizer(profile.model.base), rule_options(profile))
    scenes = []
    for doc in generate_all(DOCS_PER_REGISTER, lang="en", seed=7):
        for scene in former.scenes(doc):
            scene.register = doc.meta["register"]
            scenes.append(scene)
    path = directory / "scenes.jsonl"
    write_scenes(path, scenes)
    return {"scenes": len(scenes), "by_register": dict(Counter(s.register for s in scenes)),
            "path": str(path)}


def _tokenizer(profile: Any, directory: Path) -> dict[str, Any]:
    from engine.tokenizer import Hypertokenizer

    hypertokenizer = Hypertokenizer.from_profile(profile)
    path = hypertokenizer.save(directory / "tokenizer")
    sample = "<|scene|><|reg:logic|> All men are mortal. <|/scene|>"
    as_text = hypertokenizer.encode_text(sample)
    return {"base_vocab": hypertokenizer.base_vocab_size, "vocab": len(hypertokenizer),
            "hypertokens": len(hypertokenizer.hypertokens),
            "typed_hypertoken_text_stays_text": not any(
                hypertokenizer.is_hypertoken_id(i) for i in as_text),
            "path": str(path)}


def _train(profile: Any, directory: Path, max_steps: int) -> dict[str, Any]:
    import dataclasses

    from engine.training import RunConfig, main

    # A short run for a first look: small batches of short sequences keep a step to seconds on
    # two CPU cores (the profile's batch 4 x 512 tokens takes about four times as long).
    training = dataclasses.replace(
        profile.training, batch_size=min(profile.training.batch_size, DEMO_BATCH),
        max_seq_len=min(profile.training.max_seq_len, DEMO_SEQ_LEN),
        eval_every=0, checkpoint_every=max(1, max_steps // 3))
    profile = dataclasses.replace(profile, training=training)
    run_dir = directory / "run"
    resume = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())

    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") == "step" and event["step"] % 4 == 0:
            stdout.print(f"    step {event['step']}/{event['max_steps']}  "
                         f"loss {event['loss']:.3f}  eta {event['eta_s']:.0f}s")

    result = main(RunConfig(profile=profile, run_dir=run_dir, data=directory / "scenes.jsonl",
                            max_steps=max_steps, resume=resume, on_event=on_event))
    if result.stopped or result.adapter_dir is None:
        raise HyperlexError("the training run stopped before its last step",
                            hint="run `hyperlex demo` again: it resumes from the checkpoint")
    return {"steps": result.steps, "final_loss": result.final_loss,
            "eval_loss": result.eval_loss, "base_eval_loss": result.base_eval_loss,
            "resumed": resume, "adapter": str(result.adapter_dir)}


def _export(profile: Any, directory: Path) -> dict[str, Any]:
    from engine.adapters import read_adapter
    from engine.export.extended_base import extended_base_for
    from engine.export.gguf_lora import export_gguf_lora, inexpressible
    from engine.export.gguf_model import export_gguf
    from engine.export.merge import merge_adapter
    from engine.models import resolve_model

    adapter_dir = directory / "run" / "adapter"
    gguf_spec = profile.model.gguf or profile.model.base
    base_gguf = resolve_model(gguf_spec).path if resolve_model(gguf_spec).kind == "gguf" else None
    merged = merge_adapter(adapter_dir, profile.model.base, directory / "merged")
    exported = export_gguf(merged, directory / "model.gguf", base_gguf=base_gguf)
    figures: dict[str, Any] = {"merged_dir": str(merged), "gguf": str(exported.path),
                               "gguf_mb": round(exported.path.stat().st_size / 2**20, 1),
                               "added_tokens": len(exported.added_tokens),
                               "vocab": exported.vocab_size}
    if base_gguf is not None and not inexpressible(read_adapter(adapter_dir)):
        extended = extended_base_for(adapter_dir, base_gguf)  # for hypertoken rows
        lora = export_gguf_lora(adapter_dir, extended.path if extended else base_gguf,
                                directory / "adapter.gguf")
        figures["gguf_lora"] = str(lora.path)
        if extended is not None:
            figures["gguf_lora_base"] = str(extended.path)
    else:
        figures["gguf_lora"] = "not written: the adapter holds what a GGUF LoRA cannot carry, " \
                               "which only the merged GGUF does"
    return figures


def _compare(profile: Any, directory: Path) -> dict[str, Any]:
    from engine.inference.base import GenerationRequest
    from engine.inference.llamacpp import LlamaCppBackend
    from engine.models import gguf_path

    def answers(model_file: Path) -> list[str]:
        backend = LlamaCppBackend(model_file, n_ctx=1024, threads=profile.device.threads,
                                  system_prompt=profile.inference.system_prompt)
        try:
            return [backend.generate(GenerationRequest(
                messages=[{"role": "user", "content": prompt}], max_tokens=48)).text.strip()
                for prompt in PROMPTS]
        finally:
            backend.close()

    try:
        base_file = gguf_path(profile.model.gguf or profile.model.base)
    except Exception:  # an HF-only base: export it once so both sides run on llama.cpp
        from engine.export.gguf_model import export_gguf
        from engine.models import hf_model_dir

        base_file = export_gguf(hf_model_dir(profile.model.base), directory / "base.gguf").path
    base = answers(base_file)
    adapted = answers(directory / "model.gguf")
    return {"answers": [{"prompt": p, "base": b, "adapter": a}
                        for p, b, a in zip(PROMPTS, base, adapted, strict=True)],
            "different_answers": sum(b != a for b, a in zip(base, adapted, strict=True))}
