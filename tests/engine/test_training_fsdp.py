"""The recipe sharded with FSDP under `accelerate launch` (2 CPU processes, gloo) on the tiny model.

The FSDP run must take the same steps as one process with the same global batch, write its
adapter and checkpoints from rank 0 alone in the one-process format, and resume exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from engine.errors import ConfigError
from engine.profiles import load_profile
from engine.training.distributed import World
from engine.training.sharding import resolve_strategy
from tests.engine.test_training import PYTHON, ROOT, TOLERANCE, make_profile, run, step_losses

__all__ = ["make_profile"]  # the profile factory fixture, requested by name below
ACCELERATE_CONFIG = ROOT / "profiles" / "accelerate" / "fsdp-cpu.yaml"
TWO = World(rank=0, size=2)


def accelerate_launch(profile: Path, run_dir: Path, *extra: str) -> tuple[int, list[dict], str]:
    """Run the recipe under `accelerate launch` with the FSDP CPU config; (exit code, events)."""
    command = [PYTHON, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIG),
               "-m", "engine.training.run", "--profile", str(profile), "--run-dir", str(run_dir),
               "--progress-jsonl", *extra]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines()], done.stderr


def load_adapter(adapter: Path) -> torch.nn.Module:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.models import hf_model_dir

    tokenizer = AutoTokenizer.from_pretrained(adapter)
    base = AutoModelForCausalLM.from_pretrained(hf_model_dir("tiny:llama"))
    base.resize_token_embeddings(len(tokenizer))
    return PeftModel.from_pretrained(base, adapter).eval()


def test_fsdp_under_accelerate_matches_one_process_and_resumes(make_profile, tmp_path):
    common = {"max_steps": 4, "eval_every": 2}
    # Global batch 4 both ways: 2 processes x 1 sequence x 2 micro-batches (so gradients
    # accumulate unsynchronised once per step), against 1 process x 4 sequences.
    sharded = make_profile("sharded", training={**common, "batch_size": 1, "grad_accum": 2,
                                                "strategy": "auto"}, lora={"dropout": 0.0})
    single = make_profile("single", training={**common, "batch_size": 4}, lora={"dropout": 0.0})
    run_dir = tmp_path / "fsdp"

    code, first, stderr = accelerate_launch(sharded, run_dir, "--stop-at-step", "2")
    assert code != 0, stderr[-3000:]  # stopped with a checkpoint, as on SIGTERM
    started = next(e["message"] for e in first if "process(es)" in e.get("message", ""))
    assert "2 process(es) (FSDP)" in started
    checkpoint = next(e for e in first if e["event"] == "checkpoint")
    assert checkpoint["step"] == 2
    code, resumed, stderr = accelerate_launch(sharded, run_dir, "--resume")
    assert code == 0, stderr[-3000:]
    assert any(f"resumed from {checkpoint['path']} at step 2" == e.get("message")
               for e in resumed)

    one, one_events = run(single, tmp_path / "one")
    expected, got = step_losses(one_events), step_losses(first + resumed)
    assert sorted(got) == [1, 2, 3, 4]
    differences = {step: abs(got[step] - expected[step]) for step in got}
    print("FSDP vs one process, |loss difference| per step:", differences)
    assert max(differences.values()) < TOLERANCE, (got, expected)
    assert abs(resumed[-1]["eval_loss"] - one.eval_loss) < TOLERANCE

    # Rank 0 alone wrote: every event once, one checkpoint, no half-written staging directory.
    written = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    assert [e["step"] for e in written if e["event"] == "step"] == [1, 2, 3, 4]
    assert len([e for e in written if e["event"] == "done"]) == 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000002"]

    # The adapter is plain PEFT, and the same as the one-process run's.
    from safetensors.torch import load_file

    ours = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    theirs = load_file(str(one.adapter_dir / "adapter_model.safetensors"))
    assert sorted(ours) == sorted(theirs) and any("lora_A" in name for name in ours)
    largest = max(float((ours[k] - theirs[k]).abs().max()) for k in ours)
    print("FSDP vs one process, largest adapter weight difference:", largest)
    assert largest < 1e-5
    ids = torch.tensor([list(range(4, 40))])
    with torch.no_grad():
        logits = load_adapter(run_dir / "adapter")(input_ids=ids).logits
        reference = load_adapter(one.adapter_dir)(input_ids=ids).logits
    assert torch.allclose(logits, reference, atol=1e-5)


def test_unknown_strategy_names_the_key_and_the_choices(make_profile):
    with pytest.raises(ConfigError) as raised:
        load_profile(make_profile(training={"strategy": "zero3"}))
    assert any("training.strategy: must be one of auto, ddp, fsdp; got 'zero3'" in problem
               for problem in raised.value.problems)


def test_auto_strategy_follows_the_launcher():
    fsdp_env = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}
    assert resolve_strategy("auto", TWO, "fp32", fsdp_env) == "fsdp"
    assert resolve_strategy("auto", TWO, "fp32", {}) == "ddp"
    assert resolve_strategy("auto", World(), "fp32", fsdp_env) == "none"
    assert resolve_strategy("fsdp", TWO, "bf16", {}) == "fsdp"
    assert resolve_strategy("ddp", TWO, "fp32", fsdp_env) == "ddp"
    with pytest.raises(ConfigError, match="FSDP cannot shard an int4"):
        resolve_strategy("auto", TWO, "int4", fsdp_env)
