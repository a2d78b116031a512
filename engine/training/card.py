"""The run card: what a run was (profile, data, code versions) and what it measured.

Written as `run_card.json` in the run directory and next to the adapter, so an adapter found on
its own still says how it was made. Nothing here computes anything; it gathers.
"""

from __future__ import annotations

import math
import platform
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

CARD_SCHEMA = "hyperlex.run_card/1"


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _peak_cuda_mb() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def light_eval(summary: dict[str, Any], base_loss: float | None) -> dict[str, Any]:
    """The end-of-run eval the card carries: held-out corpus perplexity, exp(ΣNLL / Σtokens) on
    the answer tokens, before and after, overall, for structure and text, and per register.

    It has no interval: `hyperlex eval --adapter <run>/adapter` gives the paired comparison.
    """
    def ppl(loss: float | None) -> float | None:
        return round(math.exp(loss), 4) if loss is not None else None

    return {"ppl": ppl(summary.get("loss")), "base_ppl": ppl(base_loss),
            "field_ppl": ppl(summary.get("field_loss")), "text_ppl": ppl(summary.get("text_loss")),
            "per_register_ppl": {name: ppl(value) for name, value
                                 in summary.get("per_register", {}).items()},
            "full": "hyperlex eval --adapter <run>/adapter (paired, with intervals)"}


def run_card(recipe: Any, result: Any, evals: list[tuple[int, float]]) -> dict[str, Any]:
    """The card of a finished run.

    Args:
        recipe: the `LoRARecipe` after training.
        result: its `RunResult`.
        evals: (step, held-out loss) of every evaluation.
    """
    base = result.base_eval_loss
    final = result.eval_loss
    return {
        "schema": CARD_SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "profile": recipe.profile.to_dict(),
        "mode": recipe.mode,
        "data": {"source": str(recipe.cfg.data) if recipe.cfg.data else "demo corpus",
                 **recipe.data.summary()},
        "placement": {"device": recipe.placement.device, "precision": recipe.placement.precision,
                      "precision_requested": recipe.precision.requested,
                      "precision_reason": recipe.precision.reason,
                      "processes": recipe.world.size, "note": recipe.placement.note},
        "metrics": {
            "steps": result.steps, "max_steps": recipe.max_steps,
            "final_loss": result.final_loss, "base_eval_loss": base, "eval_loss": final,
            "eval_loss_reduction": (1 - final / base) if base and final is not None else None,
            "best_eval_loss": recipe.best_eval, "evaluations": evals,
            "tokens_seen": recipe.tokens_seen, "train_seconds": round(recipe.train_seconds, 2),
            "tokens_per_s": recipe.tokens_seen / recipe.train_seconds
            if recipe.train_seconds else None,
            "peak_rss_mb": round(recipe.peak_rss_mb(), 1),
            "peak_cuda_mb": _peak_cuda_mb(),
            "early_stopped": recipe.early_stopped,
        },
        "eval": light_eval(getattr(recipe, "final_summary", {}), base),
        "outputs": {"adapter_dir": str(result.adapter_dir), "loss_curve": "loss.png",
                    "metrics": "metrics.jsonl"},
        "versions": {name: _version(name) for name in
                     ("hyperlex", "torch", "transformers", "peft", "bitsandbytes")}
        | {"python": platform.python_version()},
    }
