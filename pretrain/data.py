"""Training and validation samples: megatron-core GPTDatasets blended by the pack manifest.

Document masking (``pretrain.document_masking``, as KORMo trains): megatron's dataset resets the
attention mask and position ids after every EOD, so a token attends only to its own document. The
RoPE in megatron's GPTModel rotates by position in the sequence, not by these position ids; that is
the same function: a RoPE score depends only on the distance between query and key, which the
reset does not change within a document.

A run's training samples are a list of blocks (:class:`SampleBlocks`): block 0 is the dataset
built for the first ``train_steps``; extending ``train_steps`` on resume appends a block built for
the extra samples (seed + k), so every sample already trained on keeps its place in the order.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from pretrain.pack import PackManifest


class ManifestTokenizer:
    """The token facts megatron's GPTDataset needs (eod, pad, vocab size), from the pack manifest."""

    def __init__(self, manifest: PackManifest) -> None:
        self.vocab_size = manifest.vocab_size
        self.eod = manifest.eos_id
        self.bos = manifest.bos_id
        self.pad = -1  # megatron's "no pad token": packed documents are never padded
        self.unique_identifiers = {"class": type(self).__name__, "sha256": manifest.tokenizer_sha256}


def _blend(manifest: PackManifest, root: Path, split: str) -> tuple[list[str], list[float]]:
    sets = [d for d in manifest.split(split) if d.tokens > 0 and d.weight > 0]
    if not sets:
        raise ValueError(f"pack manifest has no non-empty {split} datasets")
    # Relative to the working directory (the repo root under DVC): megatron writes these paths
    # into its index cache, which then reads the same in every clone.
    return [os.path.relpath(root / d.prefix) for d in sets], [d.weight for d in sets]


def build_datasets(manifest_path: Path, seq_length: int, train_samples: int, valid_samples: int,
                   seed: int, cache_dir: Path, document_masking: bool = False) -> tuple[Any, Any]:
    """(train, valid) megatron datasets of ``seq_length``-token samples."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    from pretrain.pack import load_manifest

    manifest = load_manifest(manifest_path)
    root = Path(manifest_path).parent
    config = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend_per_split=[_blend(manifest, root, "train"), _blend(manifest, root, "valid"), None],
        tokenizer=ManifestTokenizer(manifest),
        reset_position_ids=document_masking,
        reset_attention_mask=document_masking,
        eod_mask_loss=False,
        create_attention_mask=document_masking,
        path_to_cache=str(cache_dir),
        mid_level_dataset_surplus=0.05,
    )
    train, valid, _ = BlendedMegatronDatasetBuilder(
        GPTDataset, [train_samples, valid_samples, 0], lambda: True, config).build()
    return train, valid


def build_cached(manifest_path: Path, seq_length: int, train_samples: int, valid_samples: int,
                 seed: int, cache_dir: Path, document_masking: bool = False) -> tuple[Any, Any]:
    """:func:`build_datasets` whose index cache is published whole (collective: every rank calls
    it): built into a temp folder, then renamed, so a launch killed mid-build never leaves
    truncated index files for the next one to load."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        rank = torch.distributed.get_rank()
        tmp = cache_dir.with_name(cache_dir.name + ".tmp")
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # our own temp folder of a build that was cut off
        torch.distributed.barrier()
        build_datasets(manifest_path, seq_length, train_samples, valid_samples, seed, tmp, document_masking)
        torch.distributed.barrier()
        if rank == 0:
            os.replace(tmp, cache_dir)
        torch.distributed.barrier()
    return build_datasets(manifest_path, seq_length, train_samples, valid_samples, seed, cache_dir,
                          document_masking)


class SampleBlocks:
    """Consecutive blocks of training samples: sample ``i`` of the run is sample ``i - start`` of
    the block holding it."""

    def __init__(self, blocks: list[Any], sizes: list[int]) -> None:
        self.blocks, self.sizes = blocks, sizes
        self.starts = [sum(sizes[:k]) for k in range(len(sizes))]

    def __len__(self) -> int:
        return sum(self.sizes)

    def __getitem__(self, i: int) -> dict[str, Any]:
        for block, start, size in zip(self.blocks, self.starts, self.sizes, strict=True):
            if start <= i < start + size:
                return block[i - start]
        raise IndexError(f"sample {i} is beyond the run's {len(self)} training samples")


def block_sizes(saved: list[int] | None, train_samples: int) -> list[int]:
    """Sample counts of a run's blocks: those a checkpoint recorded, plus one for any samples the
    (extended) ``train_steps`` needs beyond them."""
    sizes = list(saved or [])
    if sum(sizes) < train_samples:
        sizes.append(train_samples - sum(sizes))
    return sizes


def build_blocks(manifest_path: Path, seq_length: int, sizes: list[int], valid_samples: int, seed: int,
                 cache_dir: Path, document_masking: bool = False) -> tuple[SampleBlocks, Any]:
    """(training blocks, validation set): block k is built with seed + k into its own index cache;
    the validation set is block 0's."""
    blocks, valid = [], None
    for k, size in enumerate(sizes):
        cache = Path(cache_dir)
        cache = cache if k == 0 else cache.with_name(f"{cache.name}-block{k}")
        train, v = build_cached(manifest_path, seq_length, size, valid_samples, seed + k, cache,
                                document_masking)
        blocks.append(train)
        valid = v if k == 0 else valid
    return SampleBlocks(blocks, sizes), valid


def batch(dataset: Any, start: int, size: int) -> dict[str, torch.Tensor]:
    """Samples ``start .. start+size-1`` stacked: tokens, labels, loss_mask, position_ids, and the
    attention_mask ([b, 1, s, s], True = masked) when the dataset makes one (document masking)."""
    items = [dataset[i] for i in range(start, start + size)]
    keys = ["tokens", "labels", "loss_mask", "position_ids"]
    keys += ["attention_mask"] if "attention_mask" in items[0] else []
    out = {k: torch.stack([it[k] for it in items]) for k in keys}
    if torch.cuda.is_available():
        out = {k: v.cuda(non_blocking=True) for k, v in out.items()}
    return out


def sample_start(step: int, micro: int, dp_rank: int, global_batch: int, micro_batch: int,
                 data_parallel: int) -> int:
    """Index of the first sample of micro-batch ``micro`` of ``step`` on data-parallel rank
    ``dp_rank``; a resumed run reads from exactly where the interrupted one stopped."""
    return step * global_batch + micro * micro_batch * data_parallel + dp_rank * micro_batch

