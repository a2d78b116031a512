"""The official `openai` client, sync and async, against a live gateway on loopback: it lists the
models, streams a chat, chats with an adapter by name, and the base and the adapter answer
differently at temperature 0."""

from __future__ import annotations

import asyncio
import hashlib

import openai
import pytest

PROMPT = [{"role": "user", "content": "Tell me about the river."}]


@pytest.fixture(scope="module")
def loaded(live, loud_adapters):
    """loud-a and loud-b loaded over HTTP (admin key), then served as models."""
    for name, path in loud_adapters.items():
        reply = live.post("/v1/adapters/load", {"name": name, "path": str(path)}, admin=True)
        assert reply.status_code == 200, reply.text
        assert reply.json()["rank"] == 4
    return loud_adapters


@pytest.fixture
def client(live):
    return openai.OpenAI(base_url=live.url + "/v1", api_key=live.user, max_retries=0)


def test_models_lists_the_base_route_and_every_adapter_with_its_parent(live, loaded, client):
    models = {m.id: m for m in client.models.list().data}
    base = live.gateway.base_id()
    assert {base, "route", "loud-a", "loud-b"} <= set(models)
    card = models["loud-a"].model_dump()
    assert card["parent"] == base and card["kind"] == "adapter"
    assert card["root"] == str(loaded["loud-a"].resolve())
    weights = loaded["loud-a"] / "adapter_model.safetensors"
    assert card["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert card["rank"] == 4 and card["lora_alpha"] == 8
    assert set(card["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert models[base].model_dump()["parent"] is None
    assert models["route"].model_dump()["parent"] == base


def test_a_stream_is_the_same_answer_as_a_whole_one_with_usage_last(live, client):
    whole = client.chat.completions.create(model="base", messages=PROMPT, max_tokens=12,
                                           temperature=0)
    chunks = list(client.chat.completions.create(
        model="base", messages=PROMPT, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.usage is not None for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens > 0
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens > 0
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    # Without include_usage no chunk carries usage at all.
    plain = list(client.chat.completions.create(model="base", messages=PROMPT, max_tokens=4,
                                                temperature=0, stream=True))
    assert all(c.usage is None for c in plain) and all(c.choices for c in plain)


def test_an_adapter_by_name_answers_otherwise_than_the_base_at_temperature_0(live, loaded,
                                                                              client):
    def answer(model: str) -> tuple[str, object]:
        reply = client.chat.completions.create(model=model, messages=PROMPT, max_tokens=12,
                                               temperature=0)
        return reply.choices[0].message.content, reply.model_extra["hyperlex"]["adapter"]

    base, base_side = answer("base")
    a, a_side = answer("loud-a")
    b, _ = answer("loud-b")
    assert base_side == "base" and a_side == "loud-a"
    assert len({base, a, b}) == 3, (base, a, b)
    assert answer("loud-a")[0] == a and answer("base")[0] == base  # deterministic, no leak
    # Streaming uses the adapter too (an SSE answer is the adapter's, not the base's).
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="loud-a", messages=PROMPT, max_tokens=12, temperature=0, stream=True)
        if c.choices)
    assert streamed == a


def test_the_async_client_lists_streams_and_uses_adapters(live, loaded):
    async def run() -> tuple[set[str], str, str, str]:
        client = openai.AsyncOpenAI(base_url=live.url + "/v1", api_key=live.user,
                                    max_retries=0)
        models = {m.id async for m in client.models.list()}
        stream = await client.chat.completions.create(
            model="loud-b", messages=PROMPT, max_tokens=10, temperature=0, stream=True)
        streamed = "".join([c.choices[0].delta.content or "" async for c in stream
                            if c.choices])
        whole = await client.chat.completions.create(model="loud-b", messages=PROMPT,
                                                     max_tokens=10, temperature=0)
        base = await client.chat.completions.create(model="base", messages=PROMPT,
                                                    max_tokens=10, temperature=0)
        await client.close()
        return (models, streamed, whole.choices[0].message.content,
                base.choices[0].message.content)

    models, streamed, whole, base = asyncio.run(run())
    assert {"loud-a", "loud-b", "route"} <= models
    assert streamed == whole and whole != base


def test_concurrent_async_chats_each_get_their_own_answer(live, loaded):
    async def run() -> list[str]:
        client = openai.AsyncOpenAI(base_url=live.url + "/v1", api_key=live.user,
                                    max_retries=0)
        replies = await asyncio.gather(*[client.chat.completions.create(
            model=model, messages=PROMPT, max_tokens=8, temperature=0)
            for model in ("base", "loud-a", "loud-b")])
        await client.close()
        return [r.choices[0].message.content for r in replies]

    base, a, b = asyncio.run(run())
    one = openai.OpenAI(base_url=live.url + "/v1", api_key=live.user, max_retries=0)
    alone = one.chat.completions.create(model="loud-a", messages=PROMPT, max_tokens=8,
                                        temperature=0).choices[0].message.content
    assert a == alone and len({base, a, b}) == 3


def test_unknown_model_and_bad_requests_are_openai_errors(live, client):
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", messages=PROMPT, max_tokens=4)
    assert "nope" in missing.value.message and "/v1/models" in str(missing.value.body)
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="base", messages=PROMPT, max_tokens=0)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="base", max_tokens=4, messages=[
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    wrong = openai.OpenAI(base_url=live.url + "/v1", api_key="hlx-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


def test_json_schema_on_a_backend_without_it_is_refused_with_what_to_do(live, client):
    """The tiny model is served by transformers, which has no grammar: 400, never free text
    passed off as JSON (the llama.cpp path is checked on the default model, slow)."""
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}}}
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="base", messages=PROMPT, max_tokens=40, temperature=0,
            response_format={"type": "json_schema",
                             "json_schema": {"name": "who", "schema": schema}})
    assert "llamacpp" in refused.value.message


def test_embeddings_float_and_base64_agree_and_are_unit_vectors(live, client):
    import numpy as np

    floats = client.embeddings.create(model="all-MiniLM-L6-v2", input=["a cat", "a dog"],
                                      encoding_format="float")
    packed = client.embeddings.create(model="default", input=["a cat", "a dog"])  # base64
    a = np.array([d.embedding for d in floats.data])
    b = np.array([d.embedding for d in packed.data])
    assert a.shape == (2, 384) and np.allclose(a, b, atol=1e-6)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-4)
    assert floats.usage.prompt_tokens > 0
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-large", input="x")
