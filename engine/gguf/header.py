"""A fast, strict reader of a GGUF file's header: metadata, tensor table and size check.

gguf-py's `GGUFReader` decodes every element of every array (49,152 vocabulary strings and as
many merges for SmolLM2), which took 9 s here; this reader skips over large arrays and reads the
same header in well under a second. It also checks that every tensor's data lies inside the file,
which catches truncated downloads before llama.cpp (which may abort the process) sees them.
`read_gguf_info` turns a header into the figures `hyperlex model info` shows, refusing a bad file
with a person-readable error. It knows nothing of models beyond the GGUF format.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import ModelFormatError

MAGIC = b"GGUF"
# value type -> struct format (scalar types only); 8 = string, 9 = array
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_SMALL_ARRAY = 64  # arrays up to this length are decoded; longer ones are summarised


class GGUFHeaderError(ValueError):
    """The bytes are not a well-formed GGUF header."""


@dataclass
class GGUFTensor:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int

    @property
    def n_elements(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count


@dataclass
class GGUFHeader:
    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    array_lengths: dict[str, int] = field(default_factory=dict)
    tensors: list[GGUFTensor] = field(default_factory=list)
    data_offset: int = 0


class _Cursor:
    def __init__(self, buffer: Any, size: int):
        self.buffer, self.size, self.pos = buffer, size, 0

    def take(self, fmt: str) -> Any:
        width = struct.calcsize(fmt)
        if self.pos + width > self.size:
            raise GGUFHeaderError(f"unexpected end of file at byte {self.pos}")
        (value,) = struct.unpack_from(fmt, self.buffer, self.pos)
        self.pos += width
        return value

    def string(self) -> str:
        length = self.take("<Q")
        if self.pos + length > self.size:
            raise GGUFHeaderError(f"string of {length} bytes runs past the end at byte {self.pos}")
        raw = bytes(self.buffer[self.pos : self.pos + length])
        self.pos += length
        return raw.decode("utf-8", "replace")

    def skip_string(self) -> None:
        length = self.take("<Q")
        self.pos += length
        if self.pos > self.size:
            raise GGUFHeaderError("string runs past the end of the file")

    def value(self, kind: int, key: str, lengths: dict[str, int]) -> Any:
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY:
            raise GGUFHeaderError(f"unknown value type {kind} for key {key!r}")
        item_kind = self.take("<I")
        count = self.take("<Q")
        lengths[key] = count
        if count <= _SMALL_ARRAY:
            return [self.value(item_kind, key, {}) for _ in range(count)]
        if item_kind in _SCALARS:
            self.pos += count * struct.calcsize(_SCALARS[item_kind])
            if self.pos > self.size:
                raise GGUFHeaderError(f"array {key!r} runs past the end of the file")
        elif item_kind == _STRING:
            for _ in range(count):
                self.skip_string()
        else:
            for _ in range(count):
                self.value(item_kind, key, {})
        return None


def read_header(path: Path) -> GGUFHeader:
    """Read and check a GGUF header.

    Raises:
        GGUFHeaderError: not a GGUF, an unsupported version, or truncated/corrupt.
    """
    from gguf.constants import GGML_QUANT_SIZES

    with path.open("rb") as handle:
        size = path.stat().st_size
        if size < 24:
            raise GGUFHeaderError(f"only {size} bytes: too short for a GGUF header")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            cursor = _Cursor(buffer, size)
            if bytes(buffer[:4]) != MAGIC:
                raise GGUFHeaderError(f"magic {bytes(buffer[:4])!r}, expected {MAGIC!r}")
            cursor.pos = 4
            version = cursor.take("<I")
            if version not in (2, 3):
                raise GGUFHeaderError(f"GGUF version {version} is not supported (2 or 3)")
            n_tensors, n_kv = cursor.take("<Q"), cursor.take("<Q")
            if n_tensors > 1_000_000 or n_kv > 1_000_000:
                raise GGUFHeaderError(f"implausible counts: {n_tensors} tensors, {n_kv} keys")
            header = GGUFHeader(version=version)
            for _ in range(n_kv):
                key = cursor.string()
                header.metadata[key] = cursor.value(cursor.take("<I"), key, header.array_lengths)
            for _ in range(n_tensors):
                name = cursor.string()
                n_dims = cursor.take("<I")
                if n_dims > 8:
                    raise GGUFHeaderError(f"tensor {name!r} has {n_dims} dimensions")
                shape = tuple(cursor.take("<Q") for _ in range(n_dims))
                header.tensors.append(GGUFTensor(name, shape, cursor.take("<I"),
                                                 cursor.take("<Q")))
    alignment = int(header.metadata.get("general.alignment") or 32)
    header.data_offset = (cursor.pos + alignment - 1) // alignment * alignment
    for tensor in header.tensors:
        try:
            block, type_size = GGML_QUANT_SIZES[tensor.ggml_type]  # type: ignore[index]
        except KeyError as exc:
            raise GGUFHeaderError(f"tensor {tensor.name!r} has unknown type {tensor.ggml_type}") \
                from exc
        end = header.data_offset + tensor.offset + tensor.n_elements // block * type_size
        if end > size:
            raise GGUFHeaderError(f"tensor {tensor.name!r} ends at byte {end}, past the end of "
                                  f"the file ({size} bytes): the file is truncated")
    return header


def read_gguf_info(path: Path) -> dict[str, Any]:
    """Architecture, parameter count, vocab size and context length from a GGUF's header.

    Raises:
        ModelFormatError: the file is not a GGUF, or is truncated or corrupt.
    """
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != MAGIC:
        raise ModelFormatError(f"{path} is not a GGUF file (magic {magic!r}, expected b'GGUF')",
                               hint="re-download or re-export the file")
    try:
        header = read_header(path)
    except GGUFHeaderError as exc:
        raise ModelFormatError(f"{path} is truncated or corrupt: {exc}",
                               hint="re-download or re-export the file") from exc
    meta = header.metadata
    arch = meta.get("general.architecture")
    return {
        "architecture": arch,
        "name": meta.get("general.name"),
        "parameters": sum(t.n_elements for t in header.tensors),
        "vocab_size": header.array_lengths.get("tokenizer.ggml.tokens"),
        "context_length": meta.get(f"{arch}.context_length"),
        "hidden_size": meta.get(f"{arch}.embedding_length"),
        "layers": meta.get(f"{arch}.block_count"),
        "file_type": meta.get("general.file_type"),
    }
