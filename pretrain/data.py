"""Training and validation samples: megatron-core GPTDatasets blended by the pack manifest."""

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
                   seed: int, cache_dir: Path) -> tuple[Any, Any]:
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
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
        path_to_cache=str(cache_dir),
        mid_level_dataset_surplus=0.05,
    )
    train, valid, _ = BlendedMegatronDatasetBuilder(
        GPTDataset, [train_samples, valid_samples, 0], lambda: True, config).build()
    return train, valid


def build_cached(manifest_path: Path, seq_length: int, train_samples: int, valid_samples: int,
                 seed: int, cache_dir: Path) -> tuple[Any, Any]:
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
        build_datasets(manifest_path, seq_length, train_samples, valid_samples, seed, tmp)
        torch.distributed.barrier()
        if rank == 0:
            os.replace(tmp, cache_dir)
        torch.distributed.barrier()
    return build_datasets(manifest_path, seq_length, train_samples, valid_samples, seed, cache_dir)


def batch(dataset: Any, start: int, size: int) -> dict[str, torch.Tensor]:
    """Samples ``start .. start+size-1`` stacked: tokens, labels, loss_mask, position_ids."""
    items = [dataset[i] for i in range(start, start + size)]
    keys = ("tokens", "labels", "loss_mask", "position_ids")
    out = {k: torch.stack([it[k] for it in items]) for k in keys}
    if torch.cuda.is_available():
        out = {k: v.cuda(non_blocking=True) for k, v in out.items()}
    return out


def sample_start(step: int, micro: int, dp_rank: int, global_batch: int, micro_batch: int,
                 data_parallel: int) -> int:
    """Index of the first sample of micro-batch ``micro`` of ``step`` on data-parallel rank
    ``dp_rank``; a resumed run reads from exactly where the interrupted one stopped."""
    return step * global_batch + micro * micro_batch * data_parallel + dp_rank * micro_batch

