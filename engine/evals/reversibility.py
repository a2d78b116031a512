"""Reversibility: text → scene → text, scored with chrF++ and exact match (sacrebleu).

The way out is the sceneformer (the scene's structure as the held-out sample carries it) or the
bridge adapter itself (it writes the structure from the text); the way back is always the bridge
adapter (structure → text), greedy. Definitions:

- a sentence's chrF++ is sacrebleu's `CHRF(word_order=2)` sentence score of the generation
  against the scene's own text (one reference);
- corpus chrF++ is sacrebleu's score computed from the chrF statistics summed over examples (a
  ratio of sums, as `corpus_score` does; not the mean of sentence scores), so a paired bootstrap
  resamples examples and recomputes from the sums;
- exact match is 1 when the generation equals the text after stripping whitespace at both ends.

The report prints sacrebleu's signature, so a figure can be reproduced. Knows the `Backend`
protocol, `Sample` and sacrebleu; nothing of adapters' files or reports.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from engine.evals.records import EvalRecord
from engine.inference.base import GenerationRequest
from engine.types import Sample

IGNORE = -100
TO_TEXT = "structure->text"
TO_STRUCTURE = "text->structure"
PATHS = ("sceneformer", "bridge")


def chrf_metric() -> Any:
    """sacrebleu's chrF++ (character 6-grams, word 2-grams, beta 2)."""
    from sacrebleu.metrics import CHRF

    return CHRF(word_order=2)


def signature() -> str:
    """sacrebleu's signature of the metric, for the report."""
    metric = chrf_metric()
    metric.corpus_score(["a"], [["a"]])  # the signature names the reference count, once known
    return str(metric.get_signature())


def sentence_stats(metric: Any, hypothesis: str, reference: str) -> list[float]:
    """The chrF sufficient statistics of one sentence (sum them for a corpus score)."""
    return [float(x) for x in metric._extract_corpus_statistics([hypothesis], [[reference]])[0]]


def corpus_chrf(stats: Sequence[Sequence[float]]) -> float:
    """Corpus chrF++ from per-sentence statistics (summed, then scored)."""
    metric = chrf_metric()
    total = np.asarray(stats, dtype=np.float64).sum(axis=0)
    return float(metric._compute_score_from_stats(list(total)).score)


def chrf_of_sums(total: Sequence[float]) -> float:
    """chrF++ of already summed statistics (the `score` a paired bootstrap recomputes)."""
    return float(chrf_metric()._compute_score_from_stats(list(total)).score)


def _prompt_ids(sample: Sample) -> list[int]:
    first = next(i for i, label in enumerate(sample.labels) if label != IGNORE)
    return list(sample.input_ids[:first])


def _answer_len(sample: Sample) -> int:
    return sum(1 for label in sample.labels[1:] if label != IGNORE)


def _splice_structure(to_text: Sample, structure_ids: list[int]) -> list[int] | None:
    """The structure → text prompt with its structure replaced by generated structure ids."""
    prompt = _prompt_ids(to_text)
    mask = list(to_text.field_mask or [])[:len(prompt)]
    marked = [i for i, flag in enumerate(mask) if flag]
    if not marked or marked != list(range(marked[0], marked[-1] + 1)):
        return None
    return prompt[:marked[0]] + structure_ids + prompt[marked[-1] + 1:]


def _generate(backend: Any, prompt_ids: list[int], max_tokens: int) -> Any:
    return backend.generate(GenerationRequest(prompt_ids=prompt_ids, max_tokens=max_tokens,
                                              temperature=0.0))


def reverse_records(sides: Any, samples: Sequence[Sample], texts: dict[str, str], *,
                    path: str = "sceneformer", limit: int | None = None,
                    on_progress: Callable[[int, int], None] | None = None) -> list[EvalRecord]:
    """One `reverse` record per held-out scene and side.

    Args:
        sides: an `engine.evals.sides.Sides`.
        samples: bridge-mode held-out samples (both directions; others are ignored).
        texts: scene id → the scene's text (the reference).
        path: "sceneformer" (structure as given) or "bridge" (structure written by the side).
        limit: score at most this many scenes (the first, in example id order).
        on_progress: called with (done, total).
    """
    metric = chrf_metric()
    to_text = {s.example_id.removesuffix("/" + TO_TEXT): s for s in samples
               if s.example_id and s.example_id.endswith("/" + TO_TEXT)}
    to_structure = {s.example_id.removesuffix("/" + TO_STRUCTURE): s for s in samples
                    if s.example_id and s.example_id.endswith("/" + TO_STRUCTURE)}
    scene_ids = sorted(i for i in to_text if i in texts)[:limit]
    total, done, records = len(scene_ids) * len(sides.names), 0, []
    for name in sides.names:
        sides.use(name)
        for scene_id in scene_ids:
            sample = to_text[scene_id]
            reference = texts[scene_id]
            budget = int(_answer_len(sample) * 1.5) + 8
            prompt = _prompt_ids(sample)
            meta: dict[str, Any] = {"path": path}
            if path == "bridge" and scene_id in to_structure:
                out = to_structure[scene_id]
                written = _generate(sides.backend, _prompt_ids(out), _answer_len(out) * 2 + 8)
                spliced = _splice_structure(sample, list(written.token_ids))
                if spliced is not None:
                    prompt = spliced
                    meta["structure"] = written.text
            result = _generate(sides.backend, prompt, budget)
            hypothesis = result.text
            exact = int(hypothesis.strip() == reference.strip())
            stats = sentence_stats(metric, hypothesis, reference)
            records.append(EvalRecord(
                example_id=scene_id, side=name, task="reverse",
                adapter_sha256=sides.sha256(name), register=sample.register,
                values={"chrf_stats": stats, "chrf": chrf_of_sums(stats), "exact": exact},
                generation=hypothesis, reference=reference, meta=meta))
            done += 1
            if on_progress is not None:
                on_progress(done, total)
    return records


def aggregate_reverse(records: Sequence[EvalRecord]) -> dict[str, float | None]:
    """Corpus chrF++ and the exact-match rate of one side's `reverse` records."""
    mine = [r for r in records if r.task == "reverse"]
    if not mine:
        return {"chrf": None, "exact": None}
    return {"chrf": corpus_chrf([r.values["chrf_stats"] for r in mine]),
            "exact": sum(r.values["exact"] for r in mine) / len(mine), "examples": len(mine)}
