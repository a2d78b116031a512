"""The gateway on the real default model (SmolLM2-135M Q4_1 on llama.cpp): JSON-schema answers
parse and fit their schema, and lm-evaluation-harness's `local-completions` scores the small
local task through `/v1/completions` within 1% of the same task scored on the engine directly
(a second llama.cpp backend in this process, no HTTP). Slow: it loads the real model."""

from __future__ import annotations

import json

import numpy as np
import openai
import pytest

from tests.http.conftest import LiveGateway

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_live(tmp_path_factory):
    home = tmp_path_factory.mktemp("http-default")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HYPERLEX_HOME", str(home))
        gateway = LiveGateway(home, profile="default")
        try:
            gateway.wait_ready(timeout=300)
            yield gateway
        finally:
            gateway.close()


def test_json_schema_answers_parse_and_fit_the_schema(default_live):
    client = openai.OpenAI(base_url=default_live.url + "/v1", api_key=default_live.user,
                           max_retries=0)
    schema = {"type": "object", "additionalProperties": False, "required": ["city", "country"],
              "properties": {"city": {"type": "string", "maxLength": 40},
                             "country": {"type": "string", "maxLength": 40}}}
    reply = client.chat.completions.create(
        model="base", max_tokens=80, temperature=0,
        messages=[{"role": "user", "content": "Name a city and its country."}],
        response_format={"type": "json_schema", "json_schema": {"name": "place",
                                                                "schema": schema}})
    data = json.loads(reply.choices[0].message.content)
    assert set(data) == {"city", "country"}
    assert all(isinstance(v, str) and len(v) <= 40 for v in data.values())


def test_lm_eval_through_http_is_within_1_percent_of_the_engine(default_live, tmp_path,
                                                                monkeypatch):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from engine.evals.harness import engine_lm, local_task
    from engine.inference import open_backend
    from engine.profiles import load_profile

    task = local_task(tmp_path / "tasks")
    manager = TaskManager(include_path=str(tmp_path / "tasks"))
    monkeypatch.setenv("OPENAI_API_KEY", default_live.user)
    through_http = simple_evaluate(
        model="local-completions", tasks=[task], task_manager=manager, num_fewshot=0,
        model_args={"model": default_live.gateway.base_id(),
                    "base_url": default_live.url + "/v1/completions",
                    "tokenizer_backend": "remote", "auth_token": default_live.user,
                    "num_concurrent": 1, "max_retries": 1, "tokenized_requests": True},
        log_samples=True)
    backend = open_backend(load_profile("default"))
    try:
        direct = simple_evaluate(model=engine_lm(backend), tasks=[task], task_manager=manager,
                                 num_fewshot=0, log_samples=True)
    finally:
        backend.close()
    http_acc = through_http["results"][task]["acc,none"]
    engine_acc = direct["results"][task]["acc,none"]
    http_ll = [float(x[0][0]) for s in through_http["samples"][task] for x in s["resps"]]
    engine_ll = [float(x[0][0]) for s in direct["samples"][task] for x in s["resps"]]
    gap = max(abs(a - b) for a, b in zip(http_ll, engine_ll, strict=True))
    print(f"\nlm-eval {task} on SmolLM2-135M Q4_1: acc through /v1/completions {http_acc:.4f}, "
          f"engine directly {engine_acc:.4f}; max |loglikelihood difference| {gap:.2e}")
    assert engine_acc > 1 / 3  # the real model does better than chance on easy questions
    assert abs(http_acc - engine_acc) <= 0.01 * engine_acc
    assert np.allclose(http_ll, engine_ll, rtol=0.01, atol=1e-2)
