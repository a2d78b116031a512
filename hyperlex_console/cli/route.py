"""`hyperlex route`: which adapter a prompt goes to, with the register scores; and training."""

from __future__ import annotations

import json
from pathlib import Path

import click

from engine.errors import DataError
from engine.memory import MemoryConfig, SceneMemory
from engine.memory.external import read_scenes
from engine.profiles import load_profile
from engine.routing.classifier import RegisterClassifier
from engine.routing.router import (
    Router,
    RouterConfig,
    default_classifier_path,
    labelled_examples,
    load_router,
    synthetic_examples,
)
from hyperlex_console.cli.common import emit_json, handles_errors, json_option, profile_option
from hyperlex_console.cli.common import stdout as out


def read_labelled(path: Path) -> tuple[list[str], list[str]]:
    """(texts, registers) from JSONL lines `{"text", "register"}` (scene lines fit), or from a
    CSV/SQLite base with those columns.

    Raises:
        DataError: naming the file and line of the first bad line.
    """
    if path.suffix.lower() not in (".jsonl", ".ndjson", ".json"):
        return labelled_examples(read_scenes(path).scenes)
    items = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: not JSON ({error.msg})") from error
            if not isinstance(item, dict) or not item.get("text") or not item.get("register"):
                raise DataError(f"{path}:{number}: needs 'text' and 'register'")
            items.append(item)
    return labelled_examples(items)


@click.command("route")
@click.argument("prompts", nargs=-1)
@click.option("--train", "train_files", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Train the router on labelled prompts/scenes (JSONL text+register, CSV).")
@click.option("--train-synthetic", "synthetic_docs", type=int, default=0, metavar="N",
              help="Train on N synthetic documents per register and language (en, ru).")
@click.option("--train-from-memory", is_flag=True,
              help="Train on the labelled scenes in the memory too.")
@click.option("--memory", "memory_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Memory directory for --train-from-memory.")
@click.option("--classifier", "classifier_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Classifier file (default: state dir router/classifier.npz).")
@click.option("--threshold", type=float, default=None, help="Override the profile's threshold.")
@click.option("--fallback", type=click.Choice(["base", "mix"]), default=None,
              help="Below the threshold: the base model, or a weighted mix of adapters.")
@profile_option
@json_option
@handles_errors
def group(prompts: tuple[str, ...], train_files: tuple[Path, ...], synthetic_docs: int,
          train_from_memory: bool,
          memory_dir: Path | None, classifier_path: Path | None, threshold: float | None,
          fallback: str | None, profile_name: str, as_json: bool) -> None:
    """Show where each PROMPT is routed: register scores, adapter, or base/mix below threshold.

    \b
    Examples:
      hyperlex route --train-synthetic 40           # the built-in labelled corpus
      hyperlex route --train labelled.jsonl
      hyperlex route "Prove that every prime above two is odd" --json
      hyperlex route --fallback mix --threshold 0.7 "Мне одиноко, расскажи миф о герое"
    """
    from engine.embedding import Embedder

    profile = load_profile(profile_name)
    config = RouterConfig.from_profile(profile)
    if threshold is not None:
        config.threshold = threshold
    if fallback is not None:
        config.fallback = fallback
    path = classifier_path or default_classifier_path()
    embedder_spec = MemoryConfig.from_profile(profile).embedder
    embedder = Embedder.load(spec=embedder_spec)
    training = bool(train_files or train_from_memory or synthetic_docs)
    if not prompts and not training:
        raise DataError("nothing to do: give a prompt to route, or --train FILE")
    if training:
        texts, registers = synthetic_examples(synthetic_docs) if synthetic_docs else ([], [])
        for file in train_files:
            t, r = read_labelled(file)
            texts += t
            registers += r
        if train_from_memory:
            with SceneMemory.open(memory_dir, config=MemoryConfig.from_profile(profile)) as memory:
                t, r = labelled_examples(memory.iter_scenes())
            texts += t
            registers += r
        classifier = RegisterClassifier.train(texts, registers, embedder, embedder_spec)
        classifier.save(path)
        counts = {r: registers.count(r) for r in sorted(set(registers))}
        if as_json and not prompts:
            emit_json({"trained": len(texts), "by_register": counts, "classifier": str(path)})
        elif not as_json:
            out.print(f"router trained on {len(texts)} examples {counts}; saved {path}",
                      markup=False, soft_wrap=True)
        router = Router(classifier, embedder, config)
    else:
        router = load_router(embedder, config, path)
    if not prompts:
        return
    decisions = router.route_many(list(prompts))
    if as_json:
        data = [d.to_dict() for d in decisions]
        emit_json(data[0] if len(data) == 1 else data)
        return
    for decision in decisions:
        target = {"adapter": f"adapter {decision.adapter} ({decision.adapter_path})",
                  "mix": "mix " + ", ".join(f"{r} {w:.2f}" for r, w in decision.weights.items()),
                  "base": "base model"}[decision.mode]
        scores = "  ".join(f"{r} {s:.2f}" for r, s in
                           sorted(decision.scores.items(), key=lambda i: -i[1]))
        out.print(f"{decision.prompt}\n  -> {target}: {decision.reason}\n  scores: {scores}",
                  markup=False, soft_wrap=True)
