"""What each RedWhale phase trains, and nothing else.

- ``embed_head``: the input embeddings and the output head (one matrix when they are tied);
- ``odd_layers`` / ``even_layers``: the decoder layers whose 0-based index is odd / even
  (``model.layers.1``, ``.3``, … / ``.0``, ``.2``, …), every parameter inside them;
- ``lora``: peft LoRA adapters on the configured projections, the base frozen; the phase's output
  is the adapters merged back into plain weights (:mod:`adapt.train` saves it so).
A layer or LoRA phase with ``train_embeddings`` also trains the embeddings and the head; under LoRA
they are peft's ``modules_to_save`` (trained copies, kept tied when the model ties them, saved in
the phase's checkpoints and merged back).
Everything else is frozen (``requires_grad=False``), so the optimizer holds no state for it."""

from __future__ import annotations

import re
from typing import Any

from adapt.config import LoraConfig, Phase

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_index(name: str) -> int | None:
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def _embedding_names(model: Any) -> set[str]:
    wanted = {id(model.get_input_embeddings().weight)}
    head = model.get_output_embeddings()
    if head is not None:
        wanted.add(id(head.weight))
    return {n for n, p in model.named_parameters() if id(p) in wanted}


def _embedding_modules(model: Any) -> tuple[list[str], bool]:
    """Module names (last component, as peft's ``modules_to_save`` takes them) of the embeddings
    and, when it is a matrix of its own, the head; and whether the two are tied."""
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    tied = out is not None and out.weight is inp.weight
    wanted = [inp] if tied or out is None else [inp, out]
    names = [n.rsplit(".", 1)[-1] for n, m in model.named_modules() if any(m is w for w in wanted)]
    return names, tied


def phase_trainable(model: Any, phase: Phase, train_embeddings: bool = False) -> set[str]:
    """Names (as ``named_parameters`` gives them) of the parameters a non-LoRA phase trains."""
    names = [n for n, _ in model.named_parameters()]
    if phase == "embed_head":
        return _embedding_names(model)
    if phase in ("odd_layers", "even_layers"):
        parity = 1 if phase == "odd_layers" else 0
        layers = {n for n in names if (i := layer_index(n)) is not None and i % 2 == parity}
        return (layers | _embedding_names(model)) if train_embeddings else layers
    raise ValueError(f"phase {phase!r} trains adapters, not named base parameters")


def apply_phase(model: Any, phase: Phase, lora: LoraConfig, train_embeddings: bool = False) -> Any:
    """Freeze everything the phase does not train; for ``lora`` return the peft-wrapped model."""
    if phase == "lora":
        from peft import LoraConfig as PeftLora
        from peft import get_peft_model

        for p in model.parameters():
            p.requires_grad_(False)
        modules, tied = _embedding_modules(model) if train_embeddings else (None, False)
        cfg = PeftLora(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                       target_modules=list(lora.target_modules), bias="none", task_type="CAUSAL_LM",
                       modules_to_save=modules, ensure_weight_tying=tied)
        return get_peft_model(model, cfg)
    trainable = phase_trainable(model, phase, train_embeddings)
    if not trainable:
        raise ValueError(f"phase {phase}: the model has no parameters it would train")
    for n, p in model.named_parameters():
        p.requires_grad_(n in trainable)
    return model


def trainable_names(model: Any) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}
