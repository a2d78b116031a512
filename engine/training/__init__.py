"""The training stage: scenes' samples → a LoRA / QLoRA adapter, by one recipe.

`recipe.main(RunConfig(...))` runs a training; `run` is its command line for the daemon
(`python -m engine.training.run ... --progress-jsonl`). This package knows nothing of the daemon
or the console.
"""

from __future__ import annotations

from engine.training.recipe import STOPPED_EXIT_CODE, LoRARecipe, RunConfig, RunResult, main

__all__ = ["STOPPED_EXIT_CODE", "LoRARecipe", "RunConfig", "RunResult", "main"]
