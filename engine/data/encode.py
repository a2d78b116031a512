"""Formatted samples → token ids with labels: the chat frame around them, the prompt masked.

Text and hypertokens go through `Hypertokenizer.encode_segments`, so text from a corpus can never
become a hypertoken id. The chat frame's own pieces (`<|im_start|>user\\n` …) are trusted text
written by the template, and are encoded with the tokenizer's special tokens recognised. Labels
are -100 on the frame before the answer and on the prompt; the answer and the frame's closing
piece (the end-of-turn token) are trained. Samples longer than `max_seq_len` are cut at the end and
counted; a sample left with nothing to learn is dropped and counted.

This module knows nothing of scenes' meaning, models or training loops.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from engine.data.chat import ChatFrame
from engine.data.formats import Formatted, Piece
from engine.errors import DataError
from engine.types import Sample

IGNORE = -100


@dataclass
class EncodeStats:
    """What encoding did to the samples."""

    samples: int = 0
    truncated: int = 0
    dropped_empty: int = 0
    tokens: int = 0
    label_tokens: int = 0
    longest: int = 0
    examples_truncated: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the run card."""
        return {"samples": self.samples, "truncated": self.truncated,
                "dropped_empty": self.dropped_empty, "tokens": self.tokens,
                "label_tokens": self.label_tokens, "longest": self.longest}


class SampleEncoder:
    """Encodes `Formatted` samples with one hypertokenizer and chat frame.

    Args:
        hypertokenizer: an `engine.tokenizer.Hypertokenizer`.
        frame: the chat frame from `engine.data.chat.chat_frame`.
        max_seq_len: the longest sample kept whole.
    """

    def __init__(self, hypertokenizer: Any, frame: ChatFrame, max_seq_len: int):
        self.tokenizer = hypertokenizer
        self.frame = frame
        self.max_seq_len = max_seq_len
        self.before = self._template_ids(frame.before)
        self.between = self._template_ids(frame.between)
        self.after = self._template_ids(frame.after)

    def _template_ids(self, text: str) -> list[int]:
        if not text:
            return []
        ids = list(self.tokenizer.hf(text, add_special_tokens=False)["input_ids"])
        if any(self.tokenizer.is_hypertoken_id(i) for i in ids):
            raise DataError("the chat template itself contains a hypertoken",
                            hint="use a chat template that does not write <|scene|>-style tokens")
        return ids

    def _pieces(self, pieces: Iterable[Piece]) -> tuple[list[int], list[bool]]:
        ids: list[int] = []
        flags: list[bool] = []
        for piece in pieces:
            piece_ids = self.tokenizer.encode_segments([(piece.kind, piece.value)])
            ids += piece_ids
            flags += [piece.field] * len(piece_ids)
        return ids, flags

    def _fit(self, prompt: list[int], prompt_fields: list[bool], tail: list[int],
             tail_fields: list[bool]) -> tuple[list[int], list[bool], list[int], list[bool], int]:
        """Cut a sample to `max_seq_len`: the prompt loses its start, the answer its end.

        The prompt keeps at least half the room, or all the answer leaves it; its end (the
        instruction and the nearest context) is the part worth keeping. Returns the pieces and
        how many tokens were cut.
        """
        room = self.max_seq_len - len(self.before) - len(self.between)
        if len(prompt) + len(tail) <= room:
            return prompt, prompt_fields, tail, tail_fields, 0
        cut = len(prompt) + len(tail) - max(room, 0)
        keep_prompt = max(min(len(prompt), room // 2), room - len(tail), 0)
        start = len(prompt) - keep_prompt
        keep_tail = max(room - keep_prompt, 0)
        return (prompt[start:], prompt_fields[start:], tail[:keep_tail], tail_fields[:keep_tail],
                cut)

    def encode(self, sample: Formatted, stats: EncodeStats | None = None) -> Sample | None:
        """One sample's ids, labels and field mask; None when nothing is left to learn."""
        stats = stats if stats is not None else EncodeStats()
        prompt, prompt_fields = self._pieces(sample.prompt)
        answer, answer_fields = self._pieces(sample.answer)
        prompt, prompt_fields, answer, answer_fields, cut = self._fit(
            prompt, prompt_fields, answer + self.after, answer_fields + [False] * len(self.after))
        head = self.before + prompt + self.between
        input_ids = head + answer
        labels = [IGNORE] * len(head) + answer
        field_mask = (([False] * len(self.before)) + prompt_fields + [False] * len(self.between)
                      + answer_fields)
        stats.longest = max(stats.longest, len(input_ids) + cut)
        if cut:
            stats.truncated += 1
            if len(stats.examples_truncated) < 5:
                stats.examples_truncated.append(sample.scene)
        # The first label is never predicted (nothing comes before it), so it must not count.
        trained = sum(1 for label in labels[1:] if label != IGNORE)
        if trained == 0:
            stats.dropped_empty += 1
            return None
        stats.samples += 1
        stats.tokens += len(input_ids)
        stats.label_tokens += trained
        example_id = sample.scene + (f"/{sample.direction}" if sample.direction else "")
        return Sample(input_ids=input_ids, labels=labels, register=sample.register,
                      doc=sample.doc, field_mask=field_mask, example_id=example_id)

    def prompt_ids(self, sample: Formatted) -> list[int]:
        """The ids a model is prompted with for `sample` (the chat frame up to the answer),
        exactly as `encode` writes them before the answer; the prompt keeps its end if it
        is longer than `max_seq_len`."""
        prompt, _ = self._pieces(sample.prompt)
        room = max(self.max_seq_len - len(self.before) - len(self.between), 1)
        return self.before + prompt[-room:] + self.between

    def encode_all(self, samples: Iterable[Formatted], stats: EncodeStats | None = None
                   ) -> list[Sample]:
        """Encode many samples, skipping the ones with nothing to learn."""
        out = []
        for sample in samples:
            encoded = self.encode(sample, stats)
            if encoded is not None:
                out.append(encoded)
        return out
