"""Rewrite a few metadata keys and tensors of a GGUF file, copying every other byte as it is.

gguf-py round-trips a file through `GGUFReader` and `GGUFWriter`, which decodes and re-encodes
every vocabulary string and merge: 9 s for SmolLM2 here, most of an extended base's build. This
module walks the metadata without decoding it, copies the entries it keeps byte for byte, writes
the replaced ones, and streams the tensor data (the base's bytes, or the new arrays) into place.
It knows the GGUF v3 layout and nothing of models, tokenizers or adapters.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ModelFormatError

STRING, ARRAY = 8, 9
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
           11: "<q", 12: "<d"}
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
          6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}


@dataclass
class Entry:
    """One metadata entry of a GGUF: where its bytes are and what its value is made of."""

    key: str
    start: int        # first byte of the entry (its key's length)
    value_start: int  # first byte after the value type
    end: int          # one past its last byte
    value_type: int
    item_type: int | None  # arrays only


class RawGGUF:
    """A GGUF file, memory-mapped: its metadata entries and tensor table, undecoded."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.data: Any = np.memmap(self.path, dtype=np.uint8, mode="r")
        self._pos = 0
        if bytes(self.data[:4]) != b"GGUF" or self._take("<I", 4) not in (2, 3):
            raise ModelFormatError(f"{path} is not a GGUF file of version 2 or 3")
        self._pos = 8
        n_tensors, n_kv = self._take("<Q"), self._take("<Q")
        self.entries: dict[str, Entry] = {}
        for _ in range(n_kv):
            start = self._pos
            key = self._string()
            value_type = self._take("<I")
            value_start = self._pos
            item_type = self._skip_value(value_type)
            self.entries[key] = Entry(key, start, value_start, self._pos, value_type, item_type)
        self.tensors: list[tuple[str, list[int], int, int]] = []  # name, ne, type, offset
        for _ in range(n_tensors):
            name = self._string()
            ne = [self._take("<Q") for _ in range(self._take("<I"))]
            self.tensors.append((name, ne, self._take("<I"), self._take("<Q")))
        self.alignment = int(self.scalar("general.alignment") or 32)
        self.data_start = _aligned(self._pos, self.alignment)

    # --- reading ----------------------------------------------------------------------------

    def _take(self, fmt: str, at: int | None = None) -> Any:
        pos = self._pos if at is None else at
        width = struct.calcsize(fmt)
        if pos + width > len(self.data):
            raise ModelFormatError(f"{self.path} is truncated (at byte {pos})")
        (value,) = struct.unpack_from(fmt, self.data, pos)
        if at is None:
            self._pos += width
        return value

    def _string(self) -> str:
        length = self._take("<Q")
        raw = bytes(self.data[self._pos:self._pos + length])
        self._pos += length
        return raw.decode("utf-8", "replace")

    def _skip_value(self, value_type: int) -> int | None:
        if value_type in _SCALAR:
            self._pos += struct.calcsize(_SCALAR[value_type])
            return None
        if value_type == STRING:
            self._pos += 8 + self._take("<Q", self._pos)
            return None
        if value_type != ARRAY:
            raise ModelFormatError(f"{self.path}: unknown metadata type {value_type}")
        item_type, count = self._take("<I"), self._take("<Q")
        if item_type in _SCALAR:
            self._pos += count * struct.calcsize(_SCALAR[item_type])
        else:
            for _ in range(count):
                self._skip_value(item_type)
        return int(item_type)

    def scalar(self, key: str) -> Any:
        """A scalar or string value (None when absent)."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry.value_type == STRING:
            length = self._take("<Q", entry.value_start)
            return bytes(self.data[entry.value_start + 8:entry.value_start + 8 + length]
                         ).decode("utf-8", "replace")
        return self._take(_SCALAR[entry.value_type], entry.value_start)

    def array(self, key: str) -> list[Any] | None:
        """An array value: strings as str, numbers as Python numbers (None when absent)."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        count = self._take("<Q", entry.value_start + 4)
        first = entry.value_start + 12
        if entry.item_type in _NUMPY:
            return np.frombuffer(self.data, dtype=_NUMPY[entry.item_type], count=count,
                                 offset=first).tolist()
        raw = bytes(self.data[first:entry.end])
        out, pos = [], 0
        for _ in range(count):
            (length,) = struct.unpack_from("<Q", raw, pos)
            out.append(raw[pos + 8:pos + 8 + length].decode("utf-8", "replace"))
            pos += 8 + length
        return out

    def tensor_bytes(self, name: str) -> np.ndarray:
        """The raw bytes of one tensor, in place."""
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        for tensor_name, ne, ggml_type, offset in self.tensors:
            if tensor_name == name:
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
                start = self.data_start + offset
                return self.data[start:start + int(np.prod(ne)) // block * type_size]
        raise KeyError(name)


def _aligned(position: int, alignment: int) -> int:
    return (position + alignment - 1) // alignment * alignment


def _pack_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def pack_entry(key: str, value_type: int, value: Any, item_type: int | None = None) -> bytes:
    """One metadata entry in GGUF encoding."""
    head = _pack_string(key) + struct.pack("<I", value_type)
    if value_type in _SCALAR:
        return head + struct.pack(_SCALAR[value_type], value)
    if value_type == STRING:
        return head + _pack_string(value)
    if value_type != ARRAY or item_type is None:
        raise ValueError(f"cannot pack metadata type {value_type}")
    head += struct.pack("<IQ", item_type, len(value))
    if item_type == STRING:
        return head + b"".join(_pack_string(item) for item in value)
    return head + np.asarray(value, dtype=_NUMPY[item_type]).tobytes()


def rewrite(base: RawGGUF, out: Path | str, *, entries: list[bytes], drop: set[str],
            tensors: dict[str, tuple[list[int], int, np.ndarray]]) -> None:
    """Write `base` to `out` with metadata and tensors replaced or added.

    Args:
        base: the source file.
        out: where to write.
        entries: packed metadata entries (`pack_entry`) to add, after the kept ones.
        drop: keys of the base not to copy (those the new entries replace).
        tensors: name -> (ggml dims, ggml type, bytes or values) replacing a base tensor of that
            name or, for a new name, added after the base's tensors.
    """
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    kept = [entry for key, entry in base.entries.items() if key not in drop]
    plan: list[tuple[str, list[int], int, Any]] = []
    for name, ne, ggml_type, _ in base.tensors:
        if name in tensors:
            plan.append((name, *tensors[name]))
        else:
            plan.append((name, ne, ggml_type, base.tensor_bytes(name)))
    known = {name for name, *_ in base.tensors}
    plan += [(name, *spec) for name, spec in tensors.items() if name not in known]

    infos, offset = [], 0
    for name, ne, ggml_type, data in plan:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
        size = int(np.prod(ne)) // block * type_size
        if data.nbytes != size:
            raise ModelFormatError(f"tensor {name}: {data.nbytes} bytes for dims {ne}, "
                                   f"expected {size}")
        infos.append(_pack_string(name) + struct.pack("<I", len(ne))
                     + struct.pack(f"<{len(ne)}Q", *ne) + struct.pack("<IQ", ggml_type, offset))
        offset = _aligned(offset + size, base.alignment)
    with open(out, "wb") as handle:
        handle.write(b"GGUF" + struct.pack("<IQQ", 3, len(plan), len(kept) + len(entries)))
        for entry in kept:
            handle.write(memoryview(base.data[entry.start:entry.end]))
        for packed in entries:
            handle.write(packed)
        for info in infos:
            handle.write(info)
        handle.write(b"\0" * (_aligned(handle.tell(), base.alignment) - handle.tell()))
        data_start = handle.tell()
        for _, _, _, data in plan:
            handle.write(b"\0" * (_aligned(handle.tell() - data_start, base.alignment)
                                  - (handle.tell() - data_start)))
            for chunk in _chunks(np.ascontiguousarray(data).view(np.uint8).reshape(-1)):
                handle.write(chunk.data)


def _chunks(data: np.ndarray, size: int = 1 << 24) -> Iterator[np.ndarray]:
    for start in range(0, len(data), size):
        yield data[start:start + size]
