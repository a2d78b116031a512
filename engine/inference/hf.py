"""The transformers + PEFT backend: any HF model, on CUDA (bf16) or CPU (fp32).

Several PEFT adapters are loaded into one model and chosen per request: by name (PEFT
`set_adapter`), as a weighted combination (`add_weighted_adapter` with the exact `cat`
combination, built once per set of weights and cached), or none (`disable_adapter`). On CUDA it
uses flash-attention 2 when the package is installed, otherwise sdpa.

Generation is a plain token loop over the KV cache so that cancellation, stop strings and seeded
sampling behave exactly as in the llama.cpp backend. Knows nothing of the daemon or console.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.adapters import adapter_config, check_shapes, read_adapter
from engine.errors import ModelFormatError, ModelNotFoundError
from engine.inference.base import (
    AdapterChoice,
    GenerationRequest,
    GenerationResult,
    TokenCallback,
    check_fits,
    normalise_choice,
    template_segments,
    tokenize_segments,
)
from engine.inference.streaming import StopScanner
from engine.models import hf_model_dir


def pick_device(device: str) -> str:
    """`auto` -> cuda when available, else cpu."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class HFBackend:
    """transformers + PEFT on one base model, with several adapters loaded at once."""

    name = "hf"

    def __init__(self, model_dir: Path, *, device: str = "auto", n_ctx: int = 2048,
                 system_prompt: str = "", threads: int = 0):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.device = pick_device(device)
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        attention = "sdpa"
        if self.device == "cuda" and importlib.util.find_spec("flash_attn") is not None:
            attention = "flash_attention_2"
        self.model_dir = Path(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.base = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=dtype, attn_implementation=attention).to(self.device).eval()
        self.model: Any = self.base
        self.attention = attention
        self.system_prompt = system_prompt
        self.n_ctx = min(n_ctx, int(getattr(self.base.config, "max_position_embeddings", n_ctx)))
        self._loaded: list[str] = []
        self._active: dict[str, float] = {}
        self._combinations: dict[tuple[tuple[str, float], ...], str] = {}
        eos = self.base.generation_config.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos]
        # transformers 5 renamed past_key_values to cache (argument and output)
        forward_params = inspect.signature(self.base.forward).parameters
        self._cache_name = "cache" if "cache" in forward_params else "past_key_values"
        self._eos = {i for i in eos_ids + [self.tokenizer.eos_token_id] if i is not None}

    @classmethod
    def from_profile(cls, profile: Any) -> HFBackend:
        """The profile's base model (a GGUF base is converted once and cached)."""
        return cls(hf_model_dir(profile.model.base), device=profile.device.device,
                   n_ctx=profile.inference.n_ctx, system_prompt=profile.inference.system_prompt,
                   threads=profile.device.threads)

    # --- prompts -------------------------------------------------------------------------------

    def _messages(self, request: GenerationRequest) -> list[dict[str, Any]]:
        messages = list(request.messages)
        if self.system_prompt and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        if not self.tokenizer.chat_template:
            raise ModelFormatError(f"the tokenizer of {self.model_dir} has no chat template",
                                   hint="send a raw prompt instead")
        return messages

    def _render(self, messages: list[dict[str, Any]]) -> str:
        plain = [{"role": m["role"], "content": m["content"]} for m in messages]
        return str(self.tokenizer.apply_chat_template(plain, tokenize=False,
                                                      add_generation_prompt=True))

    def prompt_text(self, request: GenerationRequest) -> str:
        if request.prompt is not None:
            return request.prompt
        return self._render(self._messages(request))

    def prompt_tokens(self, request: GenerationRequest) -> list[int]:
        """Token ids of the prompt. The template's own markers become special ids; message
        text never does, except the hypertoken segments a message carries (RAG context)."""
        if request.prompt_ids:
            return list(request.prompt_ids)
        if request.prompt is not None:
            return self.tokenize(request.prompt)
        segments = template_segments(self._render, self._messages(request))
        return tokenize_segments(self.tokenize, segments)

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Token ids; with `special`, special-token text (as the template writes it) maps to
        its id; without, text never becomes a special token."""
        return list(self.tokenizer(text, add_special_tokens=False,
                                   split_special_tokens=not special)["input_ids"])

    def detokenize(self, token_ids: list[int]) -> str:
        return str(self.tokenizer.decode(token_ids, skip_special_tokens=True))

    # --- adapters ------------------------------------------------------------------------------

    @property
    def adapters(self) -> list[str]:
        return list(self._loaded)

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load a PEFT adapter dir under `name` (the base weights are shared).

        Raises:
            ModelNotFoundError: no such dir.
            ModelFormatError: it was made for another base model (shapes named).
        """
        from peft import PeftModel

        path = Path(path)
        if not path.is_dir():
            raise ModelNotFoundError(f"adapter dir {path} does not exist",
                                     hint="the hf backend loads PEFT adapter dirs")
        adapter_config(path)
        self._extend_vocabulary_for(path)
        check_shapes(read_adapter(path), self._module_shapes(), base_name=str(self.model_dir))
        if name in self._loaded:
            self.unload_adapter(name)
        if self.model is self.base:
            self.model = PeftModel.from_pretrained(self.base, path, adapter_name=name)
            self.model.eval()
        else:
            self.model.load_adapter(path, adapter_name=name)
        self._loaded.append(name)
        if self._active:
            self._select(self._active)  # loading made the new adapter PEFT's active one

    def _extend_vocabulary_for(self, path: Path) -> None:
        """Give the shared base the rows of an adapter's hypertokens, before PEFT loads it.

        An adapter trained with hypertokens carries its trained rows (trainable tokens or a
        modules_to_save copy) but not the base's resized embedding: the base is resized here,
        each new row the mean of its spelling as in training, and the adapter's rows then apply
        on top. Adapters of one profile share one vocabulary, so this happens once.

        Raises:
            ModelFormatError: the adapter needs more rows than the base was given for an
                adapter already loaded (adapters from different vocabularies).
        """
        from engine.tokenizer import Hypertokenizer, resize_embeddings
        from engine.tokenizer.hypertokenizer import MANIFEST

        if not (path / MANIFEST).is_file():
            return
        hypertokenizer = Hypertokenizer.load(path)
        rows = int(self.base.get_input_embeddings().weight.shape[0])
        if len(hypertokenizer) <= rows:
            if len(hypertokenizer) > len(self.tokenizer):
                self.tokenizer = hypertokenizer.hf
            return
        if self.model is not self.base:
            raise ModelFormatError(
                f"adapter {path} needs a vocabulary of {len(hypertokenizer)} tokens, but the "
                f"adapters already loaded share one of {rows}",
                hint="load adapters trained with the same hypertokens together")
        resize_embeddings(self.base, hypertokenizer)
        self.tokenizer = hypertokenizer.hf

    def _module_shapes(self) -> dict[str, tuple[int, int]]:
        import torch

        shapes = {}
        base = self.base
        for name, module in base.named_modules():
            if isinstance(module, torch.nn.Linear) or hasattr(module, "base_layer"):
                weight = getattr(getattr(module, "base_layer", module), "weight", None)
                if weight is not None and weight.dim() == 2:
                    shapes[name] = (int(weight.shape[0]), int(weight.shape[1]))
        return shapes

    def unload_adapter(self, name: str) -> None:
        if name not in self._loaded:
            return
        if name in self._active:
            self._active = {}
        for key, combined in list(self._combinations.items()):
            if name in dict(key):
                self.model.delete_adapter(combined)
                del self._combinations[key]
        self._loaded.remove(name)
        if self._loaded:
            self.model.delete_adapter(name)
        else:  # the last one: take the LoRA layers out, back to the plain base model
            self.base = self.model.unload()
            self.model = self.base

    def set_active(self, choice: AdapterChoice) -> None:
        """Activate no adapter, one by name, or a weighted combination."""
        self._select(normalise_choice(choice, self.adapters))

    def _select(self, weights: dict[str, float]) -> None:
        self._active = weights
        if not weights:
            return
        if len(weights) == 1 and next(iter(weights.values())) == 1.0:
            self.model.set_adapter(next(iter(weights)))
            return
        key = tuple(sorted(weights.items()))
        if key not in self._combinations:
            combined = f"mix{len(self._combinations)}"
            self.model.add_weighted_adapter(list(weights), list(weights.values()),
                                            adapter_name=combined, combination_type="cat")
            self._combinations[key] = combined
        self.model.set_adapter(self._combinations[key])

    def _adapter_context(self) -> Any:
        if self.model is not self.base and not self._active:
            return self.model.disable_adapter()
        return contextlib.nullcontext()

    # --- generation ----------------------------------------------------------------------------

    def generate(self, request: GenerationRequest, on_token: TokenCallback | None = None
                 ) -> GenerationResult:
        """Stream an answer; stops on EOS, a stop string, max_tokens, the context or cancel.

        Raises:
            ConfigError: invalid sampling settings or an adapter that is not loaded.
            ContextOverflowError: the prompt does not fit the context.
            NotAvailableError: a JSON schema was asked for (only llamacpp constrains output).
        """
        import torch

        request.validate()
        if request.json_schema is not None:
            from engine.errors import NotAvailableError

            raise NotAvailableError("JSON-schema-constrained output needs the llamacpp backend")
        if request.adapter is not None:
            self.set_active(request.adapter)
        started = time.perf_counter()
        tokens = self.prompt_tokens(request)
        check_fits(len(tokens), self.n_ctx)
        budget = min(request.max_tokens, self.n_ctx - len(tokens))
        generator = torch.Generator().manual_seed(request.seed)
        scanner = StopScanner(request.stop)
        produced: list[int] = []
        shown = ""
        pieces: list[str] = []
        finish = "length"
        with torch.inference_mode(), self._adapter_context():
            next_input = torch.tensor([tokens], device=self.device)
            cache = None
            while len(produced) < budget:
                if request.cancelled:
                    finish = "cancelled"
                    break
                output = self.model(input_ids=next_input, use_cache=True, logits_to_keep=1,
                                    **{self._cache_name: cache})
                cache = getattr(output, self._cache_name)
                token = self._sample(output.logits[0, -1].float(), request, generator)
                if token in self._eos:
                    finish = "stop"
                    break
                produced.append(token)
                text = self.detokenize(produced)
                if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for more
                    new = ""
                else:
                    new, shown = text[len(shown):], text
                emitted = scanner.feed(new)
                if emitted:
                    pieces.append(emitted)
                    if on_token is not None:
                        on_token(emitted)
                if scanner.stopped:
                    finish = "stop"
                    break
                next_input = torch.tensor([[token]], device=self.device)
        tail = scanner.flush()
        if tail and finish != "cancelled":
            pieces.append(tail)
            if on_token is not None:
                on_token(tail)
        return GenerationResult(
            text="".join(pieces), tokens=len(produced), prompt_tokens=len(tokens),
            seconds=time.perf_counter() - started, finish_reason=finish,
            extra={"backend": self.name, "adapters": dict(self._active)}, token_ids=produced)

    @staticmethod
    def _sample(logits: Any, request: GenerationRequest, generator: Any) -> int:
        """Greedy at temperature 0; otherwise temperature and top-p, drawn on the CPU so that
        one seed gives one answer on any device."""
        import torch

        # Temperatures so small that logits / t overflows are greedy in all but name.
        if request.temperature < 1e-4:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.cpu().double() / request.temperature, dim=-1)
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < request.top_p
        keep[0] = True  # the likeliest token always stays, however small top_p is
        kept = sorted_probs * keep
        choice = torch.multinomial(kept / kept.sum(), 1, generator=generator)
        return int(order[int(choice)])

    def logits(self, token_ids: list[int], *, all_positions: bool = False) -> np.ndarray:
        """Logits after `token_ids` with the active adapters: (vocab,) or (len, vocab)."""
        import torch

        check_fits(len(token_ids), self.n_ctx + 1)
        with torch.inference_mode(), self._adapter_context():
            out = self.model(input_ids=torch.tensor([token_ids], device=self.device)).logits[0]
        out = out.float().cpu().numpy()
        return out if all_positions else out[-1]

    def close(self) -> None:
        self.model = self.base = None
        import gc

        gc.collect()
