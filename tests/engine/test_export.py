"""Export on the tiny models: GGUF LoRA, merge, full GGUF with added hypertokens, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from engine.errors import ModelFormatError

HYPERTOKENS = ["<|scene|>", "<|/scene|>", "<|reg:logic|>"]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_gguf_lora_runs_in_llama_cpp_like_peft_for_each_architecture(arch, tmp_path):
    from engine.export.gguf_lora import export_gguf_lora
    from engine.export.gguf_model import export_gguf
    from engine.inference.hf import HFBackend
    from engine.inference.llamacpp import LlamaCppBackend
    from engine.testing.lora import random_lora
    from engine.testing.tiny import build_tiny_model

    model_dir = build_tiny_model(arch)
    base = export_gguf(model_dir, tmp_path / "base.gguf").path
    adapter = random_lora(model_dir, tmp_path / "adapter", std=0.5,
                          targets=("q_proj", "k_proj", "v_proj", "gate_proj"))
    lora = export_gguf_lora(adapter, base, tmp_path / "adapter.gguf")
    assert (len(lora.permuted) > 0) == (arch != "qwen2")  # qwen2 keeps NEOX row order
    hf = HFBackend(model_dir, device="cpu", n_ctx=128)
    llama = LlamaCppBackend(base, n_ctx=128, threads=1)
    hf.load_adapter("x", adapter)
    llama.load_adapter("x", lora.path)
    ids = hf.tokenize("the hero returns to the mother")
    before = hf.logits(ids)
    hf.set_active("x")
    llama.set_active("x")
    after = hf.logits(ids)
    assert np.abs(after - before).max() > 1e-2  # the adapter matters
    assert cosine(llama.logits(ids), after) > 0.9999
    llama.close()


def test_merged_gguf_over_a_base_gguf_keeps_hypertokens_and_matches(tmp_path):
    from engine.export.gguf_model import export_gguf
    from engine.export.merge import merge_adapter
    from engine.inference.hf import HFBackend
    from engine.inference.llamacpp import LlamaCppBackend
    from engine.testing.lora import train_lora_with_tokens
    from engine.testing.tiny import build_tiny_model

    model_dir = build_tiny_model("llama")
    base = export_gguf(model_dir, tmp_path / "base.gguf").path
    adapter = train_lora_with_tokens(model_dir, tmp_path / "adapter", HYPERTOKENS, steps=3,
                                     learning_rate=1e-2)
    merged = merge_adapter(adapter, str(model_dir), tmp_path / "merged")
    exported = export_gguf(merged, tmp_path / "merged.gguf", base_gguf=base)
    assert exported.added_tokens == HYPERTOKENS
    assert "token_embd.weight" in exported.rewritten
    assert any(".attn_q." in name for name in exported.rewritten)
    assert not any("ffn_" in name for name in exported.rewritten)  # untouched: bytes copied
    hf = HFBackend(merged, device="cpu", n_ctx=128)
    llama = LlamaCppBackend(exported.path, n_ctx=128, threads=1)
    text = "<|scene|><|reg:logic|> the argument holds <|/scene|>"
    ids = hf.tokenize(text, special=True)
    assert llama.tokenize(text, special=True) == ids
    assert sum(i >= exported.vocab_size - len(HYPERTOKENS) for i in ids) == 3
    assert cosine(llama.logits(ids), hf.logits(ids)) > 0.9999
    llama.close()


def test_an_adapter_gguf_lora_cannot_express_is_refused_with_the_reason(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from engine.export.gguf_lora import export_gguf_lora
    from engine.export.gguf_model import export_gguf
    from engine.testing.tiny import build_tiny_model

    model_dir = build_tiny_model("llama")
    base = export_gguf(model_dir, tmp_path / "base.gguf").path
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))
    model.save_pretrained(tmp_path / "dora")
    with pytest.raises(ModelFormatError, match="DoRA") as caught:
        export_gguf_lora(tmp_path / "dora", base, tmp_path / "out.gguf")
    assert "hyperlex export gguf" in (caught.value.hint or "")
    assert not (tmp_path / "out.gguf").exists()


def test_rslora_scale_is_folded_into_lora_b(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from engine.export.gguf_lora import export_gguf_lora
    from engine.export.gguf_model import export_gguf
    from engine.inference.hf import HFBackend
    from engine.inference.llamacpp import LlamaCppBackend
    from engine.testing.tiny import build_tiny_model

    model_dir = build_tiny_model("llama")
    base = export_gguf(model_dir, tmp_path / "base.gguf").path
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=16, lora_alpha=8, target_modules=["v_proj"],
                                      use_rslora=True))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.save_pretrained(tmp_path / "rs")
    lora = export_gguf_lora(tmp_path / "rs", base, tmp_path / "rs.gguf")
    hf = HFBackend(model_dir, device="cpu", n_ctx=128)
    hf.load_adapter("rs", tmp_path / "rs")
    hf.set_active("rs")
    llama = LlamaCppBackend(base, n_ctx=128, threads=1)
    llama.load_adapter("rs", lora.path)
    llama.set_active("rs")
    ids = hf.tokenize("the tool serves the hand")
    assert cosine(llama.logits(ids), hf.logits(ids)) > 0.9999
    llama.close()


def test_export_cli_writes_a_gguf_lora_and_reports_json(tmp_path):
    from engine.export.gguf_model import export_gguf
    from engine.testing.lora import random_lora
    from engine.testing.tiny import build_tiny_model
    from hyperlex_console.cli import main

    model_dir = build_tiny_model("llama")
    base = export_gguf(model_dir, tmp_path / "base.gguf").path
    adapter = random_lora(model_dir, tmp_path / "adapter")
    result = CliRunner().invoke(main, ["export", "gguf-lora", "--adapter", str(adapter), "-o",
                                       str(tmp_path / "a.gguf"), "--base", str(base), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["tensors"] == 2 * 2 * 4  # a and b, 2 layers, q/k/v/o
    assert (tmp_path / "a.gguf").is_file()
    missing = CliRunner().invoke(main, ["export", "gguf-lora", "--adapter",
                                        str(tmp_path / "nope"), "-o", str(tmp_path / "b.gguf"),
                                        "--base", str(base)])
    assert missing.exit_code == 1
    assert "not a PEFT adapter dir" in missing.output
