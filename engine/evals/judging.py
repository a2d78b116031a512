"""Judges in an eval run: an automatic pairwise judge over both sides' answers, and people's
blind A/B ratings ranked with Bradley–Terry.

The automatic judge reads pairs of generations the eval already made (manual tests first, else
reversibility texts with their reference), asks in both orders, and its scores are compared
with a Wilcoxon signed-rank test: side b's score is 1 (b won), ½ (tie or inconsistent) or 0;
side a's is one minus that. Missing verdicts stay missing. Knows the eval's records and the
judge modules; nothing of front ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from engine.evals import stats
from engine.evals.records import EvalRecord, paired

JUDGED_TASKS = ("test", "reverse")


def open_judge(spec: str, cache_dir: Path | None) -> Any:
    """A `PairwiseJudge` from `PROFILE[:BACKEND]`: that profile's model on that backend.

    Raises:
        ConfigError: the profile does not exist or the backend is unknown.
    """
    from engine.evals.judge import JudgeConfig, PairwiseJudge
    from engine.inference import open_backend
    from engine.profiles import load_profile

    name, _, backend_name = spec.partition(":")
    if not name:
        raise ConfigError(f"--judge {spec!r}: give PROFILE[:BACKEND], e.g. default:llamacpp")
    profile = load_profile(name)
    backend = open_backend(profile, backend_name or None)
    model = profile.inference.openai_model if backend.name == "openai" else profile.model.base
    return PairwiseJudge(backend, JudgeConfig(judge_id=f"{backend.name}:{model}"), cache_dir)


def judge_records(judge: Any, records: list[EvalRecord], a: str, b: str,
                  limit: int | None = None) -> list[EvalRecord]:
    """The judge's records on every pair of a's and b's generations (one task: the first of
    `JUDGED_TASKS` that both sides generated for)."""
    for task in JUDGED_TASKS:
        pairs = [(x, y) for x, y in paired(records, task, a, b)
                 if x.generation is not None and y.generation is not None][:limit]
        if pairs:
            break
    else:
        return []
    out = []
    for x, y in pairs:
        prompt = x.prompt or "Write the text of this scene."
        reference = x.reference if task == "reverse" else None
        out.append(judge.judge(f"{task}:{x.example_id}", prompt, x.generation, y.generation,
                               a, b, reference=reference))
    return out


def judge_difference(records: list[EvalRecord], a: str, b: str, *, seed: int,
                     n_resamples: int) -> dict[str, Any] | None:
    """The Wilcoxon comparison of b's judge scores against a's, None with fewer than 2."""
    mine = [r for r in records if r.task == "judge" and r.side == f"{a}|{b}"]
    if len(mine) < 2:
        return None
    b_scores = [r.values.get("score") for r in mine]
    a_scores = [None if s is None else 1.0 - s for s in b_scores]
    try:
        return stats.wilcoxon_scores("judge.b_win_rate", a_scores, b_scores, a=a, b=b,
                                     seed=seed, n_resamples=n_resamples).to_dict()
    except Exception as exc:  # fewer than two answered verdicts: reported, not compared
        return {"metric": "judge.b_win_rate", "a": a, "b": b, "error": str(exc)}


def people(path: Path, *, seed: int, n_resamples: int) -> tuple[list[EvalRecord], dict[str, Any]]:
    """People's ratings from an `ab_ratings.jsonl`: their records and a summary with the
    Bradley–Terry ranking of every model rated (bad lines are named, good ones kept)."""
    from engine.evals.human import pairwise_outcomes, rating_records, read_ratings
    from engine.evals.ranking import bradley_terry

    errors: list[str] = []
    ratings = read_ratings(path, errors)
    outcomes = pairwise_outcomes(ratings)
    ranking = bradley_terry(outcomes, n_resamples=n_resamples, seed=seed) if outcomes else []
    return rating_records(ratings), {"file": str(path), "ratings": len(ratings),
                                     "outcomes": len(outcomes), "bad_lines": errors[:5],
                                     "ranking": ranking}
