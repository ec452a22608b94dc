"""Stage ``pack``: tokenize the curated shards into megatron-core ``.bin/.idx`` files, one per
curated shard and dataset (a source for training, a language for validation), plus the blend
manifest pretrain reads and the mix report (tokens and epochs per source, ``metrics/mix.json``).

Worker processes take one curated shard each and stream its record batches, so memory is flat
in corpus size. Per-shard files are listed in the manifest, not merged: megatron's
``IndexedDatasetBuilder.add_index`` keeps every document's length in a Python list, so a merged
file would cost memory in proportion to the whole dataset, and copy every byte a second time.

The manifest records each file's size and sha256 and is written last: it is the commit point, and
:func:`verify_manifest` checks every file against it before pretrain or export read them."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from dasi.atomic import atomic_path, write_json
from dasi.integrity import FileRecord, IntegrityError, VerifyMode, check, record
from dasi.provenance import sha256_file
from dasi.strict import StrictModel
from pretrain.mix import mix_report

Lang = Literal["ko", "en", "code"]
MANIFEST_FORMAT = "pack-manifest/3"
REPACK = "Re-create the packed data with: dvc repro -f pack"
READ_COLUMNS = ["text", "source", "lang", "split"]


class PackConfig(StrictModel):
    blend: dict[Lang, NonNegativeFloat] = Field(description="target share of training tokens per language")
    encode_batch: PositiveInt = Field(256, description="documents per tokenizer call (and per read)")
    workers: PositiveInt = Field(1, description="tokenizing processes, one curated shard each at a time")
    # Muennighoff et al. 2023 (Scaling Data-Constrained Language Models): up to ~4 epochs of
    # repeated data train about as well as fresh data; beyond that returns fall fast.
    max_epochs: PositiveFloat = Field(4.0, description="most epochs any training source may be drawn")


class PackedDataset(StrictModel):
    """One curated shard's documents of one dataset; a dataset is every entry sharing its name."""
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
    format: Literal["pack-manifest/3"] = MANIFEST_FORMAT
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


# -- one shard, in a worker process ------------------------------------------------------------

class _Worker:
    """Per-process state: the tokenizer, loaded once by the pool's initializer."""
    tok = None


def _init_worker(tokenizer_file: str) -> None:
    from tokenizers import Tokenizer

    # One core per worker: ``workers`` is the number of cores pack uses (the Rust tokenizer
    # would otherwise start a thread per core in every worker).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _Worker.tok = Tokenizer.from_file(tokenizer_file)


def dataset_of(split: str, source: str, lang: str) -> tuple[str, str]:
    """(split, dataset name): one training set per source, one validation set per language."""
    return ("train", source) if split == "train" else ("valid", f"heldout_{lang}")


def pack_shard(shard: str, out_root: str, bos: int, eos: int, dtype_name: str, batch: int) -> list[dict]:
    """Tokenize one curated shard into ``<out_root>/<dataset>/<shard stem>.bin/.idx``; returns one
    entry per dataset present in the shard, in name order. Holds one record batch of text and one
    builder per dataset (megatron's builder keeps this shard's document lengths)."""
    import pyarrow.parquet as pq
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    dtype = np.dtype(dtype_name).type
    stem = Path(shard).stem
    builders: dict[tuple[str, str], IndexedDatasetBuilder] = {}
    stats: dict[tuple[str, str], dict] = {}
    for rb in pq.ParquetFile(shard).iter_batches(batch_size=batch, columns=READ_COLUMNS):
        cols = rb.to_pydict()
        # _fast: the same ids without character offsets, which pack never reads (~15% faster).
        encoded = _Worker.tok.encode_batch_fast(cols["text"], add_special_tokens=False)
        rows = zip(encoded, cols["source"], cols["lang"], cols["split"], strict=True)
        for enc, source, lang, split in rows:
            key = dataset_of(split, source, lang)
            if key not in builders:
                (Path(out_root) / key[1]).mkdir(parents=True, exist_ok=True)
                builders[key] = IndexedDatasetBuilder(str(Path(out_root) / key[1] / f"{stem}.bin"),
                                                      dtype=dtype)
                stats[key] = {"lang": lang, "documents": 0, "tokens": 0}
            # <bos> text <eos>: the document boundary megatron's GPTDataset sees.
            ids = np.empty(len(enc.ids) + 2, dtype=dtype)
            ids[0], ids[1:-1], ids[-1] = bos, enc.ids, eos
            builders[key].add_document(ids, [ids.size])
            stats[key]["documents"] += 1
            stats[key]["tokens"] += ids.size
    entries = []
    for (split, name), builder in sorted(builders.items()):
        prefix = Path(out_root) / name / stem
        builder.finalize(f"{prefix}.idx")
        entries.append({"name": name, "prefix": f"{name}/{stem}", "split": split, **stats[(split, name)],
                        "bin": record(Path(f"{prefix}.bin")).model_dump(),
                        "idx": record(Path(f"{prefix}.idx")).model_dump()})
    return entries


def optimal_dtype(vocab_size: int) -> str:
    """Megatron's token dtype for ``vocab_size`` (uint16 below 65,500 tokens), by name."""
    from megatron.core.datasets.indexed_dataset import DType

    return np.dtype(DType.optimal_dtype(vocab_size)).name


# Imported once by the fork server, then shared by every worker forked from it: megatron-core
# alone takes ~10 s of CPU to import, which a fresh (spawned) worker would pay each time.
WORKER_MODULES = ["megatron.core.datasets.indexed_dataset", "pyarrow.parquet", "tokenizers", __name__]


def pack_shards(shards: list[Path], out_root: Path, tokenizer_file: Path, vocab_size: int, bos: int, eos: int,
                batch: int, workers: int) -> tuple[str, list[dict]]:
    """(token dtype, every shard's entries in shard order): the same whatever ``workers`` is, so
    the files are too."""
    # Not fork: a child forked from a process that has started threads (pyarrow's pools) can hang.
    ctx = get_context("forkserver")
    ctx.set_forkserver_preload(WORKER_MODULES)
    with ProcessPoolExecutor(max_workers=min(workers, max(len(shards), 1)), mp_context=ctx,
                             initializer=_init_worker, initargs=(str(tokenizer_file),)) as pool:
        dtype = pool.submit(optimal_dtype, vocab_size).result()
        args = [(str(s), str(out_root), bos, eos, dtype, batch) for s in shards]
        results = pool.map(pack_shard, *zip(*args, strict=True)) if args else []
        return dtype, [e for entries in results for e in entries]


def tokenizer_facts(tokenizer_dir: Path) -> tuple[int, int, int]:
    """(vocabulary size with added tokens, bos id, eos id) of a saved transformers tokenizer folder,
    read without importing transformers (as ``len(tok)``, ``tok.bos_token_id``, ``tok.eos_token_id``)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    config = json.loads((Path(tokenizer_dir) / "tokenizer_config.json").read_text())

    def token_id(key: str) -> int:
        token = config[key]["content"] if isinstance(config[key], dict) else config[key]
        return tok.token_to_id(token)
    return tok.get_vocab_size(with_added_tokens=True), token_id("bos_token"), token_id("eos_token")


# -- the stage ---------------------------------------------------------------------------------

def set_weights(entries: list[dict], blend: dict[str, float]) -> dict[str, float]:
    """Give each per-shard entry its blend weight; returns the weight of each training source.

    A training source gets its language's share split by tokens (:func:`blend_weights`), and its
    shards share that by their tokens, so every shard of a source is drawn the same number of
    epochs. Validation: every language's held-out text counts by its own tokens."""
    train = [e for e in entries if e["split"] == "train"]
    source_tokens: dict[str, int] = defaultdict(int)
    for e in train:
        source_tokens[e["name"]] += e["tokens"]
    weights = blend_weights(dict(source_tokens), {e["name"]: e["lang"] for e in train}, blend)
    for e in train:
        e["weight"] = weights[e["name"]] * e["tokens"] / source_tokens[e["name"]] if e["tokens"] else 0.0
    valid = [e for e in entries if e["split"] == "valid"]
    total = sum(e["tokens"] for e in valid) or 1
    for e in valid:
        e["weight"] = e["tokens"] / total
    return weights


def run(cfg: PackConfig, budget_tokens: int, curated_dir: Path, tokenizer_dir: Path, out_dir: Path,
        mix_file: Path, log) -> PackManifest:
    """Write ``out_dir`` whole or not at all: into a temp sibling, renamed when the manifest is in,
    so a killed run leaves no partial files among the outputs. A source drawn more than
    ``cfg.max_epochs`` times by ``budget_tokens`` stops the stage before anything is written."""
    from data_gen.curated import curated_shards, read_manifest

    vocab_size, bos, eos = tokenizer_facts(tokenizer_dir)
    # As strongly as curate recorded them: sha256, or sizes only for multi-terabyte data.
    shards = curated_shards(curated_dir, read_manifest(curated_dir)["verify"])
    with atomic_path(Path(out_dir)) as tmp:
        tmp.mkdir()
        dtype, entries = pack_shards(shards, tmp, Path(tokenizer_dir) / "tokenizer.json", vocab_size, bos,
                                     eos, cfg.encode_batch, cfg.workers)
        entries.sort(key=lambda e: (e["split"], e["name"], e["prefix"]))
        weights = set_weights(entries, cfg.blend)
        mix = mix_report(entries, weights, budget_tokens, cfg.max_epochs)  # raises before any output
        for name, m in mix["sources"].items():
            log.log({"dataset": name, "tokens": m["tokens_available"], "epochs": m["epochs"]})
        manifest = PackManifest(
            tokenizer_sha256=sha256_file(Path(tokenizer_dir) / "tokenizer.json"),
            vocab_size=vocab_size,
            eos_id=eos,
            bos_id=bos,
            dtype=dtype,
            datasets=[PackedDataset(**e) for e in entries],
        )
        write_json(tmp / "manifest.json", manifest.model_dump(mode="json"))
    write_json(mix_file, mix)
    log.summary({f"tokens_{s}": sum(d.tokens for d in manifest.split(s)) for s in ("train", "valid")}
                | {"max_epochs_drawn": max((m["epochs"] for m in mix["sources"].values()), default=0.0)})
    return manifest
