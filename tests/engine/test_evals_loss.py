"""Held-out loss, the sides of a comparison and the eval run, on the tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from engine.errors import NotAvailableError
from engine.evals.loss import aggregate_loss, loss_values, token_logprobs
from engine.evals.records import EvalRecord, read_records
from engine.types import Sample

IGNORE = -100
STEPS = 8  # tiny-test checkpoints every 4 steps: two checkpoints for the sweep


def _record(nll: float, tokens: int, nbytes: int, register: str | None = None) -> EvalRecord:
    values = {"nll": nll, "tokens": tokens, "bytes": nbytes, "seq_nll": 2 * nll,
              "seq_tokens": 2 * tokens, "seq_bytes": 2 * nbytes, "field_nll": nll / 2,
              "field_tokens": tokens // 2, "text_nll": nll / 2, "text_tokens": tokens - tokens // 2}
    return EvalRecord("x", "s", "loss", register=register, values=values)


def test_corpus_perplexity_is_a_ratio_of_sums_not_a_mean_of_perplexities():
    # Example 1: 2 tokens, NLL 2.0 (ppl e^1); example 2: 8 tokens, NLL 24.0 (ppl e^3).
    # Corpus: exp((2 + 24) / (2 + 8)) = exp(2.6); a mean of perplexities would be (e + e^3) / 2.
    records = [_record(2.0, 2, 5, "logic"), _record(24.0, 8, 30, "emotion")]
    out = aggregate_loss(records)
    assert out["ppl"] == pytest.approx(math.exp(2.6))
    assert out["ppl"] != pytest.approx((math.e + math.e ** 3) / 2)
    # bits per byte: 26 nats / (ln 2 * 35 bytes)
    assert out["bpb"] == pytest.approx(26 / (math.log(2) * 35))
    assert out["seq_ppl"] == pytest.approx(math.exp(52 / 20))
    assert out["ppl[logic]"] == pytest.approx(math.e)
    assert out["ppl[emotion]"] == pytest.approx(math.exp(3))
    assert out["tokens"] == 10


def test_loss_values_take_only_answer_tokens_as_training_does():
    # ids 0..4; labels mask the first three; the targets are positions 1..4.
    sample = Sample(input_ids=[5, 6, 7, 8, 9], labels=[IGNORE, IGNORE, IGNORE, 8, 9],
                    field_mask=[False, False, False, True, False])
    logprobs = np.log(np.array([0.5, 0.25, 0.5, 0.125]))  # predicting 6, 7, 8, 9
    values = loss_values(sample, logprobs, lambda ids: "ab" * len(ids))
    assert values["tokens"] == 2
    assert values["nll"] == pytest.approx(-math.log(0.5) - math.log(0.125))
    assert values["field_tokens"] == 1 and values["field_nll"] == pytest.approx(math.log(2))
    assert values["text_tokens"] == 1 and values["text_nll"] == pytest.approx(math.log(8))
    assert values["seq_tokens"] == 4
    assert values["seq_nll"] == pytest.approx(-np.log([0.5, 0.25, 0.5, 0.125]).sum())
    assert values["bytes"] == 4 and values["seq_bytes"] == 8


def test_a_backend_without_prompt_logprobs_is_refused_not_scored():
    class NoLogits:
        name = "openai"

        def logits(self, ids, all_positions=False):
            raise NotAvailableError("OpenAI-compatible servers do not return full logits")

    with pytest.raises(NotAvailableError, match="perplexity needs the log-probability"):
        token_logprobs(NoLogits(), [1, 2, 3])


@pytest.fixture
def tiny_run(tmp_path: Path) -> Path:
    from engine.profiles import load_profile
    from engine.training import RunConfig, main

    result = main(RunConfig(profile=load_profile("tiny-test"), run_dir=tmp_path / "run",
                            max_steps=STEPS))
    assert result.adapter_dir is not None
    return tmp_path / "run"


def _independent_perplexity(run: Path, which: str) -> tuple[float, int]:
    """exp(ΣNLL/Σtokens) with plain transformers + PEFT: the model's own loss on each sample."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from engine.data import build_training_data
    from engine.evals.compare import trained_profile
    from engine.models import hf_model_dir
    from engine.profiles import load_profile
    from engine.tokenizer import Hypertokenizer, resize_embeddings
    from engine.training.recipe import load_scenes

    card = json.loads((run / "adapter" / "hyperlex_run_card.json").read_text())
    profile = trained_profile(load_profile("tiny-test"), card)
    hypertokenizer = Hypertokenizer.load(run / "adapter")
    scenes, _ = load_scenes(None, profile, hypertokenizer)
    samples = build_training_data(profile, hypertokenizer, scenes, card["mode"]).held_out
    model = AutoModelForCausalLM.from_pretrained(hf_model_dir(profile.model.base),
                                                 dtype=torch.float32)
    resize_embeddings(model, hypertokenizer)
    if which == "adapter":
        model = PeftModel.from_pretrained(model, run / "adapter")
    model.eval()
    total_nll, total_tokens = 0.0, 0
    with torch.no_grad():
        for sample in samples:
            labels = torch.tensor([sample.labels])
            count = int((labels[0, 1:] != IGNORE).sum())
            out = model(input_ids=torch.tensor([sample.input_ids]), labels=labels)
            total_nll += float(out.loss) * count
            total_tokens += count
    return math.exp(total_nll / total_tokens), len(samples)


def test_records_perplexity_equals_plain_transformers_and_peft(tiny_run: Path, tmp_path: Path):
    from engine.evals.compare import EvalConfig, run_eval
    from engine.profiles import load_profile

    result = run_eval(EvalConfig(profile=load_profile("tiny-test"),
                                 adapters=[("tuned", tiny_run / "adapter")], tasks=("loss",),
                                 n_resamples=200, out_dir=tmp_path / "report"))
    records = list(read_records(tmp_path / "report" / "records.jsonl"))
    for side in ("base", "tuned"):
        mine = [r for r in records if r.side == side and r.task == "loss"]
        from_records = math.exp(sum(r.values["nll"] for r in mine)
                                / sum(r.values["tokens"] for r in mine))
        expected, n = _independent_perplexity(tiny_run, "adapter" if side == "tuned" else "base")
        assert len(mine) == n
        assert from_records == pytest.approx(expected, rel=0.005)
        assert result.metrics["metrics"][side]["loss.ppl"] == pytest.approx(from_records)
    ids = [r.example_id for r in records if r.side == "base"]
    assert len(set(ids)) == len(ids)
    tuned_sha = {r.adapter_sha256 for r in records if r.side == "tuned"}
    assert len(tuned_sha) == 1 and len(next(iter(tuned_sha))) == 64
    assert {r.adapter_sha256 for r in records if r.side == "base"} == {None}
    diff = next(d for d in result.metrics["differences"] if d["metric"] == "loss.ppl")
    assert diff["a"] == "base" and diff["b"] == "tuned" and diff["n"] == len(ids)
    assert diff["low"] <= diff["delta"] <= diff["high"]


def test_an_adapter_that_changes_nothing_is_refused_as_a_side(tmp_path: Path):
    """An untrained adapter (LoRA B = 0, rows as initialised) has the base's logits: comparing
    it would measure the base against itself, so the eval refuses it."""
    from engine.evals.compare import EvalConfig, run_eval
    from engine.evals.sides import SidesError
    from engine.profiles import load_profile
    from engine.tokenizer import Hypertokenizer
    from engine.training.model import Placement, build_model

    profile = load_profile("tiny-test")
    hypertokenizer = Hypertokenizer.from_profile(profile)
    untrained = build_model(profile, hypertokenizer, Placement("cpu", "fp32"))
    noop = tmp_path / "noop"
    untrained.save_pretrained(noop, save_embedding_layers=False)
    hypertokenizer.save(noop)
    with pytest.raises(SidesError, match="gives the base's logits"):
        run_eval(EvalConfig(profile=profile, adapters=[("noop", noop)], tasks=("loss",),
                            n_resamples=50))


def test_a_sweep_scores_every_checkpoint_and_its_last_matches_the_adapter(
        tiny_run: Path, tmp_path: Path):
    from engine.evals.compare import EvalConfig, run_eval
    from engine.profiles import load_profile

    result = run_eval(EvalConfig(profile=load_profile("tiny-test"), sweep=tiny_run,
                                 tasks=("loss",), n_resamples=100, out_dir=tmp_path / "out"))
    sweep = result.metrics["sweep"]
    steps = [point["step"] for point in sweep]
    assert steps == sorted(steps) and steps[-1] == STEPS and len(steps) >= 2
    final = run_eval(EvalConfig(profile=load_profile("tiny-test"),
                                adapters=[("final", tiny_run / "adapter")], tasks=("loss",),
                                n_resamples=50))
    assert sweep[-1]["metrics"]["loss.ppl"] == pytest.approx(
        final.metrics["metrics"]["final"]["loss.ppl"], rel=1e-6)
    assert sweep[0]["metrics"]["loss.ppl"] != pytest.approx(sweep[-1]["metrics"]["loss.ppl"])


def test_the_bridge_way_out_splices_written_structure_into_the_way_back():
    from engine.evals.reversibility import _prompt_ids, _splice_structure

    # prompt: [instruction 1 2] [structure 7 8 9] [between 3]; answer 5 6
    sample = Sample(input_ids=[1, 2, 7, 8, 9, 3, 5, 6],
                    labels=[IGNORE] * 6 + [5, 6],
                    field_mask=[False, False, True, True, True, False, False, False])
    assert _prompt_ids(sample) == [1, 2, 7, 8, 9, 3]
    assert _splice_structure(sample, [40, 41]) == [1, 2, 40, 41, 3]
    broken = Sample(input_ids=sample.input_ids, labels=sample.labels,
                    field_mask=[False, True, False, True, True, False, False, False])
    assert _splice_structure(broken, [40]) is None
