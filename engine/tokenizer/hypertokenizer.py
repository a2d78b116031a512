"""`Hypertokenizer`: a base tokenizer plus the profile's hypertokens, safe against injection.

The base is an HF fast tokenizer (`tokenizers`) or a SentencePiece model converted to one. The
hypertokens are appended after the base vocabulary, so every base id keeps its meaning. Two
encoders live side by side:

- `.hf` is the transformers tokenizer with the tokens added; it is what is saved and what other
  programs (chat templates, llama.cpp export) read.
- `encode_text` runs a copy of the backend in which every control hypertoken (and every special
  token of the base, such as `<|im_start|>`) is treated as plain text. A literal `<|scene|>` in a
  document or a prompt therefore spells itself out in ordinary tokens and can never become the
  hypertoken id. `encode_segments` is the only way hypertoken ids are emitted.

This module knows nothing of models, embeddings, scenes or the formatter that uses it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from engine.errors import DataError, ModelFormatError
from engine.tokenizer.hypertokens import hypertokens_for, is_control

MANIFEST = "hyperlex-tokenizer.json"
MANIFEST_SCHEMA = "hyperlex.tokenizer/1"
Segment = tuple[str, str]  # ("hyper", "<|scene|>") or ("text", "...")


def _text_only_backend(backend: Any, control_tokens: Iterable[str]) -> Any:
    """A copy of `backend` where control hypertokens and base specials are encoded as text.

    The copy marks every control hypertoken special (whatever the profile chose for `.hf`) and
    turns on `encode_special_tokens`, which makes the added-token matcher skip special tokens.
    Non-special added tokens (fractal symbols, mined couplings) still match, as they should.
    """
    from tokenizers import Tokenizer

    controls = set(control_tokens)
    data = json.loads(backend.to_str())
    for entry in data.get("added_tokens", []):
        if entry["content"] in controls:
            entry["special"] = True
    text_backend = Tokenizer.from_str(json.dumps(data))
    text_backend.encode_special_tokens = True
    text_backend.no_truncation()
    text_backend.no_padding()
    return text_backend


def _base_backend(backend: Any, hypertokens: Iterable[str]) -> Any:
    """A copy of `backend` without the hypertokens: how the base alone spells a string."""
    from tokenizers import Tokenizer

    added = set(hypertokens)
    data = json.loads(backend.to_str())
    data["added_tokens"] = [entry for entry in data.get("added_tokens", [])
                            if entry["content"] not in added]
    base = Tokenizer.from_str(json.dumps(data))
    base.encode_special_tokens = True
    base.no_truncation()
    base.no_padding()
    return base


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-to-character table, inverted: the character that stands for each byte."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


_BYTE_OF_CHAR = _byte_level_alphabet()


def _byte_level_bytes(raw: str) -> bytes:
    """The bytes of a byte-level BPE token string, or b"" when it is not one."""
    if raw and all(ch in _BYTE_OF_CHAR for ch in raw):
        return bytes(_BYTE_OF_CHAR[ch] for ch in raw)
    return b""


class Hypertokenizer:
    """A base tokenizer with hypertokens appended; see the module docstring for the contract.

    Build one with `from_profile`, `from_base` or `load`; do not call the constructor directly.
    """

    def __init__(self, hf: Any, hypertokens: Sequence[str], *, base_vocab_size: int,
                 special: bool, kind: str = "hf", base: str = "") -> None:
        self.hf = hf
        self.hypertokens: list[str] = list(hypertokens)
        self.control_tokens: list[str] = [t for t in self.hypertokens if is_control(t)]
        self.text_tokens: list[str] = [t for t in self.hypertokens if not is_control(t)]
        self.base_vocab_size = base_vocab_size
        self.special = special
        self.kind = kind
        self.base = base
        backend = hf.backend_tokenizer
        self._ids: dict[str, int] = {}
        for token in self.hypertokens:
            token_id = backend.token_to_id(token)
            if token_id is None:
                raise ModelFormatError(f"hypertoken {token!r} is missing from the tokenizer",
                                       hint="rebuild it with Hypertokenizer.from_profile")
            self._ids[token] = token_id
        self._control_ids = frozenset(self._ids[t] for t in self.control_tokens)
        self._text_backend = _text_only_backend(backend, self.control_tokens)
        self._spelling_backend: Any = None

    # --- building ---------------------------------------------------------------------------

    @classmethod
    def from_base(cls, base_tokenizer: Any, hypertokens: Sequence[str], *, special: bool = True,
                  kind: str = "hf", base: str = "") -> Hypertokenizer:
        """Add `hypertokens` (in order) to a copy of a transformers fast tokenizer.

        Args:
            base_tokenizer: a transformers fast tokenizer; it is not modified.
            hypertokens: the tokens to add, e.g. `hypertokens_for(profile)`.
            special: add control hypertokens as special tokens (True) or as normal added tokens.
                Either way text never encodes to them through `encode_text`.
            kind: `hf` or `sentencepiece`, recorded in the manifest.
            base: where the base came from (a model spec or a path), recorded in the manifest.
        """
        from tokenizers import AddedToken

        hf = copy.deepcopy(base_tokenizer)
        base_vocab_size = len(hf)
        for token in hypertokens:
            control = is_control(token)
            # One call per token keeps the ids in the given order.
            hf.add_tokens([AddedToken(token, special=special and control, normalized=False,
                                      lstrip=False, rstrip=False, single_word=False)],
                          special_tokens=special and control)
        return cls(hf, hypertokens, base_vocab_size=base_vocab_size, special=special,
                   kind=kind, base=base)

    @classmethod
    def from_profile(cls, profile: Any) -> Hypertokenizer:
        """The hypertokenizer a profile describes.

        The base is `profile.tokenizer.base` when set (a SentencePiece `.model` file, or a
        directory written by `hyperlex tokenizer train` or `Hypertokenizer.save`), otherwise the
        tokenizer of `profile.model.base`.
        """
        from engine.models import load_tokenizer

        hypertokens = hypertokens_for(profile)
        special = bool(profile.tokenizer.special)
        source = str(getattr(profile.tokenizer, "base", "") or "")
        if not source:
            return cls.from_base(load_tokenizer(profile.model.base), hypertokens,
                                 special=special, base=profile.model.base)
        path = Path(source).expanduser()
        if path.suffix == ".model":
            from engine.tokenizer.spm import hf_from_sentencepiece

            return cls.from_base(hf_from_sentencepiece(path), hypertokens, special=special,
                                 kind="sentencepiece", base=str(path))
        if (path / MANIFEST).is_file():
            saved = cls.load(path)
            missing = [t for t in hypertokens if t not in saved.hypertokens]
            if not missing:
                return saved
            # Hypertokens the profile adds after training go on top, keeping the saved ids.
            base_hf = copy.deepcopy(saved.hf)
            grown = cls.from_base(base_hf, missing, special=special, kind=saved.kind,
                                  base=saved.base)
            return cls(grown.hf, saved.hypertokens + missing,
                       base_vocab_size=saved.base_vocab_size, special=special,
                       kind=saved.kind, base=saved.base)
        from engine.models import load_tokenizer

        return cls.from_base(load_tokenizer(str(path)), hypertokens, special=special,
                             base=str(path))

    # --- persistence ------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write the tokenizer and its manifest into `directory` (created if needed)."""
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        self.hf.save_pretrained(target)
        manifest = {"schema": MANIFEST_SCHEMA, "kind": self.kind, "base": self.base,
                    "special": self.special, "base_vocab_size": self.base_vocab_size,
                    "hypertokens": self.hypertokens,
                    "ids": {token: self._ids[token] for token in self.hypertokens}}
        (target / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        return target

    @classmethod
    def load(cls, directory: str | Path) -> Hypertokenizer:
        """Load a hypertokenizer saved with `save`, checking that every id is where it was.

        Raises:
            DataError: the directory has no manifest, or the manifest is unreadable.
            ModelFormatError: a hypertoken's id differs from the one recorded.
        """
        from transformers import AutoTokenizer

        source = Path(directory)
        manifest_path = source / MANIFEST
        if not manifest_path.is_file():
            raise DataError(f"{source} holds no saved hypertokenizer ({MANIFEST} is missing)",
                            hint="save one with Hypertokenizer.save or `hyperlex tokenizer train`")
        try:
            manifest = json.loads(manifest_path.read_text())
            hypertokens = list(manifest["hypertokens"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{manifest_path}: unreadable manifest ({exc})") from exc
        hf = AutoTokenizer.from_pretrained(source)
        loaded = cls(hf, hypertokens, base_vocab_size=int(manifest["base_vocab_size"]),
                     special=bool(manifest.get("special", True)),
                     kind=str(manifest.get("kind", "hf")), base=str(manifest.get("base", "")))
        for token, recorded in manifest.get("ids", {}).items():
            if loaded.token_id(token) != recorded:
                raise ModelFormatError(
                    f"{manifest_path}: {token!r} has id {loaded.token_id(token)}, "
                    f"but was saved as {recorded}",
                    hint="the tokenizer files were edited or mixed from two runs")
        return loaded

    # --- ids --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.hf)

    def token_id(self, hypertoken: str) -> int:
        """The id of a hypertoken.

        Raises:
            KeyError: `hypertoken` is not one of this tokenizer's hypertokens.
        """
        try:
            return self._ids[hypertoken]
        except KeyError:
            raise KeyError(f"{hypertoken!r} is not a hypertoken of this tokenizer; "
                           f"known: {', '.join(self.hypertokens) or 'none'}") from None

    @property
    def new_token_ids(self) -> list[int]:
        """Ids added beyond the base vocabulary (the embedding rows that must be created)."""
        return sorted({i for i in self._ids.values() if i >= self.base_vocab_size})

    def is_hypertoken_id(self, token_id: int) -> bool:
        """True when `token_id` is one of the control hypertokens (`<|...|>`)."""
        return token_id in self._control_ids

    # --- encoding ---------------------------------------------------------------------------

    def encode_text(self, text: str) -> list[int]:
        """Ids of plain text; never a control hypertoken or a base special token id."""
        return list(self._text_backend.encode(text, add_special_tokens=False).ids)

    def encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode_text` over many texts at once (the backend runs them in parallel)."""
        encodings = self._text_backend.encode_batch(list(texts), add_special_tokens=False)
        return [list(encoding.ids) for encoding in encodings]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids of plain text with each token's (start, end) character span in `text`."""
        encoding = self._text_backend.encode(text, add_special_tokens=False)
        return list(encoding.ids), [tuple(span) for span in encoding.offsets]

    def encode_segments(self, segments: Iterable[Segment]) -> list[int]:
        """Ids of a formatted sequence: hypertokens and text pieces in order.

        Args:
            segments: `("hyper", "<|scene|>")` or `("text", "...")` pairs.

        Raises:
            KeyError: a "hyper" segment names no hypertoken of this tokenizer.
            ValueError: a segment kind is neither "hyper" nor "text".
        """
        ids: list[int] = []
        for kind, value in segments:
            if kind == "hyper":
                ids.append(self.token_id(value))
            elif kind == "text":
                if value:
                    ids.extend(self.encode_text(value))
            else:
                raise ValueError(f"segment kind must be 'hyper' or 'text', not {kind!r}")
        return ids

    def decode(self, ids: Sequence[int], skip_hypertokens: bool = False) -> str:
        """Text of `ids`; control hypertokens appear as their strings unless skipped."""
        if skip_hypertokens:
            ids = [i for i in ids if i not in self._control_ids]
        return str(self._text_backend.decode(list(ids), skip_special_tokens=False))

    def pieces(self, ids: Sequence[int]) -> list[str]:
        """What each id stands for on its own: its text, or `<0xNN>` for a token that holds
        only part of a character (its bytes mean nothing alone)."""
        out = []
        for token_id in ids:
            piece = self._text_backend.decode([token_id], skip_special_tokens=False)
            if "\ufffd" in piece or not piece:
                raw = self._text_backend.id_to_token(token_id) or ""
                raw_bytes = _byte_level_bytes(raw)
                piece = "".join(f"<0x{b:02X}>" for b in raw_bytes) if raw_bytes else raw
            out.append(piece)
        return out

    def spelling_ids(self, token: str) -> list[int]:
        """How the base tokenizer alone spells `token` (the rows its embedding starts from)."""
        if self._spelling_backend is None:
            self._spelling_backend = _base_backend(self.hf.backend_tokenizer, self.hypertokens)
        ids = self._spelling_backend.encode(token, add_special_tokens=False).ids
        return [i for i in ids if i < self.base_vocab_size]
