"""The transformers oracle: greedy continuation of token ids, to check vLLM against in tests."""

from __future__ import annotations

from pathlib import Path

import torch


def greedy_token_ids(folder: Path, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """Greedy ``new_tokens`` for each prompt (one at a time: no padding effects)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for ids in prompts:
            x = torch.tensor([ids])
            y = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                               max_new_tokens=new_tokens)
            out.append(y[0, len(ids):].tolist())
    return out
