"""Stage ``pack``: tokenize curated documents into megatron-core ``.bin/.idx`` files, one per
source for training and one per language for validation, plus the blend manifest pretrain reads."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveInt
from tqdm import tqdm

from dasi.atomic import write_json
from dasi.formats import read_parquet
from dasi.provenance import sha256_file
from dasi.strict import StrictModel

Lang = Literal["ko", "en", "code"]
MANIFEST_FORMAT = "pack-manifest/1"


class PackConfig(StrictModel):
    blend: dict[Lang, NonNegativeFloat] = Field(description="target share of training tokens per language")
    encode_batch: PositiveInt = 256


class PackedDataset(StrictModel):
    name: str
    prefix: str = Field(description="path without .bin/.idx, relative to the manifest")
    lang: Lang
    split: Literal["train", "valid"]
    documents: NonNegativeInt
    tokens: NonNegativeInt
    weight: NonNegativeFloat


class PackManifest(StrictModel):
    format: Literal["pack-manifest/1"] = MANIFEST_FORMAT
    tokenizer_sha256: str
    vocab_size: PositiveInt
    eos_id: NonNegativeInt
    bos_id: NonNegativeInt
    dtype: str
    datasets: list[PackedDataset]

    def split(self, name: str) -> list[PackedDataset]:
        return [d for d in self.datasets if d.split == name]


def load_manifest(path: Path) -> PackManifest:
    return PackManifest.model_validate_json(Path(path).read_text())


def write_indexed(prefix: Path, docs: list[list[int]], dtype: type) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    for ids in docs:
        builder.add_document(np.asarray(ids, dtype=dtype), [len(ids)])
    builder.finalize(f"{prefix}.idx")


def blend_weights(tokens: dict[str, int], langs: dict[str, str], blend: dict[str, float]) -> dict[str, float]:
    """Each language gets its target share; its sources share it in proportion to their tokens."""
    missing = sorted({lang for lang in langs.values()} - set(blend))
    if missing:
        raise ValueError(f"pack.blend has no weight for languages {missing}; allowed keys: ko, en, code")
    lang_tokens = defaultdict(int)
    for name, n in tokens.items():
        lang_tokens[langs[name]] += n
    raw = {n: blend[langs[n]] * tokens[n] / lang_tokens[langs[n]] if tokens[n] else 0.0 for n in tokens}
    total = sum(raw.values())
    if total <= 0:
        raise ValueError("pack.blend: all weights are zero for the languages present")
    return {n: w / total for n, w in raw.items()}


def run(cfg: PackConfig, curated_file: Path, tokenizer_dir: Path, out_dir: Path, log) -> PackManifest:
    from megatron.core.datasets.indexed_dataset import DType
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    dtype = DType.optimal_dtype(len(tok))
    docs = read_parquet(curated_file, "curated").to_pylist()
    groups: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for d in docs:
        split = "train" if d["split"] == "train" else "valid"
        name = d["source"] if split == "train" else f"heldout_{d['lang']}"
        groups[(split, name, d["lang"])].append(d["text"])
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for (split, name, lang), texts in tqdm(sorted(groups.items()), desc="pack", unit="dataset"):
        ids = []
        for i in range(0, len(texts), cfg.encode_batch):
            enc = tok(texts[i: i + cfg.encode_batch], add_special_tokens=False)["input_ids"]
            # <bos> text <eos>: the document boundary megatron's GPTDataset sees.
            ids.extend([tok.bos_token_id, *e, tok.eos_token_id] for e in enc)
        write_indexed(out_dir / name, ids, dtype)
        entries.append({"name": name, "prefix": name, "lang": lang, "split": split,
                        "documents": len(ids), "tokens": sum(map(len, ids)), "weight": 0.0})
        log.log({"dataset": name, "documents": len(ids), "tokens": entries[-1]["tokens"]})
    for split in ("train", "valid"):
        sel = [e for e in entries if e["split"] == split]
        if split == "train":
            weights = blend_weights({e["name"]: e["tokens"] for e in sel},
                                    {e["name"]: e["lang"] for e in sel}, cfg.blend)
        else:  # validation: every language's held-out text counts by its own tokens
            total = sum(e["tokens"] for e in sel) or 1
            weights = {e["name"]: e["tokens"] / total for e in sel}
        for e in sel:
            e["weight"] = round(weights[e["name"]], 6)
    manifest = PackManifest(
        tokenizer_sha256=sha256_file(tokenizer_dir / "tokenizer.json"),
        vocab_size=len(tok),
        eos_id=tok.eos_token_id,
        bos_id=tok.bos_token_id,
        dtype=np.dtype(dtype).name,
        datasets=[PackedDataset(**e) for e in entries],
    )
    write_json(out_dir / "manifest.json", manifest.model_dump(mode="json"))
    log.summary({f"tokens_{s}": sum(d.tokens for d in manifest.split(s)) for s in ("train", "valid")})
    return manifest
