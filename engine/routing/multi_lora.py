"""Several LoRA adapters on one transformers model, switched per message without reloading.

All register adapters are loaded once into one PEFT model (one copy of the base weights); a
message then activates one adapter, a weighted mix of them (PEFT's `add_weighted_adapter`, made
once per distinct mix and kept), or none (the base model). This is the `hf` side of multi-LoRA;
it is the one place that touches PEFT's adapter switching.

Knows transformers and PEFT; nothing of the router's classifier, the memory or front ends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import DataError, ModelNotFoundError

Target = str | Mapping[str, float] | None  # adapter name, weights by adapter name, or base
MAX_MIXES = 4  # weighted mixes kept merged; older ones are dropped (each is a full LoRA)


@dataclass
class Generation:
    """A generated answer and what produced it."""

    text: str
    adapter: Target
    new_tokens: int


class MultiLoraModel:
    """A causal LM with named LoRA adapters loaded side by side.

    Args:
        model: a transformers causal LM (becomes a PEFT model once adapters load).
        tokenizer: its tokenizer.
    """

    def __init__(self, model: Any, tokenizer: Any):
        self.model = model
        self.tokenizer = tokenizer
        self.adapters: dict[str, str] = {}
        self.loads = 0  # adapter files read so far: switching never reads one
        self._active: Target = None
        self._mixes: dict[str, dict[str, float]] = {}

    @classmethod
    def from_pretrained(cls, base: Path | str, adapters: Mapping[str, Path | str] | None = None,
                        *, device: str = "cpu") -> MultiLoraModel:
        """Load a base model directory and, optionally, adapters by name."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        base = Path(base)
        if not (base / "config.json").is_file():
            raise ModelNotFoundError(f"no transformers model at {base}")
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base).to(device).eval()
        loaded = cls(model, tokenizer)
        if adapters:
            loaded.load_adapters(adapters)
        return loaded

    # -- adapters -----------------------------------------------------------------------------

    def load_adapters(self, adapters: Mapping[str, Path | str]) -> None:
        """Load each adapter once under its name (a register, usually)."""
        from peft import PeftModel

        for name, path in adapters.items():
            if name in self.adapters:
                continue
            path = Path(path)
            if not (path / "adapter_config.json").is_file():
                raise ModelNotFoundError(f"no LoRA adapter at {path} (for '{name}')",
                                         hint="train one, or fix [router] adapters in the profile")
            if hasattr(self.model, "peft_config"):
                self.model.load_adapter(str(path), adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
            self.model.eval()
            self.adapters[name] = str(path)
            self.loads += 1

    @property
    def active(self) -> Target:
        """What answers now: an adapter name, a weight mapping, or None for the base model."""
        return self._active

    @property
    def peft_active_adapter(self) -> str | None:
        """The adapter PEFT itself reports active (None when adapters are bypassed)."""
        if self._active is None or not hasattr(self.model, "active_adapter"):
            return None
        return self.model.active_adapter

    def activate(self, target: Target) -> None:
        """Switch to an adapter, a weighted mix, or the base model (None). No file is read."""
        if target is None:
            self._active = None
            return
        if isinstance(target, str):
            self._require(target)
            self.model.set_adapter(target)
            self._active = target
            return
        weights = {name: float(w) for name, w in target.items() if w > 0}
        if len(weights) == 1:
            self.activate(next(iter(weights)))
            return
        self.model.set_adapter(self._mix(weights))
        self._active = dict(weights)

    # -- generation ---------------------------------------------------------------------------

    def generate(self, messages: list[dict[str, str]], max_tokens: int = 32) -> Generation:
        """Greedy answer to a chat with the active adapter(s)."""
        import torch

        inputs = self._encode(messages)
        with torch.inference_mode(), self._adapter_scope():
            output = self.model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False,
                                         pad_token_id=self.tokenizer.pad_token_id)
        new = output[0, inputs["input_ids"].shape[1]:]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        return Generation(text, self._active, int(new.shape[0]))

    def next_token_logits(self, messages: list[dict[str, str]]) -> Any:
        """The logits of the first answer token under the active adapter(s)."""
        import torch

        inputs = self._encode(messages)
        with torch.inference_mode(), self._adapter_scope():
            return self.model(**inputs).logits[0, -1].float().clone()

    # -- internals ----------------------------------------------------------------------------

    def _encode(self, messages: list[dict[str, str]]) -> Any:
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=True)
        else:
            text = "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
        return self.tokenizer(text, return_tensors="pt").to(self.model.device)

    def _adapter_scope(self) -> Any:
        import contextlib

        if self._active is None and hasattr(self.model, "disable_adapter"):
            return self.model.disable_adapter()
        return contextlib.nullcontext()

    def _require(self, name: str) -> None:
        if name not in self.adapters:
            raise DataError(f"adapter '{name}' is not loaded",
                            hint=f"loaded adapters: {', '.join(self.adapters) or 'none'}")

    def _mix(self, weights: dict[str, float]) -> str:
        """The name of a merged weighted adapter, made once per distinct (rounded) mix."""
        for name in weights:
            self._require(name)
        rounded = {name: round(w, 2) for name, w in sorted(weights.items())}
        # PEFT module names may not hold dots: weights go in as whole percents.
        mix_name = "mix_" + "_".join(f"{n}{round(w * 100)}" for n, w in rounded.items())
        if mix_name not in self._mixes:
            ranks = {self.model.peft_config[n].r for n in rounded}
            self.model.add_weighted_adapter(
                adapters=list(rounded), weights=list(rounded.values()), adapter_name=mix_name,
                combination_type="linear" if len(ranks) == 1 else "cat")
            self._mixes[mix_name] = rounded
            while len(self._mixes) > MAX_MIXES:
                oldest = next(iter(self._mixes))
                if oldest == mix_name:
                    break
                self.model.delete_adapter(oldest)
                del self._mixes[oldest]
        return mix_name
