"""The edge-case suite: texts that break careless tokenizers, each checked for a round trip.

`run_suite(tokenizer)` returns `{"cases": [{"name", "text", "ids", "pieces", "special",
"round_trip", "normalised_by_design"}], "round_trip_rate": R, ...}`. A case the base tokenizer
changes *by design* (its normaliser or decoder is built to) is listed with the reason and left out
of `round_trip_rate`; `raw_round_trip_rate` counts every case. This module knows nothing of
the CLI or of models.
"""

from __future__ import annotations

import json
from typing import Any

from engine.tokenizer.hypertokenizer import Hypertokenizer

LONG_WORD = ("hyperlexicographically" * 455)[:10_000]

CASES: list[tuple[str, str]] = [
    ("empty", ""),
    ("space_runs", "a       b  c   "),
    ("leading_and_trailing_spaces", "   lead and trail   "),
    ("tabs", "\tcol1\t\tcol2\t"),
    ("crlf", "line one\r\nline two\r\n\r\n"),
    ("lone_cr_and_unicode_line_breaks", "a\rb\u2028c\u2029d\x85e"),
    ("nul_and_control_characters", "a\x00b\x01c\x07\x1b[31mred\x1b[0m\x7f"),
    ("emoji_zwj_sequences", "family 👨‍👩‍👧‍👦, rainbow flag 🏳️‍🌈, skin tone 👋🏽"),
    ("combining_marks", "e\u0301 is not é; a\u0323\u0302 and Z\u0336a\u0337l\u0338g\u0335o"),
    ("cyrillic_yo_and_short_i", "Ёлка, йод, щит, ещё и ЙОГУРТ; ёж и её"),
    ("mixed_scripts", "Hello мир 世界 γειά σου नमस्ते 123"),
    ("right_to_left", "שלום עולם and مرحبا بالعالم \u200fmark\u200e \u202eoverride\u202c"),
    ("zero_width_and_bom", "zero\u200bwidth\u200cnon\u200djoiner\ufeffbom"),
    ("ten_thousand_character_word", LONG_WORD),
    ("literal_hypertokens", "<|scene|> <|reg:logic|> <|field:mood|> <|/scene|> <|link|>"),
    ("literal_base_specials", "<|im_start|>system\nobey<|im_end|><|endoftext|><s></s><unk>"),
    ("nested_markers", "<|scene|><|scene|>inner<|/scene|><|/scene|> ⟨⟨∴⟩⟩ <<|marker|>>"),
    ("partial_hypertoken_spellings", "<|scene| |scene|> <|SCENE|> <| scene |> <||>"),
    ("byte_fallback_rare_characters", "🧬 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \ue000 \U000f0000 \ufffd 𓂀"),
    ("byte_piece_spellings", "<0x41><0x00><0xFF> <0x>"),
    ("sentencepiece_space_symbol", "a\u2581b \u2581\u2581"),
    ("digits_and_punctuation", "3.14159, 1,000,000; 0x1F -42e-7 … «quotes» — dash"),
]


def _normalisations(tokenizer: Hypertokenizer) -> dict[str, str]:
    """Cases this tokenizer changes by design, read off its normaliser and decoder."""
    data = json.loads(tokenizer.hf.backend_tokenizer.to_str())
    text = json.dumps({"normalizer": data.get("normalizer"), "decoder": data.get("decoder"),
                       "pre_tokenizer": data.get("pre_tokenizer")})
    reasons: dict[str, str] = {}
    if "\u2581" in text or "\\u2581" in text:
        reasons["sentencepiece_space_symbol"] = (
            "U+2581 '▁' is SentencePiece's own space symbol: the decoder turns every '▁' into a "
            "space, so a literal '▁' in text comes back as ' '")
    for form in ("NFC", "NFKC", "NFD", "NFKD"):
        if f'"{form}"' in text:
            reasons["combining_marks"] = f"the normaliser applies {form}"
    if '"Strip"' in text:
        reasons["leading_and_trailing_spaces"] = "the decoder strips a leading space"
    if '"Prepend"' in text:
        reasons.setdefault("leading_and_trailing_spaces",
                           "the normaliser prepends a space the decoder removes")
    return reasons


def run_suite(tokenizer: Hypertokenizer) -> dict[str, Any]:
    """Encode and decode every case; see the module docstring for the result's shape."""
    by_design = _normalisations(tokenizer)
    cases = []
    for name, text in CASES:
        ids = tokenizer.encode_text(text)
        decoded = tokenizer.decode(ids)
        case: dict[str, Any] = {
            "name": name, "text": text, "ids": ids, "pieces": tokenizer.pieces(ids),
            "special": [tokenizer.is_hypertoken_id(i) for i in ids],
            "round_trip": decoded == text, "normalised_by_design": by_design.get(name)}
        if decoded != text:
            case["decoded"] = decoded
        cases.append(case)
    checked = [c for c in cases if not c["normalised_by_design"]]
    return {
        "tokenizer": {"kind": tokenizer.kind, "base": tokenizer.base, "size": len(tokenizer),
                      "hypertokens": len(tokenizer.hypertokens)},
        "cases": cases,
        "round_trip_rate": sum(c["round_trip"] for c in checked) / len(checked),
        "raw_round_trip_rate": sum(c["round_trip"] for c in cases) / len(cases),
        "normalised": [{"name": c["name"], "reason": c["normalised_by_design"],
                        "round_trip": c["round_trip"]} for c in cases
                       if c["normalised_by_design"]],
        "hypertoken_ids_from_text": sum(sum(c["special"]) for c in cases),
    }
