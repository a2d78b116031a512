"""Growing a model's embedding matrices for hypertokens, and training only what is new.

Each new row starts as the mean of the rows of the base tokens that spell the hypertoken
(`<|reg:logic|>` starts near "<", "|", "reg", ":", "logic", "|>"), for the input embedding and,
when it is not tied to it, for the output projection. Random init is never used: a random row in
the output projection gives the new token an arbitrary logit and disturbs the first steps of
training. Old rows are untouched, so logits over the old vocabulary do not change for prompts
that contain no new token. This module knows nothing of profiles' files, data or training loops.
"""

from __future__ import annotations

from typing import Any

TRAIN_NEW_ROWS = ("trainable_tokens", "modules_to_save", "none")


def _leaf_name(model: Any, module: Any) -> str:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name.rsplit(".", 1)[-1]
    raise ValueError("module not found in the model")


def _tied(model: Any) -> bool:
    output = model.get_output_embeddings()
    return output is None or output.weight is model.get_input_embeddings().weight


def resize_embeddings(model: Any, hypertokenizer: Any) -> list[int]:
    """Make room for the hypertokenizer's new ids, each new row the mean of its spelling's rows.

    Args:
        model: a transformers causal LM (or any `PreTrainedModel` with input embeddings).
        hypertokenizer: the `Hypertokenizer` whose `new_token_ids` need rows.

    Returns:
        The ids whose rows were initialised (empty when the model already had every id
        initialised, e.g. a tokenizer trained with its hypertokens).
    """
    import torch

    new_ids = hypertokenizer.new_token_ids
    if not new_ids:
        return []
    embeddings = model.get_input_embeddings()
    rows_before = embeddings.weight.shape[0]
    rows_needed = max(rows_before, len(hypertokenizer), max(new_ids) + 1)
    if rows_needed != rows_before:
        # mean_resizing=False: transformers' own init is overwritten below anyway, and its
        # covariance sampling is slow and random.
        model.resize_token_embeddings(rows_needed, mean_resizing=False)
    input_weight = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    output_weight = None if _tied(model) else output.weight
    token_of = {hypertokenizer.token_id(t): t for t in hypertokenizer.hypertokens}
    with torch.no_grad():
        for token_id in new_ids:
            spelling = hypertokenizer.spelling_ids(token_of[token_id])
            spelling = [i for i in spelling if i < rows_before and i not in new_ids]
            for weight in (input_weight, output_weight):
                if weight is None:
                    continue
                if spelling:
                    row = weight[spelling].float().mean(dim=0)
                else:  # nothing spells it (cannot happen with byte-level bases): use the centroid
                    row = weight[:rows_before].float().mean(dim=0)
                weight[token_id] = row.to(weight.dtype)
    return list(new_ids)


def new_rows_peft_kwargs(model: Any, hypertokenizer: Any, train_new_rows: str) -> dict[str, Any]:
    """The extra `peft.LoraConfig` arguments that make the new rows trainable.

    Args:
        model: the (resized) model, used to find the embedding modules' names.
        hypertokenizer: the `Hypertokenizer`; its `new_token_ids` are the rows to train.
        train_new_rows: `profile.tokenizer.train_new_rows`: `trainable_tokens` (only the new
            rows, via PEFT `trainable_token_indices`), `modules_to_save` (the whole input and
            output embeddings) or `none`.

    Returns:
        A dict to unpack into `LoraConfig(...)`; empty when there is nothing to train.

    Raises:
        ValueError: `train_new_rows` is not one of the three choices.
    """
    if train_new_rows not in TRAIN_NEW_ROWS:
        raise ValueError(f"train_new_rows must be one of {', '.join(TRAIN_NEW_ROWS)}, "
                         f"not {train_new_rows!r}")
    new_ids = hypertokenizer.new_token_ids
    if train_new_rows == "none" or not new_ids:
        return {}
    input_name = _leaf_name(model, model.get_input_embeddings())
    output = model.get_output_embeddings()
    output_name = None if output is None else _leaf_name(model, output)
    if train_new_rows == "modules_to_save":
        names = [input_name] + ([output_name] if output_name and not _tied(model) else [])
        return {"modules_to_save": names}
    if output_name is None or _tied(model):
        # PEFT ties the output side to the input adapter itself when the weights are tied.
        return {"trainable_token_indices": {input_name: list(new_ids)}}
    return {"trainable_token_indices": {input_name: list(new_ids), output_name: list(new_ids)}}


def profile_peft_kwargs(model: Any, hypertokenizer: Any, profile: Any) -> dict[str, Any]:
    """`new_rows_peft_kwargs` with the choice read from `profile.tokenizer.train_new_rows`."""
    return new_rows_peft_kwargs(model, hypertokenizer, profile.tokenizer.train_new_rows)
