"""How the recipe spreads over several processes: nothing, DDP, or FSDP2 sharding.

`training.strategy = auto | ddp | fsdp`. `auto` shards with FSDP when `accelerate launch` was
given an FSDP config (accelerate then exports ACCELERATE_USE_FSDP=true and FSDP_* settings),
runs DDP when there are several processes otherwise, and wraps nothing in one process.

FSDP here is FSDP2 (`torch.distributed.fsdp.fully_shard`): one group per decoder layer, then the
root, so a layer's frozen base weights and its trainable LoRA weights are gathered together just
before the layer runs and freed after. It runs on CPU with gloo as on CUDA with nccl. Sharded
parameters, gradients and optimizer states are DTensors: `full_tensors` and
`full_optimizer_state` gather them into the plain tensors one process would hold, and
`shard_like` / `load_full_optimizer_state` cut such tensors back into this process's shard, so a
checkpoint has the same format whatever the strategy. Nothing here knows of data, files or the
recipe's loop.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from engine.errors import ConfigError
from engine.training.distributed import World

STRATEGIES = ("auto", "ddp", "fsdp")
QUANTISED = ("int8", "int4")


def accelerate_asks_for_fsdp(environ: Mapping[str, str] | None = None) -> bool:
    """Whether `accelerate launch` was given an FSDP config (it exports ACCELERATE_USE_FSDP)."""
    environ = os.environ if environ is None else environ
    return environ.get("ACCELERATE_USE_FSDP", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_strategy(wanted: str, world: World, precision: str,
                     environ: Mapping[str, str] | None = None) -> str:
    """Turn `training.strategy` into what this run does: "none", "ddp" or "fsdp".

    One process wraps nothing whatever is asked: there is nothing to shard across.

    Raises:
        ConfigError: an unknown strategy, or FSDP asked for a quantised (int8/int4) base.
    """
    if wanted not in STRATEGIES:
        raise ConfigError(f"training.strategy = {wanted!r} is not a strategy",
                          hint=f"use one of {', '.join(STRATEGIES)}")
    if not world.distributed:
        return "none"
    strategy = wanted
    if wanted == "auto":
        strategy = "fsdp" if accelerate_asks_for_fsdp(environ) else "ddp"
    if strategy == "fsdp" and precision in QUANTISED:
        raise ConfigError(
            f"FSDP cannot shard an {precision} (bitsandbytes) base: its packed weights are not "
            "plain tensors" + (" (the accelerate config asks for FSDP)" if wanted == "auto"
                               else ""),
            hint="set training.strategy = \"ddp\" (and launch without the FSDP config), or "
                 "device.precision = \"bf16\"")
    return strategy


def decoder_layers(causal_lm: Any) -> list[torch.nn.Module]:
    """The model's repeated blocks: the classes transformers will not split across devices."""
    names = set(getattr(causal_lm, "_no_split_modules", None) or ())
    layers = [module for module in causal_lm.modules() if type(module).__name__ in names]
    if layers:
        return layers
    decoder = getattr(causal_lm, getattr(causal_lm, "base_model_prefix", "model"), None)
    return list(getattr(decoder, "layers", []))


def wrap(model: torch.nn.Module, strategy: str, world: World, device: str,
         causal_lm: Any) -> torch.nn.Module:
    """`model` made ready for `strategy` (DDP wraps it; FSDP shards it in place).

    Args:
        model: the module whose `forward` the training loop calls (the loss model).
        strategy: "none", "ddp" or "fsdp" (from `resolve_strategy`).
        world: this process's place among the others.
        device: "cpu" or "cuda:N".
        causal_lm: the transformers model inside `model`, whose decoder layers FSDP groups.
    """
    if strategy == "ddp":
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[world.local_rank] if device != "cpu" else None)
    if strategy != "fsdp":
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu" if device == "cpu" else "cuda", (world.size,))
    # accelerate's fsdp_reshard_after_forward: false keeps gathered layers for backward
    # (ZeRO-2-like: more memory, less communication).
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").strip().lower() != "false"
    for layer in decoder_layers(causal_lm):
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard)
    # The root group holds the rest: embeddings (and trainable hypertoken rows), final norm and
    # the output head, which may be tied to the embeddings and so must share their group.
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard)
    return model


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (FSDP2 shards in place: it is its own module)."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.module
    return model


@contextlib.contextmanager
def gradient_sync(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Reduce gradients across processes in this backward pass only if `enabled`.

    Micro-batches before the last of a step accumulate locally; the last one reduces the sum.
    """
    if isinstance(model, torch.nn.parallel.DistributedDataParallel) and not enabled:
        with model.no_sync():
            yield
        return
    if hasattr(model, "set_requires_gradient_sync"):  # an FSDP2 module
        model.set_requires_gradient_sync(enabled)
    yield


def after_no_grad_forward(model: torch.nn.Module) -> None:
    """Reset FSDP's per-step state after forward passes that had no backward (evaluation).

    FSDP keeps per-step state (the order in which groups ran forward, the root group's gathered
    weights) that the backward pass clears; forward passes under `no_grad` leave it behind.
    Measured on the tiny model with an evaluation after step 2: without this reset that held-out
    loss differed from the one-process run's by 5e-4 and the step-4 training loss by 1.7e-3;
    with it both match within 1e-6. A no-op for DDP and one process.
    """
    if hasattr(model, "reset_iter_state"):  # the root FSDP2 module
        model.reset_iter_state()


def _is_dtensor(tensor: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: gathered from every process if sharded (a collective call then)."""
    return tensor.full_tensor() if _is_dtensor(tensor) else tensor


def clip_grad_norm(parameters: Iterable[torch.nn.Parameter], max_norm: float) -> float:
    """Clip gradients to a total norm over the whole model, sharded or not.

    With FSDP each process holds a shard of every gradient; the norm of the shards is a partial
    result that must be summed across processes before it can scale anything.
    """
    parameters = list(parameters)
    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, 2.0)
    total = full_tensor(total)
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total)
    return float(total)


def full_tensors(named: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Whole CPU copies of named tensors (every process must call this, in the same order)."""
    return {name: full_tensor(tensor.detach()).cpu().contiguous()
            for name, tensor in named.items()}


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's `state_dict()` with whole tensors, as one process would have it.

    Every process must call this: gathering sharded states is a collective operation.
    """
    state = optimizer.state_dict()
    whole: dict[int, dict[str, Any]] = {}
    for index in sorted(state["state"]):
        values = state["state"][index]
        whole[index] = {key: (full_tensor(values[key]).cpu()
                              if isinstance(values[key], torch.Tensor) else values[key])
                        for key in sorted(values)}
    return {"state": whole, "param_groups": state["param_groups"]}


def shard_like(whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`whole` cut as `like` is sharded (or just moved to its device when `like` is not).

    Every process holds the same whole tensor (read from the same checkpoint), so each takes its
    own shard without communication.
    """
    if _is_dtensor(like):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(whole.to(device=like.device, dtype=like.dtype),
                                 like.device_mesh, like.placements, src_data_rank=None)
    return whole.to(like.device)


def load_full_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a `full_optimizer_state` back, sharding each per-parameter tensor like its parameter."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    sharded: dict[int, dict[str, Any]] = {}
    for index, values in state["state"].items():
        param = params[index]
        sharded[index] = {
            key: (shard_like(value, param)
                  if isinstance(value, torch.Tensor) and value.shape == param.shape else value)
            for key, value in values.items()}
    optimizer.load_state_dict({"state": sharded, "param_groups": state["param_groups"]})
