"""Batched greedy generation with a Hugging Face causal LM: the same prompts give the same texts."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def _left_padded(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, width - len(row) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def generate_greedy(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """The new text for each prompt, in the order of `prompts`; `on_batch(prompts done)` after each batch.

    Prompts are encoded as training encodes them (`tokenizer(prompt)`, BOS included), padded on the left,
    batched by length (less padding), decoded greedily until EOS or `max_new_tokens`. The text keeps the
    format's special tokens (`<action>` …): decoded with skip_special_tokens=False, with EOS and padding cut.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens and batch_size must be >= 1, got {max_new_tokens} and {batch_size}")
    if not prompts:
        return []
    from transformers import GenerationConfig

    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError(
            "the tokenizer has no eos_token: generation could not stop; set eos_token in tokenizer_config.json"
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    # A full config, so a sampling setup saved with the checkpoint cannot leak into a greedy evaluation.
    generation = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]), i))
    device = next(model.parameters()).device
    texts: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                input_ids, attention_mask = _left_padded([encoded[i] for i in batch], pad_id, device)
                output = model.generate(
                    input_ids=input_ids, attention_mask=attention_mask, generation_config=generation
                )
                for row, index in zip(output[:, input_ids.shape[1] :].tolist(), batch):
                    if eos_id in row:
                        row = row[: row.index(eos_id)]
                    texts[index] = tokenizer.decode([t for t in row if t != pad_id], skip_special_tokens=False)
                if on_batch is not None:
                    on_batch(start + len(batch))
    finally:
        model.train(was_training)
    return texts
