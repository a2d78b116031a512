"""The recipe on the real default model (SmolLM2-135M, CPU): the adapter must learn the corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.profiles import load_profile
from engine.training import RunConfig, main

pytestmark = pytest.mark.slow

# The default profile's model and LoRA shape, with a CPU-sized step: one sample a step (about
# 140 tokens, ~9 CPU-seconds on this machine's cores) keeps 60 steps near ten minutes on two
# cores; a larger learning rate makes up for the short run.
DEMO_RUN = """extends = "default"
name = "default-demo"
[training]
batch_size = 1
packing = false
learning_rate = 1e-3
max_steps = 60
eval_every = 20
checkpoint_every = 0
"""


def write_profile(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "profile.toml"
    path.write_text(text)
    return path


def test_sixty_steps_lower_held_out_loss_by_a_fifth(tmp_path):
    events: list[dict] = []
    result = main(RunConfig(profile=load_profile(write_profile(tmp_path, DEMO_RUN)),
                            run_dir=tmp_path / "run", on_event=events.append))
    print(f"\nheld-out loss: base {result.base_eval_loss:.4f} -> adapter {result.eval_loss:.4f} "
          f"({(1 - result.eval_loss / result.base_eval_loss) * 100:.1f}% lower), "
          f"train loss {result.final_loss:.4f}")
    card = json.loads((result.run_dir / "run_card.json").read_text())
    print(f"train time {card['metrics']['train_seconds']} s, "
          f"{card['metrics']['tokens_per_s']:.0f} tokens/s")
    assert result.steps == 60
    assert result.eval_loss <= 0.8 * result.base_eval_loss


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantised_default_model_trains_on_cpu(tmp_path, precision):
    text = DEMO_RUN.replace("max_steps = 60", "max_steps = 2").replace(
        "eval_every = 20", "eval_every = 0") + f'[device]\nprecision = "{precision}"\n'
    result = main(RunConfig(profile=load_profile(write_profile(tmp_path, text)),
                            run_dir=tmp_path / "run"))
    print(f"\n{precision}: held-out loss {result.base_eval_loss:.4f} -> {result.eval_loss:.4f}")
    assert result.steps == 2 and result.eval_loss < 2 * result.base_eval_loss
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
