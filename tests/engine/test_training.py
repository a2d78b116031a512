"""The training recipe on the tiny model: resume, packing and DDP equivalence, precisions, outputs."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.errors import ConfigError, DataError
from engine.profiles import load_profile
from engine.training import STOPPED_EXIT_CODE, LoRARecipe, RunConfig, main

TOLERANCE = 1e-4
PYTHON = sys.executable
ROOT = Path(__file__).resolve().parents[2]
BASE_KNOBS = {"max_seq_len": 160, "batch_size": 2, "eval_every": 0, "checkpoint_every": 0,
              "warmup_steps": 2}


@pytest.fixture
def make_profile(tmp_path: Path):
    """Factory: a profile file extending tiny-test with [section] overrides."""
    def make(name: str = "t", **sections: dict) -> Path:
        # One thread: the tiny model's matrices are too small to gain from more, and on a busy
        # machine a second thread waiting for a core made each step twenty times slower.
        device = {"threads": 1, **sections.pop("device", {})}
        sections = {"training": {**BASE_KNOBS, **sections.pop("training", {})}, "device": device,
                    **sections}
        lines = ['extends = "tiny-test"', f'name = "{name}"']
        for section, values in sections.items():
            lines.append(f"[{section}]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
        path = tmp_path / f"{name}.toml"
        path.write_text("\n".join(lines) + "\n")
        return path
    return make


def run(profile_path: Path, run_dir: Path, **kwargs) -> tuple[object, list[dict]]:
    events: list[dict] = []
    result = main(RunConfig(profile=load_profile(profile_path), run_dir=run_dir,
                            on_event=events.append, **kwargs))
    return result, events


def step_losses(events: list[dict]) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in events if e["event"] == "step"}


def test_resume_matches_an_uninterrupted_run(make_profile, tmp_path):
    profile = make_profile(training={"max_steps": 24, "checkpoint_every": 10},
                           lora={"dropout": 0.1})  # dropout: the RNG must be restored too
    whole, whole_events = run(profile, tmp_path / "whole")
    stopped, _ = run(profile, tmp_path / "cut", stop_at_step=20)
    assert stopped.stopped and stopped.adapter_dir is None
    resumed, resumed_events = run(profile, tmp_path / "cut", resume=True)
    expected, got = step_losses(whole_events), step_losses(resumed_events)
    assert sorted(got) == list(range(21, 25))
    for step in got:
        assert abs(got[step] - expected[step]) < TOLERANCE, step
    assert abs(resumed.eval_loss - whole.eval_loss) < TOLERANCE
    assert resumed.final_loss < step_losses(whole_events)[1]  # it learned something


def test_gradient_checkpointing_redraws_the_same_dropout_positions(make_profile, tmp_path):
    # The recomputed forward draws its LoRA dropout positions again; checkpointing restores the
    # RNG state first, so the run is the same run (a different draw would change the gradients).
    knobs = {"max_steps": 4}
    plain = make_profile("plain", training=knobs, lora={"dropout": 0.2})
    recomputed = make_profile("ckpt", training={**knobs, "gradient_checkpointing": True},
                              lora={"dropout": 0.2})
    _, plain_events = run(plain, tmp_path / "plain")
    _, ckpt_events = run(recomputed, tmp_path / "ckpt")
    expected, got = step_losses(plain_events), step_losses(ckpt_events)
    assert sorted(got) == [1, 2, 3, 4]
    for step in got:
        assert abs(got[step] - expected[step]) < TOLERANCE, step
    assert expected[4] != expected[1]


def test_resume_refuses_another_profile(make_profile, tmp_path):
    first = make_profile("a", training={"max_steps": 2, "checkpoint_every": 1})
    run(first, tmp_path / "run", stop_at_step=1)
    other = make_profile("b", training={"max_steps": 2, "learning_rate": 0.5})
    with pytest.raises(ConfigError, match=r"training\.learning_rate: 0\.001 \(run\) vs 0\.5"):
        run(other, tmp_path / "run", resume=True)


def test_packed_loss_equals_unpacked_losses(make_profile, tmp_path):
    from engine.data import collate, pack_samples
    from engine.training.loss import summarise

    recipe = LoRARecipe(RunConfig(profile=load_profile(make_profile()), run_dir=tmp_path / "r"))
    recipe.setup()
    try:
        model = recipe.loss_model.eval()
        samples = recipe.data.train[:6]
        packs = pack_samples(samples, max_seq_len=4 * 160, seed=1)
        assert any(len(p.members) > 1 for p in packs)
        with torch.no_grad():
            packed = model(collate(samples, packs, recipe.pad_id))["stats"]
            singles = [model(collate([s], pack_samples([s], 160, 0), recipe.pad_id))["stats"]
                       for s in samples]
        unpacked = torch.stack(singles).sum(0)
        assert packed[0] == unpacked[0]  # the same labelled tokens
        assert abs(summarise(packed.tolist())["loss"]
                   - summarise(unpacked.tolist())["loss"]) < TOLERANCE
        per_sample_means = [float(s[1] / s[0]) for s in singles]
        print("packed loss", summarise(packed.tolist())["loss"], "unpacked", per_sample_means)
    finally:
        recipe.cleanup()


def test_per_sample_attention_matches_one_masked_call_per_row(make_profile, tmp_path):
    from engine.data import collate, pack_samples
    from engine.training.attention import PACKED_ATTENTION, sample_spans

    recipe = LoRARecipe(RunConfig(profile=load_profile(make_profile()), run_dir=tmp_path / "r"))
    recipe.setup()
    try:
        model = recipe.loss_model.eval()
        assert model.per_sample_attention
        assert recipe.peft_model.get_base_model().config._attn_implementation == PACKED_ATTENTION
        samples = recipe.data.train[:8]
        packs = pack_samples(samples, max_seq_len=4 * 160, seed=1)
        batch = collate(samples, packs, recipe.pad_id)
        spans = sample_spans(batch["position_ids"])
        assert any(len(row) > 2 for row in spans)  # several samples, and padding, in a row
        assert all(row[0][0] == 0 and row[-1][1] == batch["input_ids"].shape[1] for row in spans)
        with torch.no_grad():
            per_sample = model(batch)["stats"]
            model.per_sample_attention = False  # the same model: SDPA with the packed mask
            masked = model(batch)["stats"]
        assert per_sample[0] == masked[0]
        assert torch.allclose(per_sample, masked, rtol=1e-5, atol=1e-4)
    finally:
        recipe.cleanup()


@pytest.mark.parametrize("rows", ["trainable_tokens", "modules_to_save", "none"])
def test_fused_head_and_loss_match_the_modules_peft_built(make_profile, tmp_path, rows):
    """Same losses and the same gradient on every trainable tensor, fused or not."""
    from engine.data import collate, pack_samples
    from engine.training.head import resolve_rows
    from engine.training.loss import LossModel

    profile = make_profile(tokenizer={"train_new_rows": rows})
    recipe = LoRARecipe(RunConfig(profile=load_profile(profile), run_dir=tmp_path / "r"))
    recipe.setup()
    try:
        base = recipe.peft_model.get_base_model()
        head = resolve_rows(base.get_output_embeddings(), torch.nn.Linear)
        embeddings = resolve_rows(base.get_input_embeddings(), torch.nn.Embedding)
        assert head is not None and (head.deltas is not None) == (rows == "trainable_tokens")
        if rows == "modules_to_save":
            assert embeddings is None  # a trainable copy of the table: used as PEFT built it
        samples = recipe.data.train[:8]
        batch = collate(samples, pack_samples(samples, 4 * 160, seed=1), recipe.pad_id)
        trainable = {n: p for n, p in recipe.peft_model.named_parameters() if p.requires_grad}
        results = []
        for fused in (True, False):
            model = LossModel(recipe.peft_model, fused=fused)
            recipe.peft_model.zero_grad(set_to_none=True)
            torch.manual_seed(0)  # the same LoRA dropout masks for both
            out = model(batch)
            (out["loss_sum"] * 0.01).backward()
            results.append((out["stats"], {n: p.grad.clone() for n, p in trainable.items()
                                           if p.grad is not None}))
        (fused_stats, fused_grads), (plain_stats, plain_grads) = results
        assert torch.allclose(fused_stats, plain_stats, rtol=1e-5, atol=1e-4)
        assert fused_grads.keys() == plain_grads.keys() and fused_grads
        if rows == "trainable_tokens":
            assert any("trainable_tokens" in name for name in fused_grads)
        for name, grad in fused_grads.items():
            assert torch.allclose(grad, plain_grads[name], rtol=1e-4, atol=1e-6), name
    finally:
        recipe.cleanup()


def test_adapter_loads_in_plain_peft_and_outputs_are_written(make_profile, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.models import hf_model_dir

    recipe = LoRARecipe(RunConfig(profile=load_profile(make_profile(training={"max_steps": 4})),
                                  run_dir=tmp_path / "run"))
    recipe.setup()
    try:
        result = recipe.train()
    finally:
        recipe.cleanup()
    adapter = result.adapter_dir
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    base = AutoModelForCausalLM.from_pretrained(hf_model_dir("tiny:llama"))
    base.resize_token_embeddings(len(tokenizer))
    loaded = PeftModel.from_pretrained(base, adapter).eval()
    ids = torch.tensor([recipe.data.held_out[0].input_ids])
    trained = recipe.peft_model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, trained(input_ids=ids).logits,
                              atol=1e-5)
    card = json.loads((result.run_dir / "run_card.json").read_text())
    assert card["data"]["data_sha256"] == recipe.data.data_sha256
    assert card["metrics"]["steps"] == 4 and card["metrics"]["eval_loss"] == result.eval_loss
    trained_evals = [loss for step, loss in card["metrics"]["evaluations"] if step > 0]
    assert card["metrics"]["best_eval_loss"] == min(trained_evals)  # the final one counts too
    # The light eval: corpus perplexity exp(ΣNLL/Σtokens) = exp(mean held-out loss), and per
    # register, before and after.
    light = card["eval"]
    assert light["ppl"] == pytest.approx(math.exp(result.eval_loss), rel=1e-4)
    assert light["base_ppl"] == pytest.approx(math.exp(result.base_eval_loss), rel=1e-4)
    assert light["per_register_ppl"] and all(v > 1 for v in light["per_register_ppl"].values())
    assert (result.run_dir / "loss.png").read_bytes().startswith(b"\x89PNG")
    events = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3, 4]


@pytest.mark.parametrize("precision,layer", [("int8", "Linear8bitLt"), ("int4", "Linear4bit")])
def test_quantised_runs_complete_on_cpu(make_profile, tmp_path, precision, layer):
    profile = make_profile(precision, device={"precision": precision},
                           training={"max_steps": 3})
    recipe = LoRARecipe(RunConfig(profile=load_profile(profile), run_dir=tmp_path / "q"))
    recipe.setup()
    try:
        kinds = {type(m).__name__ for m in recipe.peft_model.modules()}
        assert layer in kinds
        result = recipe.train()
    finally:
        recipe.cleanup()
    assert result.eval_loss is not None and torch.isfinite(torch.tensor(result.eval_loss))
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()


def test_target_modules_that_match_nothing_list_real_names(make_profile, tmp_path):
    profile = make_profile(lora={"target_modules": ["q_proj", "query"]})
    with pytest.raises(ConfigError, match=r"\['query'\].*") as caught:
        run(profile, tmp_path / "r")
    assert "gate_proj" in str(caught.value)


def test_too_small_dataset_says_how_much_is_needed(make_profile, tmp_path):
    from tests.engine.test_data import make_scenes

    data = tmp_path / "scenes.jsonl"
    data.write_text("".join(json.dumps(s.to_dict()) + "\n" for s in make_scenes(1)))
    with pytest.raises(DataError, match=r"one step needs 4"):
        run(make_profile(training={"batch_size": 4}), tmp_path / "r", data=data)


def test_failed_checkpoint_write_keeps_the_previous_one(make_profile, tmp_path, monkeypatch):
    import safetensors.torch

    real_save = safetensors.torch.save_file
    calls = {"n": 0}

    def disk_full_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full_on_second)
    profile = make_profile(training={"max_steps": 5, "checkpoint_every": 2})
    result, events = run(profile, tmp_path / "r")
    saved = [e["step"] for e in events if e["event"] == "checkpoint"]
    assert saved == [2]
    assert any("checkpoint at step 4 failed: No space left" in e.get("message", "")
               for e in events)
    checkpoints = sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir())
    assert checkpoints == ["step-000002"]  # no half-written directory left behind
    assert result.adapter_dir is not None


def test_cuda_asked_without_cuda_falls_back_with_a_note():
    from engine.training.model import resolve_device

    placement = resolve_device("cuda", "fp32")
    if torch.cuda.is_available():
        assert placement.device.startswith("cuda")
    else:
        assert placement.device == "cpu" and "training on CPU instead" in placement.note


def test_daemon_command_streams_json_and_stops_cleanly_on_sigterm(make_profile, tmp_path):
    profile = make_profile(training={"max_steps": 12})
    command = [PYTHON, "-m", "engine.training.run", "--profile", str(profile),
               "--run-dir", str(tmp_path / "run"), "--progress-jsonl"]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    events = []
    for line in process.stdout:
        events.append(json.loads(line))  # every stdout line is JSON
        if events[-1]["event"] == "step" and events[-1]["step"] == 1:
            process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == STOPPED_EXIT_CODE
    checkpoint = next(e for e in events if e["event"] == "checkpoint")
    assert 1 <= checkpoint["step"] < 12 and Path(checkpoint["path"]).is_dir()
    first = next(e for e in events if e["event"] == "step")
    assert set(first) == {"event", "step", "max_steps", "loss", "lr", "tokens_per_s", "eta_s"}
    result, tail = run(profile, tmp_path / "run", resume=True)
    assert min(step_losses(tail)) == checkpoint["step"] + 1
    assert tail[-1]["event"] == "done" and result.adapter_dir.is_dir()


def test_two_processes_under_torchrun_match_one_with_the_same_global_batch(make_profile,
                                                                            tmp_path):
    common = {"max_steps": 4, "eval_every": 2}
    single = make_profile("single", training={**common, "batch_size": 2}, lora={"dropout": 0.0})
    double = make_profile("double", training={**common, "batch_size": 1}, lora={"dropout": 0.0})
    command = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "engine.training.run", "--profile", str(double),
               "--run-dir", str(tmp_path / "ddp"), "--progress-jsonl"]
    ddp = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT),
                                                 "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    ddp_events = [json.loads(line) for line in ddp.stdout.splitlines()]
    assert "2 process(es)" in next(e["message"] for e in ddp_events if e["event"] == "log"
                                   and "process(es)" in e["message"])
    one, one_events = run(single, tmp_path / "one")
    expected, got = step_losses(one_events), step_losses(ddp_events)
    assert sorted(got) == [1, 2, 3, 4]
    for step in got:
        assert abs(got[step] - expected[step]) < TOLERANCE, (step, got[step], expected[step])
    assert abs(ddp_events[-1]["eval_loss"] - one.eval_loss) < TOLERANCE
    assert len([e for e in ddp_events if e["event"] == "done"]) == 1  # rank 0 alone reports


@pytest.mark.parametrize("mode", ["bridge", "context"])
def test_every_mode_trains(make_profile, tmp_path, mode):
    result, events = run(make_profile(mode, training={"max_steps": 1, "max_seq_len": 256}),
                         tmp_path / "r", mode=mode)
    assert result.steps == 1 and result.adapter_dir.is_dir()
    card = json.loads((result.run_dir / "run_card.json").read_text())
    assert card["mode"] == mode and card["data"]["train_samples"] > 0
    evals = [e for e in events if e["event"] == "eval"]
    assert evals[0]["field_loss"] is not None and evals[0]["text_loss"] is not None


def test_gap_dropout_keeps_the_law_the_gradient_and_the_seed():
    from engine.training.dropout import GapDropout

    dropout = GapDropout(0.05)
    assert isinstance(dropout, torch.nn.Dropout) and "p=0.05" in repr(dropout)
    x = torch.ones(1_000_003, requires_grad=True)
    torch.manual_seed(0)
    y = dropout(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.05) < 0.0011  # Bernoulli(0.05): five standard deviations is 0.0011
    values = y.detach().unique().tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / 0.95)
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # gradient: the same positions, the same scale
    torch.manual_seed(0)
    assert torch.equal(dropout(x), y)  # torch's generator: seeded runs repeat exactly
    assert torch.equal(dropout.eval()(x), x)
    assert torch.equal(GapDropout(1.0)(x.detach()), torch.zeros_like(x))


def test_gap_dropout_positions_are_bernoulli_in_each_place_and_gap(monkeypatch):
    from engine.training import dropout as module

    n, p = 2_000_000, 0.05
    for sigmas in (6.0, -4.0):  # -4: the first round falls short and more are drawn
        monkeypatch.setattr(module, "_SIGMAS", sigmas)
        torch.manual_seed(1)
        positions = module.dropped_positions(n, p)
        assert positions.dtype == torch.int64 and 0 <= int(positions[0]) and int(positions[-1]) < n
        assert bool((positions[1:] > positions[:-1]).all())  # distinct, ascending
        sd = (n * p * (1 - p)) ** 0.5
        assert abs(len(positions) - n * p) < 5 * sd
        # Every tenth of the range holds its share, and the gaps are geometric: P(gap = k) =
        # (1 - p) ** (k - 1) * p, so a run of kept elements after a dropped one has its law.
        per_tenth = torch.bincount(positions // (n // 10), minlength=10)[:10].double()
        tenth_sd = (n / 10 * p * (1 - p)) ** 0.5
        assert float((per_tenth - n / 10 * p).abs().max()) < 5 * tenth_sd
        gaps = (positions[1:] - positions[:-1]).double()
        for k in (1, 2, 5, 20):
            expected = (1 - p) ** (k - 1) * p
            share = float((gaps == k).double().mean())
            assert abs(share - expected) < 5 * (expected * (1 - expected) / len(gaps)) ** 0.5
        assert abs(float(gaps.mean()) - 1 / p) < 5 * ((1 - p) / p**2 / len(gaps)) ** 0.5
    assert len(module.dropped_positions(1000, 0.0)) == 0
    with pytest.raises(ValueError):
        module.dropped_positions(10, 1.0)


def test_gap_dropout_on_bf16_and_strided_inputs_matches_its_own_mask():
    from engine.training.dropout import gap_dropout

    base = torch.randn(64, 96, dtype=torch.bfloat16)
    x = base.t().requires_grad_(True)  # not contiguous: positions are in the logical order
    y = gap_dropout(x, 0.25)
    kept = y != 0
    assert torch.equal(y[kept], (x.detach().float() / 0.75).to(torch.bfloat16)[kept])
    assert 0.15 < 1 - kept.float().mean().item() < 0.35
    grad = torch.randn_like(y)
    y.backward(grad)
    assert torch.equal(x.grad == 0, ~kept | (grad == 0))
    assert torch.equal(x.grad[kept], (grad.float() / 0.75).to(torch.bfloat16)[kept])
    assert gap_dropout(x, 0.25, training=False) is x


def test_the_adapter_uses_gap_dropout(make_profile, tmp_path):
    from engine.training.dropout import GapDropout

    recipe = LoRARecipe(RunConfig(profile=load_profile(make_profile(lora={"dropout": 0.1})),
                                  run_dir=tmp_path / "r"))
    recipe.setup()
    try:
        found = [m for m in recipe.peft_model.modules() if isinstance(m, GapDropout)]
        assert found and all(m.p == 0.1 for m in found)
        assert not any(type(m) is torch.nn.Dropout and m.p > 0
                       for m in recipe.peft_model.modules())
    finally:
        recipe.cleanup()


def test_cpu_training_fuses_the_norms_and_keeps_freed_memory(make_profile, tmp_path):
    events: list[dict] = []
    recipe = LoRARecipe(RunConfig(profile=load_profile(make_profile()), run_dir=tmp_path / "r",
                                  on_event=events.append, max_steps=1))
    recipe.setup()
    try:
        norms = [m for m in recipe.peft_model.modules() if type(m).__name__.endswith("RMSNorm")]
        assert norms and all("forward" in vars(m) for m in norms)  # every frozen norm fused
        recipe.train()
    finally:
        recipe.cleanup()
    logs = [e["message"] for e in events if e["event"] == "log"]
    if sys.platform.startswith("linux"):
        assert any(m.startswith("allocator: freed blocks under 32 MiB are kept") for m in logs)
