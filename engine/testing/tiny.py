"""Tiny random causal LMs (Llama, Qwen2, Mistral) with a small trained tokenizer, built in seconds.

They are real transformers models with real tokenizers, only small: the fast test suite trains,
exports and runs them. The tokenizer is a byte-level BPE trained on text this module generates,
in English and Russian, so nothing is ever unknown. Built once per cache dir, atomically.

`SCHEME` makes `tiny:llama`, `tiny:qwen2` and `tiny:mistral` model specs: pyproject.toml declares
it under the `hyperlex.model_schemes` entry points, which engine.models loads when a spec names
`tiny`, so engine.models never imports this module and a job process finds tiny models too.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

from engine.models import ModelScheme
from engine.paths import dirs

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 512
SHAPES = {  # small enough for seconds on CPU, big enough to have every module LoRA targets
    "llama": {"tie_word_embeddings": True},
    "qwen2": {"tie_word_embeddings": False},
    "mistral": {"tie_word_embeddings": False, "sliding_window": None},
}

_EN = ("the river remembers every stone it passed and the night keeps its promise "
       "because the argument holds therefore the conclusion follows if all men are mortal "
       "she wept at the door of the old house where the hero returns to the mother "
       "the function of the key is to open and the tool serves the hand").split()
_RU = ("река помнит каждый камень и ночь хранит своё обещание потому что довод верен "
       "следовательно вывод следует она плакала у двери старого дома где герой "
       "возвращается к матери ёлка йод щит функция ключа открывать").split()


def training_text(lines: int = 2000, seed: int = 0) -> list[str]:
    """Generated sentences in English and Russian, with digits and punctuation, for the BPE."""
    rng = random.Random(seed)
    out = []
    for i in range(lines):
        words = _EN if i % 3 else _RU
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(4, 14)))
        out.append(f"{sentence.capitalize()}{rng.choice('.!?,;:')} {rng.randint(0, 999)}")
    return out


def build_tokenizer(directory: Path) -> object:
    """Train a byte-level BPE tokenizer and save it as an HF fast tokenizer in `directory`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(training_text(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        bos_token=None, unk_token=None, clean_up_tokenization_spaces=False)
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(directory)
    return fast


def build_tiny_model(arch: str = "llama", directory: Path | None = None, seed: int = 0) -> Path:
    """Build (once) a tiny random model of `arch` with its tokenizer, and return its HF dir.

    Args:
        arch: `llama`, `qwen2` or `mistral`.
        directory: where to save; defaults to `<cache>/tiny/<arch>`, reused when present.
        seed: torch seed for the random weights.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if arch not in SHAPES:
        raise ValueError(f"unknown tiny architecture {arch!r}; use one of {', '.join(SHAPES)}")
    target = directory or tiny_location(arch)
    if (target / "config.json").is_file() and (target / "tokenizer.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        tokenizer = build_tokenizer(staging)
        config = AutoConfig.for_model(
            arch, vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,  # type: ignore[arg-type]
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=1024, rms_norm_eps=1e-6,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,  # type: ignore[attr-defined]
            bos_token_id=None, **SHAPES[arch])
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
        model.generation_config.pad_token_id = tokenizer.pad_token_id  # type: ignore[attr-defined]
        model.save_pretrained(staging, safe_serialization=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def tiny_location(arch: str) -> Path:
    """Where `build_tiny_model(arch)` puts its model (nothing is built)."""
    return dirs().cache / "tiny" / arch


# The `tiny` model scheme (see the module docstring).
SCHEME = ModelScheme(names=tuple(SHAPES), location=tiny_location, build=build_tiny_model)
