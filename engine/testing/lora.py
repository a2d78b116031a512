"""Small real LoRA adapters for tests and benchmarks: a few PEFT training steps, or a loud random one.

`train_lora` runs a short, real training loop (AdamW on next-token loss over a few sentences) so
the adapter moves the model the way a trained one does. `random_lora` sets lora_B to random values
scaled up on purpose, so that any layout mistake in an export (the q/k RoPE permutation above
all) shows as a large difference in logits. Both save a standard PEFT adapter dir.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

DEFAULT_TEXTS = (
    "The river remembers every stone it passed, and the night keeps its promise.",
    "Because the argument holds, the conclusion follows: all men are mortal.",
    "She wept at the door of the old house where the hero returns to his mother.",
    "The function of the key is to open; the tool serves the hand that holds it.",
)


def _peft_model(model_dir: Path, r: int, alpha: float, targets: Sequence[str], seed: int):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(targets),
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def train_lora(model_dir: Path, out: Path, *, steps: int = 8, r: int = 8, alpha: float = 16,
               learning_rate: float = 2e-3, texts: Sequence[str] = DEFAULT_TEXTS,
               targets: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj"),
               seed: int = 0) -> Path:
    """Train a LoRA adapter for a few steps on `texts` and save it to `out`."""
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = _peft_model(model_dir, r, alpha, targets, seed)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=learning_rate)
    batches = [tokenizer(text, return_tensors="pt")["input_ids"] for text in texts]
    for step in range(steps):
        ids = batches[step % len(batches)]
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    return Path(out)


def random_lora(model_dir: Path, out: Path, *, r: int = 8, alpha: float = 16, std: float = 0.05,
                targets: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj"),
                seed: int = 0) -> Path:
    """Save an adapter whose lora_B is random (not zero), large enough to change every logit."""
    import torch

    model = _peft_model(model_dir, r, alpha, targets, seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    model.save_pretrained(out)
    return Path(out)


def train_lora_with_tokens(model_dir: Path, out: Path, new_tokens: Sequence[str], *,
                           steps: int = 6, r: int = 8, alpha: float = 16,
                           learning_rate: float = 2e-3, seed: int = 0) -> Path:
    """Add special tokens (rows start at the mean of their spelling's embeddings), train a LoRA
    plus the new rows (PEFT trainable tokens) on text that uses them, and save adapter and
    tokenizer together in `out`, as training does for a profile with hypertokens."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    old_size = len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": list(new_tokens)})
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.resize_token_embeddings(len(tokenizer))
    embeddings = model.get_input_embeddings().weight
    with torch.no_grad():
        for token in new_tokens:
            spelling = tokenizer(token, add_special_tokens=False,
                                 split_special_tokens=True)["input_ids"]
            embeddings[tokenizer.convert_tokens_to_ids(token)] = embeddings[spelling].mean(0)
    new_ids = list(range(old_size, len(tokenizer)))
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                        trainable_token_indices={"embed_tokens": new_ids}, task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=learning_rate)
    texts = [f"{new_tokens[i % len(new_tokens)]} {text} {new_tokens[(i + 1) % len(new_tokens)]}"
             for i, text in enumerate(DEFAULT_TEXTS)]
    for step in range(steps):
        ids = tokenizer(texts[step % len(texts)], return_tensors="pt")["input_ids"]
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return Path(out)


def random_lora_with_rows(model_dir: Path, out: Path, hypertokenizer: object, *, r: int = 8,
                          alpha: float = 16, std: float = 0.05, row_std: float = 0.05,
                          targets: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj"),
                          seed: int = 0) -> Path:
    """A random adapter with hypertoken rows, saved as training saves one (PEFT trainable tokens
    plus the hypertokenizer): the base is resized as in training, lora_B is random and each
    new row moves `row_std` away from its mean-of-spelling start."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from engine.tokenizer import new_rows_peft_kwargs, resize_embeddings

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    resize_embeddings(model, hypertokenizer)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(targets),
                        task_type="CAUSAL_LM",
                        **new_rows_peft_kwargs(model, hypertokenizer, "trainable_tokens"))
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
            elif "trainable_tokens_delta" in name:
                param.add_(torch.randn(param.shape, generator=generator) * row_std)
    peft_model.save_pretrained(out, save_embedding_layers=False)
    hypertokenizer.save(out)  # type: ignore[attr-defined]
    return Path(out)
