"""lm-evaluation-harness on the engine: a served model scored without any server in between.

`EngineLM` is an lm-eval `TemplateLM` over any engine backend (hf or llamacpp), with or without
an adapter: loglikelihood from the backend's logits at every position (the numbers the gateway's
`/v1/completions` gives with `echo` + `logprobs`, and the engine's perplexity uses), generation
from its `generate`. lm-eval splits context and continuation itself (`TemplateLM`), with the
backend's tokenizer, so the tokens scored are the ones a `local-completions` run through the
gateway scores, and the two figures can be set side by side.

`local_task(dir)` writes a small loglikelihood task (multiple choice, 24 questions, data in
`engine/evals/data/lm-small.jsonl`) lm-eval loads with `TaskManager(include_path=dir)`.

lm-eval is imported only here (`pip install lm-eval`, part of the dev tools). Knows the Backend
protocol and lm-eval; nothing of the daemon.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.backend import GenerationRequest
from engine.errors import NotAvailableError

TASK_NAME = "hyperlex_small_mc"
DATA = Path(__file__).with_name("data") / "lm-small.jsonl"


def local_task(directory: Path) -> str:
    """Write the small local task's YAML into `directory`; returns the task's name."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{TASK_NAME}.yaml").write_text(
        f"task: {TASK_NAME}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {DATA}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: \"{{question}}\"\n"
        "doc_to_choice: \"{{choices}}\"\n"
        "doc_to_target: \"{{answer}}\"\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n", encoding="utf-8")
    return TASK_NAME


def _template_lm() -> type:
    try:
        from lm_eval.api.model import TemplateLM
    except ImportError as exc:
        raise NotAvailableError("lm-evaluation-harness is not installed",
                                hint="pip install lm-eval (it comes with ./install.sh --dev)"
                                ) from exc
    return TemplateLM


def engine_lm(backend: Any, *, adapter: str | None = None, max_gen_tokens: int = 256) -> Any:
    """An lm-eval model scoring with `backend` (and its loaded `adapter` active, if named).

    Raises:
        NotAvailableError: lm-eval is not installed, or the backend has no prompt logits.
    """
    base_class = _template_lm()

    class EngineLM(base_class):  # type: ignore[misc, valid-type]
        """lm-eval's model protocol on an engine backend."""

        def __init__(self) -> None:
            super().__init__()
            self.engine_backend = backend
            self.adapter = adapter
            self.max_gen_tokens = max_gen_tokens

        # --- tokens -------------------------------------------------------------------------

        @property
        def eot_token_id(self) -> int:
            return _eos_id(backend)

        @property
        def prefix_token_id(self) -> int:
            bos = _bos_id(backend)
            return bos if bos is not None else self.eot_token_id

        def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                       **kwargs: Any) -> list[int]:
            return list(backend.tokenize(string, special=True))

        def tok_decode(self, tokens: Sequence[int]) -> str:
            return str(backend.detokenize(list(tokens)))

        # --- scoring ------------------------------------------------------------------------

        def _activate(self) -> None:
            backend.set_active(self.adapter or "base")

        def _logprobs(self, ids: list[int]) -> np.ndarray:
            """log p(ids[t+1] | ids[:t+1]) and whether each is the argmax, t = 0 … n-2."""
            import torch

            logits = torch.as_tensor(np.asarray(backend.logits(ids, all_positions=True)))
            table = torch.log_softmax(logits[:-1].float(), dim=-1)
            targets = torch.as_tensor(ids[1:], dtype=torch.long)
            picked = table.gather(1, targets[:, None])[:, 0]
            greedy = table.argmax(dim=-1) == targets
            return np.stack([picked.double().numpy(), greedy.numpy().astype(np.float64)])

        def _loglikelihood_tokens(self, requests: list[Any], disable_tqdm: bool = False,
                                  **kwargs: Any) -> list[tuple[float, bool]]:
            self._activate()
            out = []
            for _, context, continuation in requests:
                ids = list(context) + list(continuation)
                rows = self._logprobs(ids)[:, len(context) - 1:]
                out.append((float(rows[0].sum()), bool(rows[1].all())))
            return out

        def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False
                                  ) -> list[float]:
            self._activate()
            out = []
            window = int(backend.n_ctx)
            for request in requests:
                ids = [self.prefix_token_id] + self.tok_encode(request.args[0])
                total = 0.0
                for start in range(0, len(ids) - 1, window - 1):
                    chunk = ids[start:start + window]
                    total += float(self._logprobs(chunk)[0].sum())
                out.append(total)
            return out

        def generate_until(self, requests: list[Any], disable_tqdm: bool = False
                           ) -> list[str]:
            self._activate()
            out = []
            for request in requests:
                context, kwargs = request.args
                until = kwargs.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                ids = self.tok_encode(context)
                result = backend.generate(GenerationRequest(
                    prompt_ids=ids, temperature=float(kwargs.get("temperature", 0.0)),
                    max_tokens=int(kwargs.get("max_gen_toks", self.max_gen_tokens)),
                    stop=[u for u in until if u]).validate())
                out.append(result.text)
            return out

    return EngineLM()


def _eos_id(backend: Any) -> int:
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
        return int(tokenizer.eos_token_id)
    return int(backend.llama.token_eos())


def _bos_id(backend: Any) -> int | None:
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is not None and hasattr(tokenizer, "bos_token_id"):
        return None if tokenizer.bos_token_id is None else int(tokenizer.bos_token_id)
    bos = int(backend.llama.token_bos())
    return bos if bos >= 0 else None
