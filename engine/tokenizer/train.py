"""Training a tokenizer from scratch with the hypertokens declared: SentencePiece or byte-level BPE.

The result is a saved `Hypertokenizer` directory (`hyperlex-tokenizer.json` + HF files, and for
SentencePiece the `.model` too) that a profile names in `tokenizer.base`. Both kinds can encode
any input: SentencePiece through byte fallback, BPE because its alphabet is the 256 bytes.
This module knows nothing of models or profiles beyond the hypertoken list it is given.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from engine.errors import DataError
from engine.tokenizer.hypertokenizer import Hypertokenizer
from engine.tokenizer.hypertokens import is_control
from engine.tokenizer.spm import hf_from_sentencepiece, train_sentencepiece

KINDS = ("sentencepiece", "bpe")
SPM_FILE = "sentencepiece.model"
BPE_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _train_bpe(texts: Sequence[str], vocab_size: int, hypertokens: Sequence[str]) -> object:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    backend.decoder = decoders.ByteLevel()
    control = [t for t in hypertokens if is_control(t)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=BPE_SPECIALS + control, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer=trainer)
    backend.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t in hypertokens if not is_control(t)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        bos_token=None, unk_token=None, clean_up_tokenization_spaces=False)


def train_tokenizer(texts: Sequence[str], output: str | Path, *, kind: str, vocab_size: int,
                    hypertokens: Sequence[str], special: bool = True) -> Hypertokenizer:
    """Train a tokenizer of `kind` on `texts` and save it as a hypertokenizer in `output`.

    Args:
        texts: the training texts.
        output: the directory to write (created; files in it are replaced).
        kind: `sentencepiece` or `bpe`.
        vocab_size: the vocabulary size, hypertokens included.
        hypertokens: the tokens to declare (see `hypertokens_for`).
        special: whether control hypertokens are special tokens in the saved HF tokenizer.

    Returns:
        The trained `Hypertokenizer` (already saved).

    Raises:
        DataError: unknown kind, or a corpus the trainer refuses.
    """
    if kind not in KINDS:
        raise DataError(f"unknown tokenizer kind {kind!r}", hint=f"use one of {', '.join(KINDS)}")
    if not texts:
        raise DataError("no texts to train a tokenizer on")
    target = Path(output)
    target.mkdir(parents=True, exist_ok=True)
    if kind == "sentencepiece":
        model_file = train_sentencepiece(texts, target / SPM_FILE, vocab_size=vocab_size,
                                         hypertokens=hypertokens)
        hf = hf_from_sentencepiece(model_file)
    else:
        stale = target / SPM_FILE
        if stale.exists():
            stale.unlink()
        hf = _train_bpe(texts, vocab_size, hypertokens)
    tokenizer = Hypertokenizer.from_base(hf, hypertokens, special=special, kind=kind,
                                         base=str(target))
    tokenizer.save(target)
    return tokenizer


def copy_tokenizer(source: str | Path, target: str | Path) -> Path:
    """Copy a saved tokenizer directory (so it travels with an adapter or a run)."""
    shutil.copytree(source, target, dirs_exist_ok=True)
    return Path(target)
