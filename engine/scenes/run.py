"""`python -m engine.scenes.run`: build scenes from texts as a process, for the daemon.

    python -m engine.scenes.run --profile P --input PATH [--output scenes.jsonl] [--run-dir DIR]
        [--sceneformer rule|llm] [--registers lexicon|embedding|none] [--embed] --progress-jsonl

`--input` is a file or folder (.txt .md .jsonl). The output defaults to `<run-dir>/scenes.jsonl`
and is written atomically. Events (`engine.job_entry` keeps the contract): `progress` (stage
`documents`) per document, `log` for warnings, then `done` (`output`, `scenes`, ...) or `error`
(exit 1). `--resume` builds again: the build is deterministic and cheap, so the result is the
same. Knows nothing of the daemon.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from engine.errors import DataError
from engine.job_entry import Events, job_parser, run_job


def parser() -> argparse.ArgumentParser:
    """The command line of a scenes job."""
    parser = job_parser("python -m engine.scenes.run", "Build scenes from texts.")
    parser.add_argument("--profile", default="default", help="profile name or .toml path")
    parser.add_argument("--input", required=True, help="a file or folder of texts")
    parser.add_argument("--output", type=Path, default=None,
                        help="scene JSONL to write (default: <run-dir>/scenes.jsonl)")
    parser.add_argument("--run-dir", type=Path, default=Path("."))
    parser.add_argument("--sceneformer", choices=("rule", "llm"), default=None)
    parser.add_argument("--registers", choices=("lexicon", "embedding", "none"),
                        default="lexicon")
    parser.add_argument("--embed", action="store_true", help="fill scene vectors (MiniLM)")
    parser.add_argument("--resume", action="store_true", help="build again (deterministic)")
    return parser


def llm_generator(profile: Any) -> Any:
    """The `llm` sceneformer's JSON generator on the profile's GGUF through llama.cpp.

    The job process is where the scenes stage meets a backend: the sceneformer itself only
    knows engine.backend's protocol, so opening one here is the single place scenes reach
    inference (the layers contract in pyproject.toml names this import as allowed).
    """
    from engine.inference.llamacpp import LlamaCppBackend
    from engine.models import gguf_path
    from engine.scenes.llm import backend_json_generator

    backend = LlamaCppBackend(gguf_path(profile.model.gguf or profile.model.base),
                              n_ctx=profile.inference.n_ctx, threads=profile.device.threads,
                              seed=profile.inference.seed)
    return backend_json_generator(backend, seed=profile.inference.seed)


def run(args: argparse.Namespace, events: Events) -> dict[str, Any]:
    """Build and write; returns the `done` event."""
    from engine.corpus.sources import CorpusReader, ReadOptions
    from engine.profiles import load_profile
    from engine.scenes.budget import load_counter
    from engine.scenes.build import (
        BuildSummary,
        build,
        default_classifier,
        make_sceneformer,
        rule_options,
    )
    from engine.scenes.io import SceneWriter

    profile = load_profile(args.profile)
    name = args.sceneformer or profile.scenes.sceneformer
    generate = None
    if name == "llm":
        generate = llm_generator(profile)
    former = make_sceneformer(name, load_counter(profile.model.base), rule_options(profile),
                              generate)
    embedder = None
    if args.embed or args.registers == "embedding":
        from engine.embedding import Embedder

        embedder = Embedder.load(profile.memory.embedder)
    classifier = default_classifier(args.registers, embedder, None)
    summary = BuildSummary()

    def on_warning(warning: Any) -> None:
        summary.warnings.append(str(warning))
        events.log(f"warning: {warning}")

    reader = CorpusReader(ReadOptions(), on_warning=on_warning)
    output = args.output or args.run_dir / "scenes.jsonl"
    output.parent.mkdir(parents=True, exist_ok=True)
    done = [0]

    def on_document(_doc: Any) -> None:
        done[0] += 1
        events.progress("documents", done[0], None)

    with SceneWriter(output) as writer:
        for scene in build(reader.read([args.input]), former, classifier=classifier,
                           embedder=embedder if args.embed else None, summary=summary,
                           on_document=on_document):
            writer.write(scene)
    if generate is not None and hasattr(generate, "close"):
        generate.close()
    if summary.documents == 0:
        raise DataError(f"no document was read from {args.input}",
                        hint="give a .txt, .md or .jsonl file, or a folder of them")
    return {"event": "done", "output": str(output), **summary.to_dict()}


def cli(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    return run_job(parser(), run, argv)


if __name__ == "__main__":
    sys.exit(cli())
