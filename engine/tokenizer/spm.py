"""SentencePiece: training a model with the hypertokens declared, and converting it for `tokenizers`.

Training declares control hypertokens (`<|...|>`) as SentencePiece *control symbols*, which it
never produces from text, and text tokens (fractal symbols, mined couplings) as *user-defined
symbols*, which it always keeps whole. Byte fallback is on, so no input is ever unknown, and the
normaliser is the identity with no dummy prefix and no whitespace folding, so decoding gives the
input back. One character cannot survive: U+2581 (`▁`) is SentencePiece's own space symbol and
decodes as a space; the edge-case suite lists it as normalised by design.

The conversion builds a `tokenizers` Unigram model from the trained pieces, with the same ids.
Control, unknown and byte pieces get a score no path through ordinary pieces can lose to, so
their literal spellings in text ("<|scene|>", "<0x41>") are spelled out instead of matched, as in
SentencePiece itself. This module knows nothing of profiles or models.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from engine.errors import DataError
from engine.tokenizer.hypertokens import is_control

UNREACHABLE_SCORE = -1e6  # below any sum of ordinary piece scores in a sentence
BYTE_CHARS = "<>0123456789ABCDEFx"  # so a literal "<0x41>" can always be spelled out
MAX_SENTENCE_CHARS = 4000  # SentencePiece skips longer training sentences; we cut them instead


def _training_sentences(texts: Iterable[str]) -> list[str]:
    sentences = []
    for text in texts:
        for line in text.splitlines(keepends=False):
            for start in range(0, len(line), MAX_SENTENCE_CHARS):
                chunk = line[start:start + MAX_SENTENCE_CHARS]
                if chunk.strip():
                    sentences.append(chunk)
    return sentences


def train_sentencepiece(texts: Iterable[str], output: str | Path, *, vocab_size: int,
                        hypertokens: Sequence[str], model_type: str = "unigram") -> Path:
    """Train a SentencePiece model on `texts`, declaring the hypertokens.

    Args:
        texts: the training texts (split into lines for SentencePiece).
        output: the `.model` file to write.
        vocab_size: the vocabulary size, hypertokens and byte pieces included.
        hypertokens: control hypertokens become control symbols, others user-defined symbols.
        model_type: `unigram` (the default; converted exactly) or `bpe`.

    Raises:
        DataError: the corpus is too small for the vocabulary, or empty.
    """
    import sentencepiece as spm

    sentences = _training_sentences(texts)
    if not sentences:
        raise DataError("no text to train a SentencePiece model on")
    control = [t for t in hypertokens if is_control(t)]
    user_defined = [t for t in hypertokens if not is_control(t)]
    required = sorted(set(BYTE_CHARS + "".join(control)))
    buffer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=buffer, vocab_size=vocab_size,
            model_type=model_type, byte_fallback=True, character_coverage=0.9995,
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            add_dummy_prefix=False, split_digits=True, allow_whitespace_only_pieces=True,
            control_symbols=control, user_defined_symbols=user_defined,
            required_chars="".join(required), unk_id=0, bos_id=1, eos_id=2, pad_id=3,
            hard_vocab_limit=False, max_sentence_length=MAX_SENTENCE_CHARS * 4,
            num_threads=2, minloglevel=2)
    except RuntimeError as exc:
        raise DataError(f"SentencePiece could not train on this corpus: {exc}",
                        hint="use a smaller --vocab or more text") from exc
    target = Path(output)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(buffer.getvalue())
    return target


def backend_from_sentencepiece(model_file: str | Path) -> Any:
    """A `tokenizers.Tokenizer` with the same pieces and ids as a SentencePiece model."""
    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    processor = spm.SentencePieceProcessor(model_file=str(model_file))
    vocab: list[tuple[str, float]] = []
    specials: list[str] = []
    user_defined: list[str] = []
    for piece_id in range(processor.get_piece_size()):
        piece = processor.id_to_piece(piece_id)
        score = processor.get_score(piece_id)
        if processor.is_control(piece_id) or processor.is_unknown(piece_id):
            specials.append(piece)
            score = UNREACHABLE_SCORE
        elif processor.is_byte(piece_id):
            score = UNREACHABLE_SCORE
        elif score == 0.0 and piece_id > 3 and not processor.is_unused(piece_id):
            user_defined.append(piece)  # user-defined symbols have score 0 in SentencePiece
        vocab.append((piece, score))
    backend = Tokenizer(models.Unigram(vocab, unk_id=processor.unk_id(), byte_fallback=True))
    # Spaces become "▁" and split words, as SentencePiece's split_by_whitespace does; no prefix.
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                         decoders.Fuse()])
    backend.add_special_tokens([AddedToken(p, special=True, normalized=False) for p in specials])
    backend.add_tokens([AddedToken(p, special=False, normalized=False) for p in user_defined])
    return backend


def hf_from_sentencepiece(model_file: str | Path) -> Any:
    """A transformers fast tokenizer over `backend_from_sentencepiece(model_file)`."""
    from transformers import PreTrainedTokenizerFast

    path = Path(model_file)
    if not path.is_file():
        raise DataError(f"SentencePiece model {path} does not exist",
                        hint="train one with `hyperlex tokenizer train --kind sentencepiece`")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend_from_sentencepiece(path), unk_token="<unk>", bos_token="<s>",
        eos_token="</s>", pad_token="<pad>", clean_up_tokenization_spaces=False)
