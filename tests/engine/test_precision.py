"""`device.precision = "auto"`: the measured probe decides, is cached per machine, and is reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.profiles import load_profile
from engine.training import LoRARecipe, RunConfig, main
from engine.training import precision as precision_module
from engine.training.flops import lora_step_flops
from engine.training.precision import (
    BF16_SPEEDUP_NEEDED,
    Probe,
    choose_cpu,
    cpu_probe,
    machine_key,
    resolve_precision,
)

XEON = "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu avx2 avx512f amx_bf16\n"
EPYC = "model name\t: AMD EPYC 9654\nflags\t\t: fpu avx2 avx512f amx_bf16\n"  # same flags
TINY_KNOBS = ("[training]\nmax_seq_len = 160\nbatch_size = 2\neval_every = 0\n"
              "checkpoint_every = 0\nwarmup_steps = 1\n")


@pytest.fixture
def counted_measure(monkeypatch):
    """Factory: replace the matmul measurement by fixed figures, counting the calls."""
    calls: list[int] = []

    def install(fp32: float | None, bf16: float | None) -> list[int]:
        def fake() -> tuple[float | None, float | None]:
            calls.append(1)
            return fp32, bf16
        monkeypatch.setattr(precision_module, "measure", fake)
        return calls
    return install


def auto_profile(tmp_path: Path, name: str = "auto") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'extends = "tiny-test"\nname = "{name}"\n[device]\nprecision = "auto"\n'
                    f"threads = 1\n{TINY_KNOBS}")
    return path


def test_auto_is_the_default_precision():
    assert load_profile("default").device.precision == "auto"


@pytest.mark.parametrize("fp32,bf16,expected", [
    (212.0, 1914.0, "bf16"),                       # AMX Xeon (issue 17)
    (80.0, 481.0, "bf16"),                         # AVX512-BF16 EPYC
    (100.0, 100.0 * BF16_SPEEDUP_NEEDED, "bf16"),  # just enough
    (100.0, 120.0, "fp32"),                        # faster, but not clearly
    (150.0, 20.0, "fp32"),                         # emulated bf16 on an AVX2-only CPU
    (150.0, None, "fp32"),                         # this torch cannot multiply in bf16
])
def test_auto_follows_the_probe(tmp_path, counted_measure, fp32, bf16, expected):
    counted_measure(fp32, bf16)
    choice = resolve_precision("auto", "cpu", cache_file=tmp_path / "probe.json")
    assert choice.precision == expected
    assert choice.requested == "auto"
    assert f"fp32 {fp32:.0f}" in choice.reason  # the reason carries the measurement
    if expected == "bf16":
        assert "fp32 LoRA weights and optimizer state" in choice.reason
    else:
        assert "does not run bf16 clearly faster" in choice.reason


def test_an_explicit_precision_is_kept_without_a_probe(tmp_path, counted_measure):
    calls = counted_measure(100.0, 900.0)
    for wanted in ("fp32", "bf16", "int8", "int4"):
        assert resolve_precision(wanted, "cpu", tmp_path / "p.json").precision == wanted
    assert calls == []
    assert not (tmp_path / "p.json").exists()


def test_the_probe_is_cached_and_reused(tmp_path, counted_measure):
    calls = counted_measure(80.0, 481.0)
    cache = tmp_path / "probe.json"
    first = cpu_probe(cache, key="machine-a")
    second = cpu_probe(cache, key="machine-a")
    assert len(calls) == 1
    assert not first.cached and second.cached
    assert (second.fp32_gflops, second.bf16_gflops) == (80.0, 481.0)
    assert "cached probe" in choose_cpu(second).reason
    cpu_probe(cache, key="machine-b")  # another machine measures again, beside the first
    assert len(calls) == 2
    assert set(json.loads(cache.read_text())) == {"machine-a", "machine-b"}


def test_the_cache_key_is_cpu_model_flags_and_torch_not_flags_alone():
    xeon = machine_key(XEON, "2.13.0")
    assert xeon == machine_key(XEON, "2.13.0")
    assert xeon != machine_key(EPYC, "2.13.0")  # same flags, another CPU
    assert xeon != machine_key(XEON, "2.14.0")  # another torch
    assert xeon != machine_key(XEON.replace("amx_bf16", "avx512_bf16"), "2.13.0")


def test_a_broken_cache_file_is_measured_again(tmp_path, counted_measure):
    calls = counted_measure(80.0, 481.0)
    cache = tmp_path / "probe.json"
    cache.write_text("{not json")
    assert cpu_probe(cache, key="k").bf16_gflops == 481.0
    assert len(calls) == 1 and json.loads(cache.read_text())["k"]["fp32_gflops"] == 80.0


def test_the_real_probe_decides_consistently_on_this_machine(tmp_path):
    cache = tmp_path / "probe.json"
    choice = resolve_precision("auto", "cpu", cache_file=cache)
    probe = cpu_probe(cache)  # the cached figures the choice was made from
    assert probe.cached and probe.fp32_gflops > 0
    fast = probe.speedup is not None and probe.speedup >= BF16_SPEEDUP_NEEDED
    assert choice.precision == ("bf16" if fast else "fp32")


def test_auto_on_the_tiny_model_reports_its_pick_in_the_log_and_card(tmp_path):
    """A real probe (cached in the test cache dir), a real 2-step run."""
    events: list[dict] = []
    result = main(RunConfig(profile=load_profile(auto_profile(tmp_path)),
                            run_dir=tmp_path / "run", max_steps=2, on_event=events.append))
    card = json.loads((result.run_dir / "run_card.json").read_text())
    placement = card["placement"]
    assert placement["precision"] in ("bf16", "fp32")
    assert placement["precision_requested"] == "auto"
    said = [e["message"] for e in events if e["event"] == "log"
            and e["message"].startswith("precision auto:")]
    assert said == [f"precision auto: {placement['precision']}, because "
                    f"{placement['precision_reason']}"]
    assert "GFLOP/s" in placement["precision_reason"]
    assert math_finite(result.eval_loss)


def math_finite(value: float | None) -> bool:
    return value is not None and value == value and abs(value) != float("inf")


def test_auto_picking_bf16_keeps_what_trains_in_fp32(tmp_path, monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_probe",
                        lambda cache_file=None: Probe(80.0, 481.0, "k"))
    recipe = LoRARecipe(RunConfig(profile=load_profile(auto_profile(tmp_path)),
                                  run_dir=tmp_path / "run", max_steps=2))
    recipe.setup()
    try:
        assert recipe.placement.precision == "bf16"
        trainable = {n: p for n, p in recipe.peft_model.named_parameters() if p.requires_grad}
        frozen = [p for p in recipe.peft_model.parameters() if not p.requires_grad]
        assert any("lora_A" in n for n in trainable) and any("token" in n for n in trainable)
        assert {p.dtype for p in trainable.values()} == {torch.float32}
        assert {p.dtype for p in frozen} == {torch.bfloat16}
        before = {n: p.detach().clone() for n, p in trainable.items()}
        result = recipe.train()
        assert all(math_finite(loss) for loss in result.losses)
        state = [s for s in recipe.optimizer.state.values()]
        assert state and {s["exp_avg"].dtype for s in state} == {torch.float32}
        assert {s["exp_avg_sq"].dtype for s in state} == {torch.float32}
        moved = [n for n, p in trainable.items() if not torch.equal(p, before[n])]
        assert moved, "no trainable weight changed in two steps"
        assert {p.dtype for p in trainable.values()} == {torch.float32}
        assert recipe.fingerprint["precision"] == "bf16"  # a resume checks what ran
    finally:
        recipe.cleanup()


def test_flops_per_token_count_the_parts(tmp_path):
    profile = load_profile(auto_profile(tmp_path))
    profile.device.precision = "fp32"
    recipe = LoRARecipe(RunConfig(profile=profile, run_dir=tmp_path / "run", max_steps=1))
    recipe.setup()
    try:
        model = recipe.peft_model
        config = model.get_base_model().config
        one = lora_step_flops(model, [10], labelled_tokens=5)
        longer = lora_step_flops(model, [20], labelled_tokens=5)
        all_labelled = lora_step_flops(model, [10], labelled_tokens=10)
        assert one.labelled_fraction == 0.5
        assert one.mean_context == pytest.approx(5.5)  # causal: (1 + ... + 10) / 10
        assert longer.attention == pytest.approx(one.attention * 10.5 / 5.5)
        assert all_labelled.head == pytest.approx(2 * one.head)
        assert one.head == pytest.approx(4 * config.vocab_size * config.hidden_size * 0.5)
        head_dim = getattr(config, "head_dim", None) or (config.hidden_size
                                                         // config.num_attention_heads)
        attention_width = config.num_attention_heads * head_dim
        kv_width = config.num_key_value_heads * head_dim
        per_layer = (2 * config.hidden_size * attention_width + 2 * config.hidden_size * kv_width
                     + 3 * config.hidden_size * config.intermediate_size)
        assert one.decoder_linear == pytest.approx(4 * config.num_hidden_layers * per_layer)
        assert longer.decoder_linear == one.decoder_linear
        assert 0 < one.lora < one.decoder_linear
        assert one.per_token == pytest.approx(one.decoder_linear + one.lora + one.attention
                                              + one.head)
        assert "MFLOP/token" in one.describe()
    finally:
        recipe.cleanup()


def test_a_bf16_base_runs_its_lora_branch_in_bf16_with_fp32_weights(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from engine.training.adapter_compute import CastingLinear, compute_adapters_in

    def build():
        torch.manual_seed(3)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"), dtype=torch.bfloat16)
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                target_modules=["q_proj", "v_proj"]))
        with torch.no_grad():  # B starts at zero; give the branch something to add
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.05)
        return model

    plain, cast = build(), build()
    layers = sum(1 for n, _ in plain.named_modules() if n.endswith(("q_proj", "v_proj")))
    assert compute_adapters_in(cast, torch.bfloat16) == layers
    assert compute_adapters_in(cast, torch.float16) == 0  # only a base of that dtype
    assert any(isinstance(m, CastingLinear) for m in cast.modules())
    ids = torch.randint(0, plain.config.vocab_size, (2, 24))
    want, got = plain(input_ids=ids).logits.float(), cast(input_ids=ids).logits.float()
    assert torch.allclose(got, want, atol=0.1, rtol=0.05)
    assert not torch.equal(got, want) or layers == 0  # it does take the other path
    got.square().mean().backward()
    trainable = [(n, p) for n, p in cast.named_parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for _, p in trainable)
    assert all(p.grad is not None and p.grad.dtype == torch.float32
               and float(p.grad.abs().sum()) > 0 for _, p in trainable)
    assert set(cast.state_dict()) == set(plain.state_dict())  # the saved adapter is the same


def test_packed_attention_over_a_bf16_cpu_model_computes_in_fp32_and_answers_bf16():
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from engine.training.attention import packed_sdpa

    torch.manual_seed(1)
    query, key, value = (torch.randn(1, 4, 12, 8, dtype=torch.bfloat16) for _ in range(3))
    module = SimpleNamespace(is_causal=True, num_key_value_groups=1, training=False)
    spans = [[(0, 5), (5, 12)]]
    got, _ = packed_sdpa(module, query, key, value, None, packed_spans=spans)
    assert got.dtype == torch.bfloat16 and got.shape == (1, 12, 4, 8)
    for start, end in spans[0]:  # each sample alone, causally, in fp32
        want = sdpa_attention_forward(module, query[:, :, start:end].float(),
                                      key[:, :, start:end].float(),
                                      value[:, :, start:end].float(), None, is_causal=True)[0]
        assert torch.allclose(got[:, start:end].float(), want, atol=1e-2)
        plain = sdpa_attention_forward(module, query[:, :, start:end], key[:, :, start:end],
                                       value[:, :, start:end], None, is_causal=True)[0]
        assert (got[:, start:end].float() - want).abs().max() \
            <= (plain.float() - want).abs().max() + 1e-6  # no worse than bf16 all through
