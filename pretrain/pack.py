"""Stage ``pack``: tokenize curated documents into megatron-core ``.bin/.idx`` files, one per
source for training and one per language for validation, plus the blend manifest pretrain reads.

The manifest records each file's size and sha256 and is written last: it is the commit point, and
:func:`verify_manifest` checks every file against it before pretrain or export read them."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveInt
from tqdm import tqdm

from dasi.atomic import atomic_path, write_json
from dasi.formats import read_parquet
from dasi.integrity import FileRecord, IntegrityError, VerifyMode, check, record
from dasi.provenance import sha256_file
from dasi.strict import StrictModel

Lang = Literal["ko", "en", "code"]
MANIFEST_FORMAT = "pack-manifest/2"
REPACK = "Re-create the packed data with: dvc repro -f pack"


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
    bin: FileRecord
    idx: FileRecord


class PackManifest(StrictModel):
    format: Literal["pack-manifest/2"] = MANIFEST_FORMAT
    tokenizer_sha256: str
    vocab_size: PositiveInt
    eos_id: NonNegativeInt
    bos_id: NonNegativeInt
    dtype: str
    datasets: list[PackedDataset]

    def split(self, name: str) -> list[PackedDataset]:
        return [d for d in self.datasets if d.split == name]


def load_manifest(path: Path) -> PackManifest:
    """The manifest at ``path``; one of another format (older pack code) is refused in one line."""
    raw = json.loads(Path(path).read_text())
    if raw.get("format") != MANIFEST_FORMAT:
        raise IntegrityError(f"{path}: format {raw.get('format')!r}, expected {MANIFEST_FORMAT!r}; "
                             f"nothing was changed. {REPACK}")
    return PackManifest.model_validate(raw)


def verify_manifest(path: Path, mode: VerifyMode = "sha256") -> PackManifest:
    """The manifest at ``path`` after checking every ``.bin/.idx`` it names against its record."""
    manifest = load_manifest(path)
    root = Path(path).parent
    files = [(root / f"{d.prefix}.{ext}", getattr(d, ext))
             for d in manifest.datasets for ext in ("bin", "idx")]
    check(files, mode, Path(path), REPACK)
    return manifest


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


def _group_texts(curated_file: Path) -> dict[tuple[str, str, str], list[str]]:
    """Texts by (split, dataset name, language): one training set per source, one held-out set
    per language."""
    groups: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for d in read_parquet(curated_file, "curated").to_pylist():
        split = "train" if d["split"] == "train" else "valid"
        name = d["source"] if split == "train" else f"heldout_{d['lang']}"
        groups[(split, name, d["lang"])].append(d["text"])
    return groups


def _encode(tok, texts: list[str], batch: int) -> list[list[int]]:
    ids = []
    for i in range(0, len(texts), batch):
        enc = tok(texts[i: i + batch], add_special_tokens=False)["input_ids"]
        # <bos> text <eos>: the document boundary megatron's GPTDataset sees.
        ids.extend([tok.bos_token_id, *e, tok.eos_token_id] for e in enc)
    return ids


def _set_weights(entries: list[dict], blend: dict[str, float]) -> None:
    for split in ("train", "valid"):
        sel = [e for e in entries if e["split"] == split]
        if split == "train":
            weights = blend_weights({e["name"]: e["tokens"] for e in sel},
                                    {e["name"]: e["lang"] for e in sel}, blend)
        else:  # validation: every language's held-out text counts by its own tokens
            total = sum(e["tokens"] for e in sel) or 1
            weights = {e["name"]: e["tokens"] / total for e in sel}
        for e in sel:
            e["weight"] = round(weights[e["name"]], 6)


def run(cfg: PackConfig, curated_file: Path, tokenizer_dir: Path, out_dir: Path, log) -> PackManifest:
    """Write ``out_dir`` whole or not at all: into a temp sibling, renamed when the manifest is in,
    so a killed run leaves no partial files among the outputs."""
    from megatron.core.datasets.indexed_dataset import DType
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    dtype = DType.optimal_dtype(len(tok))
    groups = _group_texts(curated_file)
    entries = []
    with atomic_path(Path(out_dir)) as tmp:
        tmp.mkdir()
        for (split, name, lang), texts in tqdm(sorted(groups.items()), desc="pack", unit="dataset"):
            ids = _encode(tok, texts, cfg.encode_batch)
            write_indexed(tmp / name, ids, dtype)
            entries.append({"name": name, "prefix": name, "lang": lang, "split": split,
                            "documents": len(ids), "tokens": sum(map(len, ids)), "weight": 0.0,
                            "bin": record(tmp / f"{name}.bin"), "idx": record(tmp / f"{name}.idx")})
            log.log({"dataset": name, "documents": len(ids), "tokens": entries[-1]["tokens"]})
        _set_weights(entries, cfg.blend)
        manifest = PackManifest(
            tokenizer_sha256=sha256_file(tokenizer_dir / "tokenizer.json"),
            vocab_size=len(tok),
            eos_id=tok.eos_token_id,
            bos_id=tok.bos_token_id,
            dtype=np.dtype(dtype).name,
            datasets=[PackedDataset(**e) for e in entries],
        )
        write_json(tmp / "manifest.json", manifest.model_dump(mode="json"))
    log.summary({f"tokens_{s}": sum(d.tokens for d in manifest.split(s)) for s in ("train", "valid")})
    return manifest
