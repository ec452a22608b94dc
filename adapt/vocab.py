"""The Korean vocabulary merged into an English model's tokenizer, RedWhale-style.

A Korean BPE is trained with the base's own normalizer and pre-tokenizer (so that its pieces are
strings of the base's byte alphabet), then its merges are appended to the base's, in the order it
learned them. Nothing of the base changes: every old token keeps its id, the old merges keep
their ranks, and new tokens get the ids after the last one in use. Only merges whose result holds a
non-ASCII byte are taken: a new merge ranks after every old one and joins only non-ASCII pieces, so
English and code tokenize exactly as before."""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from dasi.atomic import atomic_path

# The byte-level alphabet: printable stand-ins for the 256 bytes (GPT-2's table, as `tokenizers` has it).
_BYTES_TO_CHARS = pre_tokenizers.ByteLevel.alphabet()


def _byte_table() -> dict[str, int]:
    """Stand-in character -> byte, rebuilt as GPT-2 defines it (printable bytes map to themselves)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    assert set(table) == set(_BYTES_TO_CHARS)
    return table


BYTE_OF = _byte_table()


def token_bytes(token: str) -> bytes | None:
    """The bytes a byte-level token stands for (None if it is not made of the byte alphabet)."""
    try:
        return bytes(BYTE_OF[c] for c in token)
    except KeyError:
        return None


def train_korean_bpe(texts: list[str], base: Tokenizer, vocab_size: int, min_frequency: int) -> Tokenizer:
    """A BPE on Korean ``texts`` that splits and normalizes text as ``base`` does."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = base.normalizer
    tok.pre_tokenizer = base.pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[],
                                  initial_alphabet=_BYTES_TO_CHARS, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


@dataclass
class MergeReport:
    base_vocab: int
    added: int = 0
    final_vocab: int = 0
    # Korean merges not taken, by reason (over_limit: the ones left when max_new_tokens was reached)
    skipped: dict[str, int] = field(default_factory=lambda: {"already_in_base": 0, "ascii_only": 0,
                                                             "part_missing": 0, "over_limit": 0})
    # new tokens that the merged BPE does not produce even from their own string (base merges
    # rank first and can join their bytes differently): rows that training will never see
    unreachable: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _merge_pairs(merges: list) -> tuple[list[tuple[str, str]], bool]:
    """Merges as pairs, and whether the file wrote them as "a b" strings."""
    if merges and isinstance(merges[0], str):
        return [tuple(m.split(" ", 1)) for m in merges], True  # type: ignore[misc]
    return [tuple(m) for m in merges], False  # type: ignore[misc]


def _new_merges(korean_merges: list[tuple[str, str]], vocab: set[str], added: set[str], max_new: int,
                report: MergeReport) -> list[tuple[str, str]]:
    """The Korean merges to append, in the Korean BPE's order (the rules are in merge_vocab).
    ``vocab``: the BPE's tokens, grown as merges are taken; ``added``: the added tokens' strings,
    which the BPE model never produces and so cannot be a merge's part."""
    taken: list[tuple[str, str]] = []
    for n, (a, b) in enumerate(korean_merges):
        if len(taken) == max_new:
            report.skipped["over_limit"] = len(korean_merges) - n
            break
        token = a + b
        raw = token_bytes(token)
        if token in vocab or token in added:
            report.skipped["already_in_base"] += 1
        elif raw is None or raw.isascii():
            report.skipped["ascii_only"] += 1
        elif a not in vocab or b not in vocab:
            report.skipped["part_missing"] += 1
        else:
            taken.append((a, b))
            vocab.add(token)
    return taken


def _unreachable(merged_json: dict[str, Any], new_tokens: list[str]) -> int:
    bpe = Tokenizer.from_str(json.dumps(merged_json)).model
    return sum(1 for t in new_tokens if [p.value for p in bpe.tokenize(t)] != [t])


def merge_vocab(base_json: dict[str, Any], korean: Tokenizer,
                max_new_tokens: int) -> tuple[dict[str, Any], MergeReport]:
    """``base_json`` (a tokenizer.json) with the Korean BPE's new tokens and merges appended.

    A Korean merge (a, b) is taken when a+b is not yet a token (of the vocab or the added tokens),
    a and b both are (base or taken before), and a+b holds a non-ASCII byte; at most
    ``max_new_tokens`` are taken. New ids follow the largest id in use. ``base_json`` is left as it was."""
    model = base_json["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"adapt.vocab: the base tokenizer is {model.get('type')}, not BPE")
    added_tokens = base_json.get("added_tokens") or []
    used = [*model["vocab"].values(), *(t["id"] for t in added_tokens)]
    report = MergeReport(base_vocab=len(set(used)))
    korean_merges, _ = _merge_pairs(json.loads(korean.to_str())["model"]["merges"])
    taken = _new_merges(korean_merges, set(model["vocab"]), {t["content"] for t in added_tokens},
                        max_new_tokens, report)

    merged = copy.deepcopy(base_json)
    next_id = max(used) + 1
    merged["model"]["vocab"].update({a + b: next_id + i for i, (a, b) in enumerate(taken)})
    _, as_strings = _merge_pairs(model["merges"])
    merged["model"]["merges"] += [f"{a} {b}" if as_strings else [a, b] for a, b in taken]
    report.added = len(taken)
    report.final_vocab = next_id + len(taken)
    report.unreachable = _unreachable(merged, [a + b for a, b in taken])
    return merged, report


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja")


def save_merged(base_dir: Path, merged_json: dict[str, Any], out_dir: Path) -> None:
    """A transformers tokenizer folder: the base folder's tokenizer files, tokenizer.json replaced.
    ``out_dir`` may be ``base_dir`` (then only tokenizer.json is rewritten). Slow-tokenizer files
    (vocab.json, merges.txt) are not copied: they would describe the old vocabulary."""
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    if base_dir.resolve() == out_dir.resolve():
        _write_tokenizer_json(out_dir / "tokenizer.json", merged_json)
        return
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for name in TOKENIZER_FILES:
            if (base_dir / name).is_file():
                shutil.copy2(base_dir / name, tmp / name)
        _write_tokenizer_json(tmp / "tokenizer.json", merged_json)


def _write_tokenizer_json(path: Path, content: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")


def token_ratio(texts: list[str], new_tok: Any, base_tok: Any) -> dict[str, Any]:
    """Tokens of ``texts`` under the merged tokenizer over tokens under the base (no special tokens)."""
    merged = sum(len(new_tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
    base = sum(len(base_tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
    return {"ratio": merged / base if base else float("nan"), "merged_tokens": merged, "base_tokens": base,
            "chars": sum(len(t) for t in texts), "docs": len(texts)}
