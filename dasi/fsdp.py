"""A stage's ``fsdp`` setting (SFT, the adaptation phases): the words it may hold, and what they
become in the Hugging Face Trainer's arguments. Kept free of torch so that configs validate fast."""

from __future__ import annotations

from typing import Any

# TrainingArguments.fsdp words this project accepts (transformers' FSDPOption, less hybrid_shard /
# no_shard, which FSDP2, transformers' default engine, does not have).
SHARDINGS = ("full_shard", "shard_grad_op")
FSDP_WORDS = (*SHARDINGS, "auto_wrap", "offload")


def check_fsdp_words(value: str) -> str:
    """A stage's ``fsdp`` setting: known words, exactly one sharding (or '' for none)."""
    words = value.split()
    unknown = [w for w in words if w not in FSDP_WORDS]
    if unknown:
        raise ValueError(f"unknown FSDP option {unknown[0]!r}: allowed {', '.join(FSDP_WORDS)}")
    if words and sum(w in SHARDINGS for w in words) != 1:
        raise ValueError(f"name exactly one sharding: {' or '.join(SHARDINGS)}")
    return value


def check_wrap_layer(layer: str | None, fsdp: str | None, section: str) -> str | None:
    """A wrap layer is a word of FSDP's auto-wrap: it needs ``<section>.fsdp``."""
    if layer and not fsdp:
        raise ValueError(f"a wrap layer needs {section}.fsdp (e.g. 'full_shard auto_wrap')")
    return layer


def fsdp_options(fsdp: str, wrap_layer: str | None,
                 activation_checkpointing: bool) -> tuple[bool, dict[str, Any] | None, bool]:
    """``fsdp`` words as TrainingArguments' (fsdp, fsdp_config, gradient_checkpointing).

    transformers deprecates the string form; this is its FSDP2 equivalent. With FSDP the
    activations are checkpointed by FSDP (transformers refuses both kinds at once), and the
    full state dict is gathered for saving, so the saved folder is an ordinary HF model."""
    words = check_fsdp_words(fsdp).split()
    if not words:
        return False, None, activation_checkpointing
    config: dict[str, Any] = {"version": 2, "reshard_after_forward": "full_shard" in words,
                              "state_dict_type": "FULL_STATE_DICT"}
    if "offload" in words:
        config["cpu_offload"] = True
    if wrap_layer:
        config["transformer_layer_cls_to_wrap"] = [wrap_layer]
    if activation_checkpointing:
        config["activation_checkpointing"] = True
    return True, config, False
