"""Mix accounting: how many tokens the pretraining run draws from each source, and how many
epochs that is; a source repeated more than ``pack.max_epochs`` times stops the pack stage."""

from __future__ import annotations

from collections import defaultdict

from dasi.config import ConfigError

MIX_FORMAT = "pack-mix/1"


class TooManyEpochs(ConfigError):
    """A source would be repeated more than ``pack.max_epochs`` times (one line for the user)."""


def token_budget(train_steps: int, global_batch: int, seq_length: int) -> int:
    """Tokens the run trains on: every step reads ``global_batch`` samples of ``seq_length``
    tokens (pretrain asks megatron for ``train_steps x global_batch`` samples)."""
    return train_steps * global_batch * seq_length


def mix_report(entries: list[dict], weights: dict[str, float], budget_tokens: int, max_epochs: float) -> dict:
    """Per training source: tokens available, blend weight, tokens drawn (weight x budget) and
    epochs (drawn / available). Raises :class:`TooManyEpochs` naming the most repeated source
    above ``max_epochs``."""
    available: dict[str, int] = defaultdict(int)
    langs: dict[str, str] = {}
    for e in entries:
        if e["split"] == "train":
            available[e["name"]] += e["tokens"]
            langs[e["name"]] = e["lang"]
    sources = {}
    for name in sorted(available):
        drawn = round(weights[name] * budget_tokens)
        epochs = drawn / available[name] if available[name] else 0.0
        sources[name] = {"lang": langs[name], "tokens_available": available[name],
                         "weight": round(weights[name], 6), "tokens_drawn": drawn, "epochs": round(epochs, 4)}
    over = {n: s for n, s in sources.items() if s["epochs"] > max_epochs}
    if over:
        name = max(over, key=lambda n: over[n]["epochs"])
        s = over[name]
        more = f" (and {len(over) - 1} more sources)" if len(over) > 1 else ""
        raise TooManyEpochs(
            f"pack: source {name!r}{more} would be repeated {s['epochs']} epochs "
            f"({s['tokens_drawn']:,} tokens drawn of {s['tokens_available']:,} available, "
            f"weight {s['weight']}, budget {budget_tokens:,} tokens), "
            f"above pack.max_epochs = {max_epochs:g}: raise pack.max_epochs, lower its language's "
            f"pack.blend share or pretrain.train_steps, or add data; nothing was written")
    return {"format": MIX_FORMAT, "budget_tokens": budget_tokens, "max_epochs": max_epochs,
            "sources": sources}
