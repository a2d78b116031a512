"""The gateway's scene routes: embeddings (the scene embedder) and the bridge (a bridge adapter).

Embeddings come from the daemon's one loaded copy of the profile's embedder (MiniLM by default),
the same one its scene memories search with, so a client's vectors are comparable with theirs.
The bridge runs on the chat thread like any other work on the model, with the adapter named by
`model` active and the hypertokenizer it was trained with (saved beside it), so its prompts are
the ones it learned. Knows the gateway, the engine's bridge and the daemon's loaded objects.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from daemon.http import schemas as s
from daemon.http.completions import activate
from daemon.http.gateway import Gateway, GatewayError

_tokenizers: dict[str, Any] = {}
_tokenizers_lock = threading.Lock()


def embedder_names(spec: str) -> set[str]:
    """The names a client may give `model` for the embedder `spec`."""
    tail = spec.split(":", 1)[-1]
    names = {spec, tail, Path(tail).name, "default", "embedder"}
    if "minilm" in tail.lower():
        names |= {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
    return names


def embed(gateway: Gateway, body: s.EmbeddingRequest) -> s.EmbeddingList:
    """OpenAI's embeddings of one text or many (L2-normalised float vectors).

    Raises:
        GatewayError: 404 for a `model` that is not the served embedder, 400 for no input.
    """
    from daemon import loaded
    from engine.memory.scene_memory import MemoryConfig

    spec = MemoryConfig.from_profile(gateway.profile).embedder
    if body.model is not None and body.model not in embedder_names(spec):
        raise GatewayError(404, f"the embedding model {body.model!r} is not served",
                           kind="model_not_found", param="model",
                           hint=f"leave `model` out, or name {spec.split(':', 1)[-1]!r}")
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    if not texts:
        raise GatewayError(400, "input is empty", param="input")
    model = loaded.embedder(spec)
    vectors = model.encode(texts)
    counted = sum(len(ids) for ids in model.tokenizer(texts, truncation=True,
                                                       max_length=model.max_length)["input_ids"])
    if body.encoding_format == "base64":
        rows: list[Any] = [base64.b64encode(np.asarray(row, dtype="<f4").tobytes()).decode()
                           for row in vectors]
    else:
        rows = [[float(x) for x in row] for row in vectors]
    return s.EmbeddingList(
        data=[s.Embedding(index=i, embedding=row) for i, row in enumerate(rows)],
        model=spec.split(":", 1)[-1], usage=s.EmbeddingUsage(prompt_tokens=counted,
                                                              total_tokens=counted))


def hypertokenizer_for(adapter_dir: str, profile: Any) -> Any:
    """The hypertokenizer an adapter was trained with (saved beside it), else the profile's."""
    from engine.tokenizer import Hypertokenizer
    from engine.tokenizer.hypertokenizer import MANIFEST

    with _tokenizers_lock:
        if adapter_dir not in _tokenizers:
            saved = Path(adapter_dir)
            _tokenizers[adapter_dir] = (Hypertokenizer.load(saved) if (saved / MANIFEST).is_file()
                                        else Hypertokenizer.from_profile(profile))
        return _tokenizers[adapter_dir]


def bridge_work(kind: str, body: Any, adapter: dict[str, Any] | None
                ) -> Callable[[Any, Any, Any], Any]:
    """`encode` (text → `(scene, raw)`) or `decode` (scene → text) as work on the model.

    Raises:
        GatewayError: 400 when `model` is the base (the bridge is an adapter's skill).
    """
    if adapter is None:
        raise GatewayError(400, "the bridge needs a bridge adapter as `model`, not the base",
                           param="model", hint="GET /v1/models lists the adapters; train one "
                                               "with training.mode = \"bridge\"")

    def run(backend: Any, adapters: Any, profile: Any) -> Any:
        from engine.inference import bridge

        activate(backend, adapters, adapter)
        tokenizer = hypertokenizer_for(adapter["path"], profile)
        if kind == "encode":
            return bridge.encode(backend, tokenizer, profile, body.text, body.max_tokens)
        return bridge.decode(backend, tokenizer, profile, body.scene.model_dump(by_alias=True),
                             body.max_tokens)

    return run
