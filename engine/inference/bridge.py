"""The bridge at inference: text → scene structure, and structure → text, through a bridge adapter.

A bridge adapter (training mode `bridge`) learned two directions from the same prompts this
module builds, with `engine.data.formats.bridge` and the same chat frame, so its answers read as
they did in training:

- encode: "Give the structure of this scene." + the text → `<|scene|>` + register, fields and
  markers + `<|/scene|>`; `parse_structure` reads that back into `{register, fields, markers}`;
- decode: "Write the text of this scene." + the structure → the text.

`parse_structure` is the inverse of `structure_pieces`: `<|reg:NAME|>` or a `register: NAME`
line, `<|field:NAME|>value` or `name: value` lines, `<|marker|>text`. What it cannot read stays in
`unparsed`, so a half-trained adapter's answer is never silently dropped. Knows the formatters,
the encoder and the Backend protocol; nothing of the daemon.
"""

from __future__ import annotations

import re
from typing import Any

from engine.backend import GenerationRequest
from engine.data.chat import chat_frame
from engine.data.encode import SampleEncoder
from engine.data.formats import MARKER, SCENE_CLOSE, SCENE_OPEN, bridge
from engine.types import Scene

_HYPER = re.compile(r"<\|([^|<>]{1,80})\|>")
_LINE = re.compile(r"^([A-Za-z_][\w-]{0,63}):[ \t]*(.*)$")


def _encoder(hypertokenizer: Any, profile: Any) -> SampleEncoder:
    frame = chat_frame(hypertokenizer.hf, profile.model.chat_template,
                       profile.inference.system_prompt)
    return SampleEncoder(hypertokenizer, frame, profile.training.max_seq_len)


def prompt_ids(hypertokenizer: Any, profile: Any, direction: str, *, text: str = "",
               register: str | None = None, fields: dict[str, Any] | None = None,
               markers: list[str] | None = None) -> list[int]:
    """The prompt of one bridge direction, as training encoded it (chat frame included).

    Args:
        direction: "text->structure" (give `text`) or "structure->text" (give the structure).
    """
    known = set(hypertokenizer.hypertokens).__contains__
    scene = Scene(id="bridge", doc="bridge", span=(0, len(text)), text=text, register=register,
                  fields=dict(fields or {}), markers=list(markers or []))
    sample = next(f for f in bridge(scene, known) if f.direction == direction)
    return _encoder(hypertokenizer, profile).prompt_ids(sample)


def parse_structure(text: str) -> dict[str, Any]:
    """`{register, fields, markers, unparsed}` from a generated structure (see the module)."""
    body = text.replace(SCENE_OPEN, "")
    body = body.split(SCENE_CLOSE, 1)[0]
    register: str | None = None
    fields: dict[str, str] = {}
    markers: list[str] = []
    unparsed: list[str] = []
    # Split into (hypertoken, the text after it) runs; the run before the first token is plain.
    parts = _HYPER.split(body)
    runs = [(None, parts[0])] + [(parts[i], parts[i + 1]) for i in range(1, len(parts), 2)]
    for token, value in runs:
        if token is not None and token.startswith("reg:"):
            register = token[4:]
            value_lines = value
        elif token is not None and token.startswith("field:"):
            head, _, rest = value.partition("\n")
            fields[token[6:]] = head.strip()
            value_lines = rest
        elif token is not None and f"<|{token}|>" == MARKER:
            head, _, rest = value.partition("\n")
            if head.strip():
                markers.append(head.strip())
            value_lines = rest
        else:
            if token is not None:
                unparsed.append(f"<|{token}|>")
            value_lines = value
        for line in value_lines.splitlines():
            line = line.strip()
            if not line:
                continue
            match = _LINE.match(line)
            if match and match.group(1) == "register" and register is None:
                register = match.group(2).strip() or None
            elif match:
                fields.setdefault(match.group(1), match.group(2).strip())
            else:
                unparsed.append(line)
    return {"register": register, "fields": fields, "markers": markers,
            "unparsed": " ".join(unparsed)[:2000]}


def _generate(backend: Any, ids: list[int], max_tokens: int) -> Any:
    return backend.generate(GenerationRequest(prompt_ids=ids, max_tokens=max_tokens,
                                              temperature=0.0).validate())


def _answer_text(hypertokenizer: Any, result: Any) -> str:
    """The answer with hypertokens spelled out (from its ids where the backend gives them)."""
    ids = [int(i) for i in result.token_ids]
    if ids and max(ids) < len(hypertokenizer):
        return hypertokenizer.decode(ids)
    return str(result.text)


def encode(backend: Any, hypertokenizer: Any, profile: Any, text: str, max_tokens: int = 256
           ) -> tuple[dict[str, Any], str]:
    """Text → `(scene structure, the raw answer)` with the backend's active adapter."""
    ids = prompt_ids(hypertokenizer, profile, "text->structure", text=text)
    raw = _answer_text(hypertokenizer, _generate(backend, ids, max_tokens))
    return parse_structure(raw), raw


def decode(backend: Any, hypertokenizer: Any, profile: Any, scene: dict[str, Any],
           max_tokens: int = 256) -> str:
    """Scene structure (`register`, `fields`, `markers`) → its text, with the active adapter."""
    ids = prompt_ids(hypertokenizer, profile, "structure->text",
                     register=scene.get("register"), fields=scene.get("fields") or {},
                     markers=scene.get("markers") or [])
    result = _generate(backend, ids, max_tokens)
    text = hypertokenizer.decode([int(i) for i in result.token_ids], skip_hypertokens=True) \
        if result.token_ids and max(result.token_ids) < len(hypertokenizer) else result.text
    return str(text).replace(SCENE_CLOSE, "").strip()
