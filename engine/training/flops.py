"""What one LoRA training step costs in matmul FLOPs, counted from the model and the data.

The roofline of `bench/train_throughput.py` divides the machine's measured matmul FLOP/s by this
count. Per token of a packed step:

- decoder linear layers: 2 x params forward + 2 x params for the input gradient; the frozen base
  gets no weight gradient (that third 2 x params is why a full fine-tune is "6 x params");
- LoRA A and B: 6 x their params (forward, input and weight gradients);
- attention scores and the weighted sum: 4 x hidden x context forward, twice that backward, per
  layer, where context is the mean number of positions a token attends to (causal, within its
  own sample, as the recipe's per-sample attention runs it);
- output head: 4 x vocabulary x hidden (forward, input gradient), only at labelled positions,
  since the fused head skips the rest (engine.training.head).

Embedding lookups, norms, activations, softmax and the optimizer are not matmuls and are not
counted. This module knows nothing of timing or of files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StepFlops:
    """FLOPs per token of a LoRA step, by part, and the rule-of-thumb 6 x params for comparison."""

    decoder_linear: float
    lora: float
    attention: float
    head: float
    six_n: float  # 6 x all parameters: the usual full-fine-tune rule of thumb
    labelled_fraction: float
    mean_context: float

    @property
    def per_token(self) -> float:
        return self.decoder_linear + self.lora + self.attention + self.head

    def describe(self) -> str:
        """One line saying what is counted (in MFLOP per token)."""
        return (f"{self.per_token / 1e6:.4g} MFLOP/token counted = decoder linears "
                f"{self.decoder_linear / 1e6:.4g} (4 x params: forward + input gradient) + LoRA "
                f"{self.lora / 1e6:.3g} (6 x params) + attention {self.attention / 1e6:.3g} "
                f"(mean context {self.mean_context:.0f}) + head {self.head / 1e6:.3g} (4 x V x H "
                f"at the {self.labelled_fraction:.0%} labelled positions); the 6 x params rule "
                f"would say {self.six_n / 1e6:.4g}")


def lora_step_flops(peft_model: Any, sample_lengths: list[int], labelled_tokens: int) -> StepFlops:
    """Count the matmul FLOPs per token of a LoRA step (see the module docstring).

    Args:
        peft_model: the PEFT model as the recipe trains it.
        sample_lengths: the length of every training sample (attention is per sample).
        labelled_tokens: how many of their tokens carry a label (the head runs there).
    """
    import torch

    causal_lm = peft_model.get_base_model()
    config = causal_lm.config
    vocab, hidden = config.vocab_size, config.hidden_size  # vocab as resized for hypertokens
    linear = lora = 0
    for name, module in causal_lm.named_modules():
        # The head (however PEFT wraps it for trainable token rows) is counted apart.
        if not isinstance(module, torch.nn.Linear) or module.out_features >= vocab:
            continue
        params = module.in_features * module.out_features
        if ".lora_A." in name or ".lora_B." in name:
            lora += params
        else:
            linear += params
    tokens = max(1, sum(sample_lengths))
    mean_context = sum(n * (n + 1) / 2 for n in sample_lengths) / tokens
    layers = config.num_hidden_layers
    attention_width = config.num_attention_heads * getattr(
        config, "head_dim", config.hidden_size // config.num_attention_heads)
    attention = 12 * layers * attention_width * mean_context
    fraction = min(1.0, labelled_tokens / tokens)
    head_flops = 4.0 * vocab * hidden * fraction
    all_params = sum(p.numel() for p in peft_model.parameters())
    return StepFlops(decoder_linear=4.0 * linear, lora=6.0 * lora, attention=attention,
                     head=head_flops, six_n=6.0 * all_params, labelled_fraction=fraction,
                     mean_context=mean_context)
