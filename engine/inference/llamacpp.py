"""The llama.cpp backend: a GGUF model on CPU (or CUDA when llama.cpp was built with it).

- Chat messages go through the GGUF's own chat template (the one the model was trained with).
- LoRA adapters are loaded once with the low-level `llama_adapter_lora_init` and switched per
  request with `llama_set_adapters_lora` (several at once, each with a scale); the base weights
  are never reloaded. llama-cpp-python's `Llama(lora_path=...)` can only fix one at load time.
- Adapters trained with hypertokens (trained token rows, an extended tokenizer) run on the
  extended base (engine.export.extended_base): the base GGUF with their tokens appended, built
  once and cached. Loading the first such adapter reloads the model once onto it; base chat then
  runs there with no adapter active, and adapters with the same vocabulary share it. Their
  trained rows travel in the adapter's GGUF LoRA, exactly (engine.export.gguf_lora).
- The KV cache is reused across chat turns: llama-cpp-python keeps the evaluated tokens and only
  evaluates the new suffix. The cached keys and values belong to one adapter choice, so a switch
  sets the cache aside for that choice (the few most recent choices keep theirs) and picks up
  the new choice's own; going back to a prompt an adapter has already read costs one token.
- JSON-schema-constrained output goes through llama.cpp grammars.

The GGUF header is checked before llama.cpp sees the file, since llama.cpp may abort the whole
interpreter on a corrupt file instead of raising. Knows nothing of the daemon or the console.
"""

from __future__ import annotations

import codecs
import ctypes
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engine.adapters import check_gguf_lora
from engine.errors import MissingDependencyError, ModelFormatError, ModelNotFoundError
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
from engine.machine import machine_is_busy, usable_physical_cores
from engine.models import file_sha256, gguf_path, read_gguf_info
from engine.paths import dirs

# Adapter choices whose KV cache is kept aside while another choice runs. Each holds the keys
# and values of the tokens it read (SmolLM2: 23 KB a token, 47 MB for a full 2048 context).
CACHED_CHOICES = 4
ROW_LORA_FORMAT = "rows/1"  # part of the cache key of row-carrying GGUF LoRAs


def import_llama_cpp() -> Any:
    """The llama_cpp module, or an error that says how to install it."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise MissingDependencyError(
            "llama-cpp-python", "the llamacpp backend",
            install="pip install llama-cpp-python diskcache   (builds llama.cpp, ~5 min on 2 "
                    "cores; ./install.sh does this)") from exc
    return llama_cpp


def chat_threads(cores: int, busy: bool) -> int:
    """The threads llama.cpp decodes with, given the physical cores and whether a job (a
    training job above all) runs beside it.

    Idle: every physical core (SmolLM2 Q4_1 on an idle 2-core Xeon: 94.5 tokens/s on 2
    threads, 58.7 on 1; a hyperthread sibling adds nothing to a decode bound by memory).
    Beside a job, or other work that keeps half the CPUs running: a quarter of them, at least
    one. llama.cpp's workers wait for each other at every operation of a token, spinning, so
    a pool as wide as the machine fights the other work for every core: on a 2-core EPYC
    beside a tiny training job, 2 threads decoded 2.5 tokens/s and 1 thread 26.8, and the job
    itself ran 743 against 965 tokens/s (bench/inference.py part g).
    """
    cores = max(1, cores)
    return max(1, cores // 4) if busy else cores


class LlamaCppBackend:
    """llama-cpp-python on one GGUF file, with hot-swapped LoRA adapters."""

    name = "llamacpp"
    # Whether a job runs now, asked before each generation and every `FIT_EVERY` tokens by
    # whoever knows (the daemon sets it); None: only other work on the machine counts.
    busy: Callable[[], bool] | None = None
    FIT_EVERY = 16

    def __init__(self, model_file: Path, *, n_ctx: int = 2048, threads: int = 0, seed: int = 0,
                 system_prompt: str = "",
                 progress: Callable[[str, int, int], None] | None = None):
        """Load a GGUF model.

        Args:
            model_file: the base GGUF; adapters are exported against it.
            n_ctx: the context window.
            threads: CPU threads; 0 to follow the load (`chat_threads`: every physical core
                when no job runs, fewer while one does).
            seed: the sampling seed.
            system_prompt: put before chats that have no system message.
            progress: called with (stage, done, total) while an extended base is built.
        """
        self._llama_cpp = import_llama_cpp()
        read_gguf_info(model_file)
        self.base_file = Path(model_file)
        self.model_file = self.base_file  # what is loaded: the base, or its extended base
        self.system_prompt = system_prompt
        self.n_ctx = n_ctx
        self.progress = progress
        self._seed = seed
        self._closed = False
        # 0: by load (see chat_threads and fit_threads). A fixed count is kept as given: on a
        # machine shared with work the daemon does not see, 1 keeps llama.cpp's spinning pool
        # from collapsing (measured 27 tok/s on 1 thread vs 1-6 on 2 for SmolLM2 on a busy
        # 2-core machine).
        self._fixed_threads = threads
        self._machine_busy = False  # other work seen before the current generation
        self._threads = threads or chat_threads(usable_physical_cores(), busy=False)
        self._adapters: dict[str, Any] = {}  # name -> llama_adapter_lora_p
        self._adapter_files: dict[str, Path] = {}  # name -> its GGUF LoRA (to reload it)
        self._vocabularies: dict[str, str] = {}  # name -> key of the extended base it needs
        self._active: dict[str, float] = {}
        # adapter choice -> (token ids, KV bytes of sequence 0, their size)
        self._kv_cache: OrderedDict[tuple[tuple[str, float], ...], tuple[Any, Any, int]] = \
            OrderedDict()
        self._open(self.base_file)

    def _open(self, model_file: Path) -> None:
        try:
            self.llama = self._llama_cpp.Llama(
                model_path=str(model_file), n_ctx=self.n_ctx, seed=self._seed, verbose=False,
                n_threads=self._threads, n_threads_batch=self._threads)
        except ValueError as exc:
            raise ModelFormatError(f"llama.cpp could not load {model_file}: {exc}") from exc
        self.model_file = Path(model_file)
        self._formatter = self._chat_formatter()

    @property
    def threads(self) -> int:
        """The threads the next token is decoded with."""
        return self._threads

    def fit_threads(self, *, look_at_machine: bool = False) -> int:
        """Decode with the threads the load allows now; a fixed count stays. The load is a
        job (`busy`), or other work on the machine, which is looked at only when asked
        (before a generation: once decoding, our own threads would count) and then holds for
        that generation. Cheap: llama.cpp reads its thread count at each decode. Returns the
        count in use."""
        if self._fixed_threads:
            return self._threads
        if look_at_machine:
            self._machine_busy = machine_is_busy()
        busy = self._machine_busy or (self.busy is not None and bool(self.busy()))
        self._use_threads(chat_threads(usable_physical_cores(), busy))
        return self._threads

    def set_threads(self, threads: int) -> None:
        """Decode with `threads` from the next token on, whatever the load; 0: follow the
        load again (`fit_threads`)."""
        self._fixed_threads = max(0, int(threads))
        if self._fixed_threads:
            self._use_threads(self._fixed_threads)
        else:
            self.fit_threads(look_at_machine=True)

    def _use_threads(self, threads: int) -> None:
        if threads != self._threads:
            self._llama_cpp.llama_set_n_threads(self.llama.ctx, threads, threads)
            self._threads = threads

    @classmethod
    def from_profile(cls, profile: Any) -> LlamaCppBackend:
        """Load the profile's GGUF (`model.gguf`, or `model.base` when that is a GGUF)."""
        spec = profile.model.gguf or profile.model.base
        return cls(gguf_path(spec), n_ctx=profile.inference.n_ctx,
                   threads=profile.device.threads, seed=profile.inference.seed,
                   system_prompt=profile.inference.system_prompt)

    # --- prompts -------------------------------------------------------------------------------

    def _chat_formatter(self) -> Any:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self.llama.metadata.get("tokenizer.chat_template")
        if not template:
            return None
        model = self.llama._model

        def text_of(token: int) -> str:
            return model.token_get_text(token) if token != -1 else ""

        return Jinja2ChatFormatter(template=template, eos_token=text_of(self.llama.token_eos()),
                                   bos_token=text_of(self.llama.token_bos()))

    def _messages(self, request: GenerationRequest) -> list[dict[str, str]]:
        messages = list(request.messages)
        if self.system_prompt and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages

    def prompt_text(self, request: GenerationRequest) -> str:
        """The prompt as text: the raw prompt, or the messages through the chat template."""
        if request.prompt is not None:
            return request.prompt
        if self._formatter is None:
            raise ModelFormatError(f"{self.model_file.name} has no chat template",
                                   hint="send a raw prompt, or use a GGUF with "
                                        "tokenizer.chat_template")
        return str(self._formatter(messages=self._messages(request)).prompt)

    def prompt_tokens(self, request: GenerationRequest) -> list[int]:
        """Token ids of the prompt. The template's own markers become special ids; message
        text never does, except the hypertoken segments a message carries (RAG context)."""
        if request.prompt_ids:
            return list(request.prompt_ids)
        if request.prompt is not None:
            return self.tokenize(request.prompt, add_bos=True)
        if self._formatter is None:
            self.prompt_text(request)  # raises: no chat template
        segments = template_segments(lambda messages: str(self._formatter(
            messages=messages).prompt), self._messages(request))
        return tokenize_segments(self.tokenize, segments, add_bos=True)

    def tokenize(self, text: str, *, special: bool = False, add_bos: bool = False) -> list[int]:
        """Token ids of `text` (`add_bos`: add BOS when the model's vocabulary asks for it)."""
        return list(self.llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special))

    def detokenize(self, token_ids: list[int]) -> str:
        return bytes(self.llama.detokenize(token_ids)).decode("utf-8", "replace")

    # --- adapters ------------------------------------------------------------------------------

    @property
    def adapters(self) -> list[str]:
        return list(self._adapters)

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load a LoRA once: a GGUF LoRA file, or a PEFT dir (exported to GGUF and cached).

        A PEFT dir trained with hypertokens moves the model onto the extended base first (built
        and cached on first use; a reload only when another model is loaded).

        Raises:
            ModelNotFoundError: no such file or dir.
            ModelFormatError: the adapter does not fit this model (shapes named), is corrupt, or
                needs another vocabulary than the adapters already loaded.
        """
        path = Path(path)
        if not path.exists():
            raise ModelNotFoundError(f"adapter {path} does not exist")
        if path.is_file():
            gguf_file, model_file, vocabulary = path, self.model_file, None
        else:
            extended = self._extended_base_for(name, path)
            model_file = extended.path if extended is not None else self.model_file
            vocabulary = extended.key if extended is not None else None
            gguf_file = self._gguf_lora_for(path, extended)
        check_gguf_lora(gguf_file, model_file)
        if name in self._adapters:
            self.unload_adapter(name)
        if model_file != self.model_file:
            self._reopen(model_file)
        self._adapters[name] = self._init_adapter(gguf_file)
        self._adapter_files[name] = gguf_file
        if vocabulary is not None:
            self._vocabularies[name] = vocabulary

    def _init_adapter(self, gguf_file: Path) -> Any:
        handle = self._llama_cpp.llama_adapter_lora_init(self.llama._model.model,
                                                         str(gguf_file).encode("utf-8"))
        if not handle:
            raise ModelFormatError(f"llama.cpp could not load the LoRA {gguf_file} onto "
                                   f"{self.model_file.name}")
        return handle

    def _extended_base_for(self, name: str, adapter_dir: Path) -> Any:
        """The extended base a PEFT dir needs, or None when it runs on the base as it is.

        Raises:
            ModelFormatError: other loaded adapters need another vocabulary.
        """
        from engine.export.extended_base import extended_base_for

        extended = extended_base_for(adapter_dir, self.base_file, progress=self.progress)
        if extended is None:
            return None
        others = sorted(other for other, key in self._vocabularies.items()
                        if other != name and key != extended.key)
        if others:
            raise ModelFormatError(
                f"adapter {adapter_dir} was trained with another vocabulary "
                f"({extended.n_vocab} tokens, {len(extended.added)} added) than the loaded "
                f"adapters {', '.join(others)}",
                hint="load adapters trained with the same hypertokens together, or unload "
                     "the others first")
        return extended

    def _reopen(self, model_file: Path) -> None:
        """Load another GGUF (the extended base) and re-attach every loaded adapter to it.

        Raises:
            ModelFormatError: a loaded adapter does not fit the new model (nothing changes).
        """
        for file in self._adapter_files.values():
            check_gguf_lora(file, model_file)
        active = self._active
        for handle in self._adapters.values():
            self._llama_cpp.llama_adapter_lora_free(handle)
        self._adapters = {}
        self._kv_cache.clear()
        self._active = {}
        self.llama.close()
        self._open(model_file)
        for name, file in self._adapter_files.items():
            self._adapters[name] = self._init_adapter(file)
        self._apply(active)

    def _gguf_lora_for(self, adapter_dir: Path, extended: Any = None) -> Path:
        """The GGUF LoRA of a PEFT dir, exported once into the cache: against the base, or
        with its token rows against the extended base it needs."""
        from engine.export.gguf_lora import export_gguf_lora

        digest = hashlib.sha256()
        for file in sorted(adapter_dir.glob("adapter_*")):
            digest.update(file.name.encode())
            digest.update(file_sha256(file).encode())
        if extended is not None:
            digest.update(f"{ROW_LORA_FORMAT}:{extended.key}".encode())
        else:
            digest.update(file_sha256(self.base_file).encode())
        target = dirs().cache / "gguf-lora" / f"{digest.hexdigest()[:16]}.gguf"
        if not target.is_file():
            export_gguf_lora(adapter_dir, extended.path if extended is not None
                             else self.base_file, target)
        return target

    def unload_adapter(self, name: str) -> None:
        handle = self._adapters.pop(name, None)
        if handle is None:
            return
        if name in self._active:
            self._apply({k: v for k, v in self._active.items() if k != name})
        for choice in [c for c in self._kv_cache if name in dict(c)]:
            del self._kv_cache[choice]
        self._adapter_files.pop(name, None)
        self._vocabularies.pop(name, None)
        self._llama_cpp.llama_adapter_lora_free(handle)

    def set_active(self, choice: AdapterChoice) -> None:
        """Activate no adapter, one, or several with scales; the base is never reloaded."""
        self._apply(normalise_choice(choice, self.adapters))

    def _apply(self, weights: dict[str, float]) -> None:
        if weights == self._active:
            return  # the same choice: its KV cache stays as it is
        llama_cpp = self._llama_cpp
        count = len(weights)
        handles = (llama_cpp.llama_adapter_lora_p_ctypes * max(count, 1))(
            *[self._adapters[name] for name in weights])
        scales = (ctypes.c_float * max(count, 1))(*weights.values())
        if llama_cpp.llama_set_adapters_lora(self.llama._ctx.ctx, handles if count else None,
                                             count, scales if count else None):
            raise ModelFormatError(f"llama.cpp refused the adapters {list(weights)}")
        self._set_cache_aside()
        self._active = dict(weights)
        self._take_cache_back()

    def _set_cache_aside(self) -> None:
        """Keep the active choice's evaluated tokens and their keys/values for a later switch."""
        llama, llama_cpp = self.llama, self._llama_cpp
        count = int(llama.n_tokens)
        if count == 0:
            return
        size = int(llama_cpp.llama_state_seq_get_size(llama._ctx.ctx, 0))
        buffer = (ctypes.c_uint8 * size)()
        written = int(llama_cpp.llama_state_seq_get_data(llama._ctx.ctx, buffer, size, 0))
        if written == 0:
            return
        choice = tuple(sorted(self._active.items()))
        self._kv_cache[choice] = (llama.input_ids[:count].copy(), buffer, written)
        self._kv_cache.move_to_end(choice)
        while len(self._kv_cache) > CACHED_CHOICES:
            self._kv_cache.popitem(last=False)

    def _take_cache_back(self) -> None:
        """Restore the new choice's own KV cache, or start it empty."""
        llama, llama_cpp = self.llama, self._llama_cpp
        kept = self._kv_cache.pop(tuple(sorted(self._active.items())), None)
        if kept is not None:
            tokens, buffer, size = kept
            if int(llama_cpp.llama_state_seq_set_data(llama._ctx.ctx, buffer, size, 0)) == size:
                llama.input_ids[:len(tokens)] = tokens
                llama.n_tokens = len(tokens)
                llama._requires_eval = True  # restored keys: the next decode refreshes logits
                return
        llama.reset()  # the cached keys/values were computed with the other adapters

    # --- generation ----------------------------------------------------------------------------

    def generate(self, request: GenerationRequest, on_token: TokenCallback | None = None
                 ) -> GenerationResult:
        """Stream an answer; stops on EOS, a stop string, max_tokens, the context or cancel.

        Raises:
            ConfigError: invalid sampling settings or an adapter that is not loaded.
            ContextOverflowError: the prompt does not fit the context.
        """
        request.validate()
        if request.adapter is not None:
            self.set_active(request.adapter)
        started = time.perf_counter()
        tokens = self.prompt_tokens(request)
        check_fits(len(tokens), self.n_ctx)
        budget = min(request.max_tokens, self.n_ctx - len(tokens))
        grammar = None
        if request.json_schema is not None:
            from llama_cpp.llama_grammar import LlamaGrammar

            grammar = LlamaGrammar.from_json_schema(json.dumps(request.json_schema),
                                                    verbose=False)
        self.llama.set_seed(request.seed)
        vocab = self.llama._model.vocab
        is_eog = self._llama_cpp.llama_vocab_is_eog
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        scanner = StopScanner(request.stop)
        pieces: list[str] = []
        produced = 0
        token_ids: list[int] = []
        finish = "length"
        self.fit_threads(look_at_machine=True)  # before the prompt, the widest decode
        for token in self.llama.generate(
                tokens, temp=request.temperature, top_p=request.top_p, top_k=0, min_p=0.0,
                repeat_penalty=1.0, grammar=grammar):
            if produced % self.FIT_EVERY == self.FIT_EVERY - 1:
                self.fit_threads()  # a job that started or ended mid-answer
            if request.cancelled:
                finish = "cancelled"
                break
            if is_eog(vocab, token):
                finish = "stop"
                break
            produced += 1
            token_ids.append(int(token))
            text = scanner.feed(decoder.decode(self.llama.detokenize([token])))
            if text:
                pieces.append(text)
                if on_token is not None:
                    on_token(text)
            if scanner.stopped:
                finish = "stop"
                break
            if produced >= budget:
                break
        tail = scanner.flush() + decoder.decode(b"", final=True)
        if tail and finish != "cancelled":
            pieces.append(tail)
            if on_token is not None:
                on_token(tail)
        return GenerationResult(
            text="".join(pieces), tokens=produced, prompt_tokens=len(tokens),
            seconds=time.perf_counter() - started, finish_reason=finish,
            extra={"backend": self.name, "adapters": dict(self._active)}, token_ids=token_ids)

    def logits(self, token_ids: list[int], *, all_positions: bool = False) -> np.ndarray:
        """Logits after `token_ids` with the active adapters: (vocab,) or (len, vocab)."""
        check_fits(len(token_ids), self.n_ctx + 1)
        llama_cpp = self._llama_cpp
        self.llama.reset()
        n_vocab = self.llama.n_vocab()
        if not all_positions:
            self.llama.eval(token_ids)
            row = llama_cpp.llama_get_logits_ith(self.llama._ctx.ctx, -1)
            return np.ctypeslib.as_array(row, shape=(n_vocab,)).copy()
        rows = []
        batch_size = self.llama.n_batch
        self.llama._ctx.kv_cache_seq_rm(-1, 0, -1)
        for start in range(0, len(token_ids), batch_size):
            chunk = token_ids[start:start + batch_size]
            self.llama._batch.set_batch(batch=chunk, n_past=start, logits_all=True)
            self.llama._ctx.decode(self.llama._batch)
            for index in range(len(chunk)):
                row = llama_cpp.llama_get_logits_ith(self.llama._ctx.ctx, index)
                rows.append(np.ctypeslib.as_array(row, shape=(n_vocab,)).copy())
        self.llama.reset()
        return np.stack(rows)

    def close(self) -> None:
        """Free the adapters and the model; later calls raise instead of crashing llama.cpp."""
        if self._closed:
            return
        for name in list(self._adapters):
            self.unload_adapter(name)
        self.llama.close()
        self._closed = True

    @property
    def llama(self) -> Any:
        if self._closed:
            from engine.errors import NotAvailableError

            raise NotAvailableError(f"the llama.cpp model {self.model_file.name} was closed")
        return self._llama

    @llama.setter
    def llama(self, value: Any) -> None:
        self._llama = value
