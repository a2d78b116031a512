"""The seed's experiment: an adapter trained on plain text against one trained on hypertoken scenes.

Both adapters learn from the same texts with the same budget (steps, batch, sequence length,
learning rate, seed, split): `plain` sees each scene's text alone (training mode `plain`), `hyper`
sees the scene with its structure and hypertokens (the profile's mode, `output-only` unless it
says otherwise). Then one eval scores both, and the base, on the same held-out examples:

- `text.ppl`: perplexity of the plain held-out texts — the common ground, what a plain adapter
  was trained for;
- `loss.ppl`: perplexity of the held-out scenes with their structure — what `hyper` was trained
  for;
- reversibility (structure → text) and, with tests, register agreement of generated answers.

Every difference is `hyper − plain`, with its interval: whichever side wins, the table says.
Knows the training recipe and the eval; nothing of front ends.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.evals.compare import DEFAULT_TASKS, EvalConfig, EvalResult, run_eval

PLAIN = "plain"
HYPER = "hyper"


def train_pair(profile: Any, out_dir: Path, *, data: Path | None = None,
               max_steps: int | None = None, hyper_mode: str | None = None,
               on_event: Callable[[dict[str, Any]], None] | None = None
               ) -> dict[str, Path]:
    """Train the plain and the hypertoken adapter (resuming either if it was stopped).

    Returns:
        `{"plain": adapter dir, "hyper": adapter dir}`.
    """
    from engine.errors import HyperlexError
    from engine.training import RunConfig, main

    hyper_mode = hyper_mode or (profile.training.mode if profile.training.mode != PLAIN
                                else "output-only")
    adapters = {}
    for name, mode in ((PLAIN, PLAIN), (HYPER, hyper_mode)):
        run_dir = Path(out_dir) / f"run-{name}"
        adapter = run_dir / "adapter"
        if (adapter / "adapter_model.safetensors").is_file():
            adapters[name] = adapter
            continue
        resume = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())

        def tagged(event: dict[str, Any], name: str = name) -> None:
            if on_event is not None:
                on_event({**event, "side": name})
        if on_event is not None:
            on_event({"event": "log", "message": f"training the {name} adapter ({mode})"})
        result = main(RunConfig(profile=profile, run_dir=run_dir, data=data, mode=mode,
                                max_steps=max_steps, resume=resume, on_event=tagged))
        if result.adapter_dir is None:
            raise HyperlexError(f"the {name} training run stopped before its last step",
                                hint="run the same command again: it resumes")
        adapters[name] = result.adapter_dir
    return adapters


def plain_vs_hyper(profile: Any, out_dir: Path, *, data: Path | None = None,
                   max_steps: int | None = None, tests: Path | None = None,
                   limit: int | None = None, reverse_limit: int = 24, seed: int = 0,
                   n_resamples: int = 2000,
                   on_event: Callable[[dict[str, Any]], None] | None = None) -> EvalResult:
    """Train both adapters, then compare them (and the base) on the same held-out examples."""
    adapters = train_pair(profile, out_dir, data=data, max_steps=max_steps, on_event=on_event)
    tasks = ("loss", "text", *(t for t in DEFAULT_TASKS if t != "loss"))
    if tests is None:
        tasks = tuple(t for t in tasks if t not in ("test", "register"))
    cfg = EvalConfig(profile=profile, adapters=[(HYPER, adapters[HYPER]),
                                                (PLAIN, adapters[PLAIN])],
                     vs=PLAIN, tests=tests, data=data, tasks=tasks, limit=limit,
                     reverse_limit=reverse_limit, seed=seed,
                     n_resamples=n_resamples, out_dir=Path(out_dir) / "report",
                     work_dir=Path(out_dir) / "work", on_event=on_event,
                     include_base=True)
    return run_eval(cfg)
