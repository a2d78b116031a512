"""Turn a source's bytes into text: BOMs, UTF-8, then charset-normalizer's guess (cp1251, koi8-r...).

The decoded text is never normalised (no newline or Unicode normalisation): scene spans index it
exactly. A byte-order mark is an encoding marker, not text, so it is dropped. This module knows
nothing of files or documents; `engine.corpus.sources` reads and names them.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

import charset_normalizer

from engine.errors import DataError

# Longest BOM first: the UTF-32-LE mark starts with the UTF-16-LE one.
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG", "PNG image"), (b"%PDF", "PDF document"), (b"PK\x03\x04", "ZIP archive"),
    (b"\x7fELF", "ELF executable"), (b"\x1f\x8b", "gzip archive"), (b"GIF8", "GIF image"),
    (b"\xff\xd8\xff", "JPEG image"), (b"GGUF", "GGUF model"),
)
# Bytes that plain text hardly ever holds (tab, newlines, form feed and ESC excluded).
_CONTROL = frozenset(set(range(0, 9)) | set(range(14, 27)) | set(range(28, 32)))
SNIFF_BYTES = 8192
# charset-normalizer is slow on big inputs; 1 MiB is ample to tell cp1251 from koi8-r.
GUESS_BYTES = 1 << 20
# Above this share of control bytes in the first 8 KiB a file is taken for binary.
BINARY_CONTROL_SHARE = 0.05


@dataclass
class Decoded:
    """Decoded text, the codec that produced it, and how many bytes were replaced (if allowed)."""

    text: str
    encoding: str
    replaced: int = 0


def binary_kind(data: bytes) -> str | None:
    """Say why `data` looks binary, or None when it looks like text.

    Args:
        data: the start of the source (the first 8 KiB are enough).

    Returns:
        A short description ("PNG image", "binary data: 31% control bytes") or None.
    """
    for mark, _ in _BOMS:
        if data.startswith(mark):
            return None
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    sample = data[:SNIFF_BYTES]
    if not sample:
        return None
    share = sum(1 for byte in sample if byte in _CONTROL) / len(sample)
    if share > BINARY_CONTROL_SHARE:
        return f"binary data: {share:.0%} control bytes in the first {len(sample)} bytes"
    return None


def decode(data: bytes, *, name: str = "<bytes>", replace: bool = False) -> Decoded:
    """Decode a source's bytes.

    Order: a BOM decides; else strict UTF-8; else charset-normalizer's best guess on the first
    MiB, applied to the whole. With `replace`, undecodable bytes become U+FFFD and are counted.

    Args:
        data: the raw bytes.
        name: the source's name, for messages.
        replace: decode with replacement instead of failing on undecodable bytes.

    Returns:
        The `Decoded` text.

    Raises:
        DataError: empty or binary input, or undecodable bytes without `replace` (the message
            names the byte offset).
    """
    if not data:
        raise DataError(f"{name}: empty file, nothing to read")
    kind = binary_kind(data)
    if kind:
        raise DataError(f"{name}: looks binary ({kind}); skipped",
                        hint="pass text files (.txt, .md, .jsonl)")
    for mark, codec in _BOMS:
        if data.startswith(mark):
            return _decode_with(data, codec, name, replace)
    try:
        return Decoded(data.decode("utf-8"), "utf-8")
    except UnicodeDecodeError as utf8_error:
        if _mostly_utf8(data[:GUESS_BYTES]):
            # Valid multi-byte sequences far outnumber the broken ones: this is UTF-8 with a
            # few bad bytes, not some 8-bit codec (which would turn all of it into mojibake).
            if replace:
                return _decode_with(data, "utf-8", name, replace=True)
            raise _undecodable(name, "utf-8", utf8_error) from None
        guess = charset_normalizer.from_bytes(data[:GUESS_BYTES]).best()
        if guess is None or guess.encoding in ("utf_8", "utf-8"):
            if replace:
                return _decode_with(data, "utf-8", name, replace=True)
            raise _undecodable(name, "utf-8", utf8_error) from None
        codec = guess.encoding
        if codec not in _COMMON_8BIT:
            # On a few words charset-normalizer can name an exotic codec (cp1125, shift_jis);
            # Russian text in cp1251 or koi8-r is far more likely on a workstation.
            codec = _cyrillic_codec(data[:GUESS_BYTES]) or codec
        return _decode_with(data, codec, name, replace)


_COMMON_8BIT = frozenset({"cp1251", "koi8_r", "cp1252", "latin_1", "iso8859_15", "iso8859_5",
                          "cp866", "mac_cyrillic", "ascii"})


def _mostly_utf8(sample: bytes) -> bool:
    """True when a sample is UTF-8 but for a few broken bytes (at least 4 good characters
    outside ASCII for each bad byte)."""
    text = sample.decode("utf-8", errors="replace")
    bad = text.count("\ufffd")
    good = sum(1 for ch in text if ord(ch) > 127) - bad
    return good >= 4 * max(1, bad)


def _cyrillic_codec(sample: bytes) -> str | None:
    """Pick cp1251 or koi8-r for Russian text: the right one makes most letters lowercase.

    The two codecs swap case for the same bytes (cp1251's lowercase range is koi8-r's uppercase),
    and running text is mostly lowercase, so the lowercase share tells them apart.
    """
    best, best_share = None, 0.6
    for codec in ("cp1251", "koi8_r"):
        try:
            text = sample.decode(codec)
        except UnicodeDecodeError:
            continue
        cyrillic = [ch for ch in text if "\u0400" <= ch <= "\u04ff"]
        letters = sum(1 for ch in text if ch.isalpha())
        # Russian text is mostly Cyrillic letters; accented Latin text is mostly ASCII ones.
        symbols = sum(1 for ch in text if ord(ch) > 127 and not ch.isalpha())
        if not cyrillic or len(cyrillic) < 0.5 * letters or symbols > 0.1 * len(cyrillic):
            continue
        share = sum(1 for ch in cyrillic if ch.islower()) / len(cyrillic)
        if share > best_share:
            best, best_share = codec, share
    return best


def _decode_with(data: bytes, codec: str, name: str, replace: bool) -> Decoded:
    try:
        return Decoded(data.decode(codec), codec)
    except UnicodeDecodeError as error:
        if not replace:
            raise _undecodable(name, codec, error) from None
    text = data.decode(codec, errors="replace")
    return Decoded(text, codec, replaced=text.count("\ufffd"))


def _undecodable(name: str, codec: str, error: UnicodeDecodeError) -> DataError:
    return DataError(
        f"{name}: undecodable bytes at offset {error.start} as {codec} "
        f"({error.object[error.start:error.start + 4]!r}); skipped",
        hint="pass --replace-errors to decode with U+FFFD replacement characters",
    )
