"""The model the recipe trains: base in the chosen precision, hypertoken rows, a LoRA adapter.

Precision `fp32`/`bf16` load the base as is; `int8`/`int4` (NF4) load it through bitsandbytes as a
frozen QLoRA base, on CPU as on CUDA. New hypertoken rows start from their spelling's mean and
train as PEFT trainable tokens or as whole saved modules, as the profile says. Target modules are
checked before PEFT sees them, so a typo lists the names that do exist. Nothing here knows of
data, optimizers or files of runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.errors import ConfigError

ALL_LINEAR = "all-linear"


@dataclass(frozen=True)
class Placement:
    """Where the model runs and why."""

    device: str  # "cpu" or "cuda" / "cuda:N"
    precision: str
    note: str = ""  # said to the person when the profile's wish could not be met


def resolve_device(wanted: str, precision: str, local_rank: int = 0) -> Placement:
    """Turn `device = auto|cuda|cpu` into a real device, stating any fallback.

    CUDA asked for where there is none falls back to CPU with a note rather than failing: the
    same profile then works on a laptop and on the GPU machine.
    """
    import torch

    has_cuda = torch.cuda.is_available()
    if wanted == "cuda" and not has_cuda:
        return Placement("cpu", precision,
                         "device = cuda, but torch sees no CUDA device "
                         "(torch.cuda.is_available() is False); training on CPU instead")
    if wanted in ("cuda", "auto") and has_cuda:
        return Placement(f"cuda:{local_rank}", precision)
    return Placement("cpu", precision)


def linear_module_names(model: Any) -> list[str]:
    """The distinct leaf names of the linear layers LoRA could target (output head excluded)."""
    import torch

    head = model.get_output_embeddings()
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def check_target_modules(model: Any, targets: list[str]) -> list[str] | str:
    """The `target_modules` for PEFT, after checking that each name matches a layer.

    Raises:
        ConfigError: a name matches no linear layer; the message lists the names there are.
    """
    if targets == [ALL_LINEAR] or targets == ALL_LINEAR:
        return ALL_LINEAR
    existing = linear_module_names(model)
    missing = [name for name in targets if name not in existing]
    if missing or not targets:
        raise ConfigError(
            f"lora.target_modules {missing or targets} match no linear layer of the model",
            hint=f"this model's linear layers are: {', '.join(existing)}; or use "
                 f"[\"{ALL_LINEAR}\"]")
    return list(targets)


def load_base(spec: str, placement: Placement, gradient_checkpointing: bool) -> Any:
    """The base causal LM, frozen, in the placement's precision and device."""
    from engine.models import load_causal_lm

    device = "cuda" if placement.device.startswith("cuda") else "cpu"
    model = load_causal_lm(spec, dtype=placement.precision, device=device)
    if placement.device.startswith("cuda:") and placement.precision not in ("int8", "int4"):
        model = model.to(placement.device)
    if placement.precision in ("int8", "int4"):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    return model


def lora_config(profile: Any, model: Any, hypertokenizer: Any) -> Any:
    """The `peft.LoraConfig` a profile describes, including the hypertoken rows to train."""
    from peft import LoraConfig

    from engine.tokenizer import profile_peft_kwargs

    section = profile.lora
    return LoraConfig(
        r=section.r, lora_alpha=section.alpha, lora_dropout=section.dropout,
        target_modules=check_target_modules(model, list(section.target_modules)),
        use_dora=section.use_dora, use_rslora=section.use_rslora, bias="none",
        task_type="CAUSAL_LM", **profile_peft_kwargs(model, hypertokenizer, profile))


def build_model(profile: Any, hypertokenizer: Any, placement: Placement) -> Any:
    """Base + hypertoken rows + LoRA: the PEFT model, with only the adapter trainable."""
    import torch
    from peft import get_peft_model

    from engine.tokenizer import resize_embeddings

    model = load_base(profile.model.base, placement, profile.training.gradient_checkpointing)
    resize_embeddings(model, hypertokenizer)
    peft_model = get_peft_model(model, lora_config(profile, model, hypertokenizer))
    # A bf16 base keeps what trains in fp32 (PEFT already does; this holds it if PEFT changes):
    # the LoRA updates are ~1e-4 of a weight, below bf16's 8-bit mantissa, and AdamW's state
    # follows the parameter's dtype.
    for param in peft_model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    if placement.device == "cpu":  # CUDA's own dropout kernel is fused and draws cheaply
        from engine.training.dropout import use_gap_dropout
        from engine.training.lora_linear import fuse_lora_layers

        use_gap_dropout(peft_model)  # for the layers the fused path leaves to PEFT
        fuse_lora_layers(peft_model)
    from engine.training.norms import use_fused_norms
    from engine.training.rope import use_fused_rope

    use_fused_norms(peft_model)
    use_fused_rope()
    if placement.precision == "bf16":
        from engine.training.adapter_compute import compute_adapters_in

        compute_adapters_in(peft_model, torch.bfloat16)
    return peft_model
