"""`/v1/completions` with `echo` + `logprobs` gives the engine's own log-probabilities, token for
token, and lm-evaluation-harness's `local-completions` model scores a local loglikelihood task
through it to the figure the engine gives directly (`engine.evals.harness`)."""

from __future__ import annotations

import math

import numpy as np
import openai
import pytest


@pytest.fixture
def client(live):
    return openai.OpenAI(base_url=live.url + "/v1", api_key=live.user, max_retries=0)


def _engine(live, work):
    """Run `work(backend, adapters, profile)` on the daemon's chat thread (its loaded model)."""
    return live.gateway.on_model(work).result.result(timeout=120)


def test_echo_logprobs_are_the_engine_log_probabilities_of_every_prompt_token(live, client):
    from engine.evals.loss import token_logprobs

    def ids_and_truth(backend, adapters, profile):
        backend.set_active("base")
        ids = backend.tokenize("The river runs to the sea, and the sea is wide.")
        return ids, token_logprobs(backend, ids)

    ids, truth = _engine(live, ids_and_truth)
    reply = client.completions.create(model="base", prompt=ids, max_tokens=1, echo=True,
                                      logprobs=2, temperature=0)
    choice = reply.choices[0]
    values = choice.logprobs.token_logprobs
    assert len(values) == len(ids) + 1 and values[0] is None  # the prompt, then one token
    assert np.allclose(values[1:len(ids)], truth, atol=1e-4)
    tops = choice.logprobs.top_logprobs
    assert tops[0] is None and all(1 <= len(t) <= 2 for t in tops[1:])
    # the greedy token's log-probability is the best of its position
    assert math.isclose(values[-1], max(tops[-1].values()), abs_tol=1e-6)
    assert reply.usage.prompt_tokens == len(ids) and reply.usage.completion_tokens == 1
    # Text prompts, and several at once, in order; max_tokens=0 scores the prompt alone.
    many = client.completions.create(model="base", prompt=["one two", "three four five"],
                                     max_tokens=0, echo=True, logprobs=0)
    assert [c.index for c in many.choices] == [0, 1]
    assert [c.text for c in many.choices] == ["one two", "three four five"]
    assert many.usage.completion_tokens == 0


def test_plain_completions_generate_and_an_adapter_changes_the_scores(live, client,
                                                                      loud_adapters):
    reply = live.post("/v1/adapters/load", {"name": "score-a",
                                            "path": str(loud_adapters["loud-a"])}, admin=True)
    assert reply.status_code == 200, reply.text
    text = client.completions.create(model="base", prompt="Once upon a time", max_tokens=6,
                                     temperature=0)
    assert text.choices[0].text and text.usage.completion_tokens >= 1
    args = dict(prompt="Once upon a time", max_tokens=0, echo=True, logprobs=1)
    base = client.completions.create(model="base", **args).choices[0].logprobs
    lora = client.completions.create(model="score-a", **args).choices[0].logprobs
    assert base.tokens == lora.tokens
    assert not np.allclose(base.token_logprobs[1:], lora.token_logprobs[1:], atol=1e-3)


def test_bad_completion_requests_are_clear_errors(live, client):
    with pytest.raises(openai.BadRequestError) as outside:
        client.completions.create(model="base", prompt=[10**9], max_tokens=1)
    assert "vocabulary" in outside.value.message
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model="base", prompt="word " * 10, max_tokens=100_000)
    assert "window" in too_long.value.message
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="route", prompt="x", max_tokens=1)


def test_lm_eval_local_completions_scores_as_the_engine_does(live, tmp_path, monkeypatch):
    """The must-show figure: lm-eval through /v1/completions against lm-eval on the engine."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from engine.evals.harness import engine_lm, local_task

    task = local_task(tmp_path / "tasks")
    manager = TaskManager(include_path=str(tmp_path / "tasks"))
    monkeypatch.setenv("OPENAI_API_KEY", live.user)
    through_http = simple_evaluate(
        model="local-completions", tasks=[task], task_manager=manager, num_fewshot=0,
        model_args={"model": live.gateway.base_id(), "base_url": live.url + "/v1/completions",
                    "tokenizer_backend": "remote", "auth_token": live.user,
                    "num_concurrent": 1, "max_retries": 1, "tokenized_requests": True},
        log_samples=True)

    def direct(backend, adapters, profile):
        return simple_evaluate(model=engine_lm(backend), tasks=[task], task_manager=manager,
                               num_fewshot=0, log_samples=True)

    engine = _engine(live, direct)
    http_acc = through_http["results"][task]["acc,none"]
    engine_acc = engine["results"][task]["acc,none"]
    assert abs(http_acc - engine_acc) <= 0.01 * engine_acc or http_acc == engine_acc
    # Not only the accuracy: every choice's loglikelihood agrees.
    # resps: per choice, [(loglikelihood, is_greedy)]
    http_ll = [float(x[0][0]) for s in through_http["samples"][task] for x in s["resps"]]
    engine_ll = [float(x[0][0]) for s in engine["samples"][task] for x in s["resps"]]
    assert len(http_ll) == len(engine_ll) == 24 * 3
    assert np.allclose(http_ll, engine_ll, rtol=0.01, atol=1e-3)
    print(f"\nlm-eval {task}: acc through /v1/completions {http_acc:.4f}, engine directly "
          f"{engine_acc:.4f}; max |loglikelihood difference| "
          f"{max(abs(a - b) for a, b in zip(http_ll, engine_ll, strict=True)):.2e}")
