"""A checkpoint's `state.pt` is plain data: it loads with `weights_only=True`, a resume round trip
goes through that load, and a state file holding a pickled object is refused before it runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from engine.errors import DataError
from engine.profiles import load_profile
from engine.training import RunConfig, main
from engine.training import checkpoint as ckpt
from engine.training.recipe import load_resume_state

PROFILE = """extends = "tiny-test"
name = "resume-state"
[training]
max_seq_len = 160
batch_size = 2
eval_every = 0
checkpoint_every = 1
warmup_steps = 1
max_steps = 2
[device]
threads = 1
"""


class Payload:
    """What a crafted state file would carry: unpickling it makes a directory."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def train(profile: Path, run_dir: Path, **kwargs) -> list[dict]:
    events: list[dict] = []
    main(RunConfig(profile=load_profile(profile), run_dir=run_dir, on_event=events.append,
                   **kwargs))
    return events


def test_state_is_plain_data_and_a_pickled_object_is_refused(tmp_path):
    profile = tmp_path / "p.toml"
    profile.write_text(PROFILE)
    run_dir = tmp_path / "run"
    train(profile, run_dir, stop_at_step=1)
    state_file = ckpt.latest_checkpoint(run_dir) / "state.pt"
    # What the recipe saves loads without unpickling any object (numpy RNG state included).
    state = torch.load(state_file, weights_only=True)
    assert state["step"] == 1 and isinstance(state["rng"], list)

    resumed = train(profile, run_dir, resume=True)
    assert [e["step"] for e in resumed if e["event"] == "step"] == [2]

    crafted = tmp_path / "crafted"
    train(profile, crafted, stop_at_step=1)
    state_file = ckpt.latest_checkpoint(crafted) / "state.pt"
    marker = tmp_path / "code-ran"
    torch.save({"step": 1, "evil": Payload(marker)}, state_file)
    with pytest.raises(DataError, match="not a plain training state"):
        load_resume_state(state_file)
    with pytest.raises(DataError, match="not a plain training state"):
        train(profile, crafted, resume=True)
    assert not marker.exists(), "loading the state ran the pickled object's code"
