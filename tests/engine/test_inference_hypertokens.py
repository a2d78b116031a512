"""Adapters trained with hypertokens run in the hf backend: the shared base gets their rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ModelFormatError
from engine.inference import GenerationRequest
from engine.inference.hf import HFBackend
from engine.profiles import load_profile
from engine.training.recipe import RunConfig, main


def train_adapter(run_dir: Path, train_new_rows: str, tmp_path: Path, steps: int = 2) -> Path:
    profile_path = tmp_path / f"{train_new_rows}-{steps}.toml"
    profile_path.write_text(
        'extends = "tiny-test"\n'
        f'[tokenizer]\ntrain_new_rows = "{train_new_rows}"  # as asked\n'
        f"[training]\nmax_steps = {steps}  # seconds\neval_every = 0  # none\n"
        "checkpoint_every = 0  # none\n")
    result = main(RunConfig(profile=load_profile(profile_path), run_dir=run_dir))
    assert result.adapter_dir is not None
    return Path(result.adapter_dir)


def test_hypertoken_adapters_load_switch_and_generate(tmp_path: Path) -> None:
    import torch

    first = train_adapter(tmp_path / "a", "trainable_tokens", tmp_path)
    second = train_adapter(tmp_path / "b", "trainable_tokens", tmp_path, steps=3)
    backend = HFBackend.from_profile(load_profile("tiny-test"))
    rows_before = backend.base.get_input_embeddings().weight.shape[0]
    base_logits = backend.logits(backend.tokenize("the river remembers"))
    backend.load_adapter("a", first)
    backend.load_adapter("b", second)
    grown = len(backend.tokenizer)
    assert grown > rows_before  # the hypertokens' rows were added to the shared base
    scene_id = backend.tokenizer.convert_tokens_to_ids("<|scene|>")
    assert scene_id >= rows_before
    outputs = {}
    for name in ("a", "b", None):
        backend.set_active(name)
        request = GenerationRequest(messages=[{"role": "user", "content": "hello"}],
                                    max_tokens=4)
        outputs[name] = backend.generate(request).tokens
        logits = backend.logits(backend.tokenize("the river remembers"))
        if name is None:
            # with no adapter active, the old vocabulary's logits are the base's exactly
            old = torch.as_tensor(logits)[..., :rows_before]
            assert torch.allclose(old, torch.as_tensor(base_logits), atol=1e-5)
        # a prompt holding a hypertoken id runs (it would be out of range without the rows)
        assert backend.logits([scene_id, 5, 6]).shape[-1] >= grown
    assert all(count > 0 for count in outputs.values())


def test_adapter_with_a_larger_vocabulary_is_refused_once_others_are_loaded(
        tmp_path: Path) -> None:
    adapter = train_adapter(tmp_path / "a", "trainable_tokens", tmp_path)
    plain = tmp_path / "plain.toml"
    plain.write_text('extends = "tiny-test"\n[tokenizer]\nhypertokens = false  # none\n'
                     'train_new_rows = "none"  # none\n'
                     "[training]\nmax_steps = 1  # one\neval_every = 0  # none\n"
                     "checkpoint_every = 0  # none\n")
    result = main(RunConfig(profile=load_profile(plain), run_dir=tmp_path / "p"))
    backend = HFBackend.from_profile(load_profile("tiny-test"))
    backend.load_adapter("plain", Path(result.adapter_dir))
    with pytest.raises(ModelFormatError) as info:
        backend.load_adapter("hyper", adapter)
    assert "vocabulary" in info.value.message
