"""The base GGUF with an adapter's added tokens, so adapters with trained token rows run on it.

An adapter trained with hypertokens needs embedding rows for ids its base GGUF does not have.
The extended base is that GGUF with the tokens appended to its vocabulary (control tokens for the
`<|...|>` hypertokens and other special tokens, so llama.cpp never makes them from plain text;
user-defined for the rest) and one new row each, the mean of its spelling's rows as in training
(engine.tokenizer.embeddings). Every other byte is the base's: the old rows of `token_embd` keep
their quantised bytes too, since quantisation blocks never straddle rows; only the new rows are
quantised (or the tensor is widened to float32 when gguf-py cannot quantise its type). Adapters
carry their trained rows exactly, as deltas on top of these rows (engine.export.gguf_lora).

When the base ties its output projection to `token_embd` (no `output.weight`, as in SmolLM2), the
extended base carries an explicit `output.weight`, a copy of `token_embd`. llama.cpp looks LoRA
weights up by tensor name, and a tied output *is* the tensor named `token_embd.weight`: a LoRA on
the token rows would also be applied to the output matmul, in the wrong layout, and ggml aborts.
The copy is recorded (`hyperlex.extended_base.tied_output`) so row exports know the output rows
follow the input rows, as PEFT's tied trainable tokens do.

Built once per (base GGUF sha256, added tokens) under `<cache>/extended-base/`, through a temp
file and a rename, by copying the base's bytes (engine.export.gguf_raw): 2 s for SmolLM2 where a
round trip through gguf-py's reader and writer took 12 s. Knows nothing of backends or PEFT.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ModelFormatError
from engine.gguf.base import TIED_OUTPUT_KEY  # defined with the reader; written here
from engine.gguf.layout import read_tensors
from engine.models import file_sha256
from engine.paths import dirs

# stage, done, total: called as the build moves on (a build takes seconds; a cache hit none)
Progress = Callable[[str, int, int], None]
FORMAT = "extended-base/1"  # part of the cache key: bump it when the file layout changes
BASE_SHA_KEY = "hyperlex.extended_base.base_sha256"
ADDED_KEY = "hyperlex.extended_base.added_tokens"


@dataclass(frozen=True)
class AddedToken:
    """One token the extended base appends: its id, its text and whether it is a control token."""

    id: int
    text: str
    control: bool


class AddedVocabulary:
    """The tokens an adapter's tokenizer adds past a base vocabulary, and how the base spells
    each (the rows its embedding starts from).

    Read from a training dir's manifest alone, the tokenizer itself is loaded only when an
    extended base has to be built: finding a cached one takes milliseconds, not the ~0.6 s a
    tokenizer load takes for SmolLM2.
    """

    def __init__(self, added: list[AddedToken], load: Callable[[], Any]):
        self.added = added
        self._load = load
        self._hypertokenizer: Any = None

    def spelling_ids(self, text: str) -> list[int]:
        if self._hypertokenizer is None:
            self._hypertokenizer = self._load()
        return list(self._hypertokenizer.spelling_ids(text))

    @classmethod
    def of(cls, hypertokenizer: Any, base_vocab: int) -> AddedVocabulary:
        """The tokens of a `Hypertokenizer` past a base vocabulary of `base_vocab` ids."""
        from engine.tokenizer import is_control

        hf = hypertokenizer.hf
        special = set(hf.all_special_ids) | {index for index, added in
                                             hf.added_tokens_decoder.items() if added.special}
        ids = sorted(set(hypertokenizer.new_token_ids) | set(range(base_vocab, len(hf))))
        added = []
        for token_id in ids:
            text = str(hf.convert_ids_to_tokens(token_id))
            added.append(AddedToken(id=token_id, text=text,
                                    control=is_control(text) or token_id in special))
        return cls(added, lambda: hypertokenizer)

    @classmethod
    def from_adapter(cls, adapter_dir: Path, base_vocab: int) -> AddedVocabulary | None:
        """The tokens an adapter dir adds, or None when it adds none.

        A dir saved by training holds the hypertokenizer and its manifest; a dir that only
        holds an HF tokenizer with tokens past `base_vocab` is read as a base plus those tokens.
        """
        from engine.tokenizer import Hypertokenizer, is_control
        from engine.tokenizer.hypertokenizer import MANIFEST

        adapter_dir = Path(adapter_dir)
        manifest_file = adapter_dir / MANIFEST
        if manifest_file.is_file():
            manifest = json.loads(manifest_file.read_text())
            if int(manifest.get("base_vocab_size", -1)) == base_vocab and "ids" in manifest:
                ids = {token: int(index) for token, index in manifest["ids"].items()}
                added = sorted((AddedToken(ids[t], t, is_control(t))
                                for t in manifest["hypertokens"] if ids[t] >= base_vocab),
                               key=lambda token: token.id)
                return cls(added, lambda: Hypertokenizer.load(adapter_dir)) if added else None
            vocabulary = cls.of(Hypertokenizer.load(adapter_dir), base_vocab)
        elif (adapter_dir / "tokenizer.json").is_file() or \
                (adapter_dir / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            hf = AutoTokenizer.from_pretrained(adapter_dir)
            extra = [str(hf.convert_ids_to_tokens(i)) for i in range(base_vocab, len(hf))]
            vocabulary = cls.of(Hypertokenizer(hf, extra, base_vocab_size=base_vocab,
                                               special=True), base_vocab)
        else:
            return None
        return vocabulary if vocabulary.added else None


@dataclass
class ExtendedBase:
    """An extended base GGUF: where it is and what it adds.

    Attributes:
        path: the GGUF file.
        key: identifies the vocabulary (base file and added tokens); adapters with the same key
            share one extended base.
        base: the base GGUF it extends.
        added: the tokens it appends.
        n_vocab: its vocabulary size.
        tied_output: it carries a copy of token_embd as output.weight.
        built: True when this call built it, False when it came from the cache.
    """

    path: Path
    key: str
    base: Path
    added: list[AddedToken]
    n_vocab: int
    tied_output: bool
    built: bool


def vocabulary_key(base_gguf: Path, added: list[AddedToken]) -> str:
    """The cache key of an extended base: the base file's sha256 and the added tokens (their
    spellings follow from the base)."""
    digest = hashlib.sha256(f"{FORMAT}:{file_sha256(Path(base_gguf))}:".encode())
    digest.update(json.dumps([[t.id, t.text, t.control] for t in added]).encode())
    return digest.hexdigest()[:16]


def extended_base(base_gguf: Path, vocabulary: Any | None, *,
                  progress: Progress | None = None, cache_dir: Path | None = None
                  ) -> ExtendedBase:
    """The extended base of `base_gguf` for an adapter's vocabulary, built once and cached.

    Args:
        base_gguf: the base model GGUF.
        vocabulary: an `AddedVocabulary` or the adapter's `Hypertokenizer`; None adds no token
            (the file then only unties the output, for adapters that retrain existing rows).
        progress: called with (stage, done, total) while a build runs.
        cache_dir: where extended bases live (default `<cache>/extended-base`).

    Raises:
        ModelFormatError: the base is not a readable GGUF model, or the tokenizer puts a token
            where the base already has one.
    """
    base_gguf = Path(base_gguf)
    header, tensors = read_tensors(base_gguf)
    if header.metadata.get("general.type") == "adapter":
        raise ModelFormatError(f"{base_gguf} is a LoRA adapter GGUF, not a base model")
    base_vocab = int(header.array_lengths.get("tokenizer.ggml.tokens") or 0)
    if vocabulary is not None and not isinstance(vocabulary, AddedVocabulary):
        vocabulary = AddedVocabulary.of(vocabulary, base_vocab)
    added = vocabulary.added if vocabulary is not None else []
    key = vocabulary_key(base_gguf, added)
    untied_before = bool(header.metadata.get(TIED_OUTPUT_KEY))  # already an extended base
    tied = "output.weight" not in tensors
    n_vocab = max([base_vocab] + [t.id + 1 for t in added])
    if not added and not tied:  # nothing to add, no tie to undo: the base serves as it is
        return ExtendedBase(path=base_gguf, key=key, base=base_gguf, added=[], n_vocab=n_vocab,
                            tied_output=untied_before, built=False)
    out = (cache_dir or dirs().cache / "extended-base") / f"{key}.gguf"
    built = not out.is_file()
    if built:
        spellings = {token.id: vocabulary.spelling_ids(token.text) for token in added} \
            if vocabulary is not None else {}
        build_extended_base(base_gguf, tensors, added, spellings, out, progress=progress)
    return ExtendedBase(path=out, key=key, base=base_gguf, added=added, n_vocab=n_vocab,
                        tied_output=tied or untied_before, built=built)


def extended_base_for(adapter_dir: Path, base_gguf: Path, *, progress: Progress | None = None
                      ) -> ExtendedBase | None:
    """The extended base a PEFT adapter dir needs on llama.cpp (built once), or None when it
    runs on `base_gguf` as it is: it adds no token and carries no trained row.

    Raises:
        ModelFormatError: the base is not a readable GGUF model, or does not fit the tokenizer.
    """
    from engine.adapters import adapter_config
    from engine.export.gguf_lora import carries_token_rows
    from engine.models import read_gguf_info

    adapter_config(Path(adapter_dir))  # a missing or foreign dir is named, not a raw OSError
    base_vocab = int(read_gguf_info(Path(base_gguf))["vocab_size"] or 0)
    vocabulary = AddedVocabulary.from_adapter(adapter_dir, base_vocab)
    if vocabulary is None and not carries_token_rows(adapter_dir):
        return None
    return extended_base(base_gguf, vocabulary, progress=progress)


def build_extended_base(base_gguf: Path, tensors: dict[str, Any], added: list[AddedToken],
                        spellings: dict[int, list[int]], out: Path, *,
                        progress: Progress | None = None) -> Path:
    """Write the extended base of a base GGUF to `out` (see the module docstring).

    Args:
        base_gguf: the base.
        tensors: its tensors (engine.gguf.layout.read_tensors).
        added: the tokens to append.
        spellings: token id -> the base ids that spell it.
        out: the file to write (a temp file, renamed when complete).
        progress: called with (stage, done, total).

    Raises:
        ModelFormatError: an added id is already a real token of the base.
    """
    import gguf

    from engine.export.gguf_model import _write
    from engine.export.gguf_raw import ARRAY, STRING, RawGGUF, pack_entry, rewrite

    def report(stage: str, done: int) -> None:
        if progress is not None:
            progress(stage, done, 3)

    report("rows", 0)
    raw = RawGGUF(base_gguf)
    arch = str(raw.scalar("general.architecture"))
    tokens = list(raw.array("tokenizer.ggml.tokens") or [])
    types = list(raw.array("tokenizer.ggml.token_type") or [])
    for token in added:
        if token.id < len(tokens) and types[token.id] != int(gguf.TokenType.UNUSED):
            raise ModelFormatError(
                f"the adapter's tokenizer puts {token.text!r} at id {token.id}, where "
                f"{base_gguf.name} already has {tokens[token.id]!r}",
                hint="the adapter was trained on another base model's tokenizer")
    n_vocab = max([len(tokens)] + [t.id + 1 for t in added])
    for index in range(len(tokens), n_vocab):
        tokens.append(f"[PAD{index}]")
        types.append(int(gguf.TokenType.UNUSED))
    for token in added:
        tokens[token.id] = token.text
        types[token.id] = int(gguf.TokenType.CONTROL if token.control
                              else gguf.TokenType.USER_DEFINED)

    embeddings = _with_new_rows(tensors["token_embd.weight"], added, spellings, n_vocab)
    output = tensors.get("output.weight")
    head = _with_new_rows(output, added, spellings, n_vocab) if output is not None \
        else embeddings
    report("write", 1)
    type_entry = raw.entries["tokenizer.ggml.token_type"]
    entries = [pack_entry("tokenizer.ggml.tokens", ARRAY, tokens, STRING),
               pack_entry("tokenizer.ggml.token_type", ARRAY, types, type_entry.item_type)]
    scores = raw.array("tokenizer.ggml.scores")
    if scores is not None:
        entries.append(pack_entry("tokenizer.ggml.scores", ARRAY,
                                  scores + [0.0] * (len(tokens) - len(scores)), 6))
    entries += [pack_entry(f"{arch}.vocab_size", 4, len(tokens)),
                pack_entry(TIED_OUTPUT_KEY, 7,
                           output is None or bool(raw.scalar(TIED_OUTPUT_KEY))),
                pack_entry(BASE_SHA_KEY, STRING, file_sha256(base_gguf)),
                pack_entry(ADDED_KEY, 4, len(added))]
    drop = {"tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.scores",
            f"{arch}.vocab_size", TIED_OUTPUT_KEY, BASE_SHA_KEY, ADDED_KEY}
    width = int(tensors["token_embd.weight"].shape[0])
    replaced = {"token_embd.weight": ([width, n_vocab], embeddings[1], embeddings[0]),
                "output.weight": ([width, n_vocab], head[1], head[0])}
    _write(out, lambda tmp: rewrite(raw, tmp, entries=entries, drop=drop, tensors=replaced))
    report("done", 3)
    return out


def dequantized_rows(tensor: Any, ids: Any) -> np.ndarray:
    """Rows `ids` of a GGUFReader 2-D tensor as float32, shape (len(ids), row length)."""
    from gguf import quants

    width = int(tensor.shape[0])  # ggml lists the row length first
    data = tensor.data[np.asarray(ids, dtype=np.int64)]
    return np.asarray(quants.dequantize(data, tensor.tensor_type), np.float32).reshape(-1, width)


def _with_new_rows(tensor: Any, added: list[AddedToken], spellings: dict[int, list[int]],
                   n_rows: int) -> tuple[np.ndarray, Any]:
    """A tensor's data with the added tokens' rows (mean of spelling) set, grown to n_rows.

    Returns (data, ggml type): the raw bytes in the tensor's own type when gguf-py can quantise
    it (only the new rows are encoded; old rows keep their bytes), else float32 values.
    """
    from gguf import GGMLQuantizationType, quants

    old_rows = int(tensor.shape[1])
    values = np.stack([_initial_row(tensor, spellings[token.id], old_rows) for token in added]) \
        if added else np.zeros((0, int(tensor.shape[0])), np.float32)
    ids = np.asarray([token.id for token in added], dtype=np.int64)
    qtype = tensor.tensor_type
    data = tensor.data
    try:
        encoded = quants.quantize(values, qtype)
        padding = quants.quantize(np.zeros((1, values.shape[1]), np.float32), qtype)
    except (NotImplementedError, quants.QuantError):
        data = dequantized_rows(tensor, np.arange(old_rows))
        encoded, padding, qtype = values, np.zeros((1, values.shape[1]), np.float32), None
    grown = np.empty((max(n_rows, old_rows), data.shape[1]), dtype=data.dtype)
    grown[:old_rows] = data
    grown[old_rows:] = padding
    if len(ids):
        grown[ids] = encoded
    if qtype is None or qtype == GGMLQuantizationType.F32:
        return np.ascontiguousarray(grown, np.float32), int(GGMLQuantizationType.F32)
    return grown, int(qtype)


def _initial_row(tensor: Any, spelling: list[int], old_rows: int) -> np.ndarray:
    """The mean of the rows that spell a token; the centroid when nothing spells it."""
    spelling = [i for i in spelling if i < old_rows]
    if spelling:
        return dequantized_rows(tensor, spelling).mean(axis=0)
    return dequantized_rows(tensor, np.arange(old_rows)).mean(axis=0)
