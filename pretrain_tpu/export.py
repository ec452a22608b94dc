"""Stage ``tpu-export``: the last MaxText checkpoint as a Hugging Face Llama folder, parity-checked.

The folder is the Megatron export's (config, generation config, tokenizer; fp32 safetensors), so
SFT, evaluate and release read it the same way; ``dasi_trainer.json`` in it says MaxText trained it.
Parity: MaxText's own forward pass on the checkpoint against the exported HF model, on real packed
tokens; above ``pretrain_tpu.max_logit_diff`` nothing is written.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from dasi.atomic import atomic_path, write_json
from dasi.model_config import ModelConfig
from pretrain.config import PretrainConfig
from pretrain.export import _load_tokenizer, _write_folder
from pretrain.pack import verify_manifest
from pretrain_tpu import run_config, shared_init, train, venv
from pretrain_tpu.config import PretrainTpuConfig

TRAINER_FILE = "dasi_trainer.json"


def run(
    m: ModelConfig,
    p: PretrainConfig,
    cfg: PretrainTpuConfig,
    checkpoints: Path,
    manifest: Path,
    tokenizer_dir: Path,
    out: Path,
    metrics: Path,
    log: Any,
) -> dict[str, Any]:
    keys = run_config.maxtext_keys(m, p, cfg, verify_manifest(manifest, p.verify_data))
    items = train.latest_items(checkpoints)
    step = int(items.parent.name) + 1  # MaxText names a checkpoint by its 0-based step
    ids = shared_init.parity_ids(manifest, m, p.verify_data)
    tok, end_id = _load_tokenizer(tokenizer_dir, m)
    with atomic_path(out) as tmp, tempfile.TemporaryDirectory(prefix="tpu-export-") as scratch:
        _write_folder(tmp, m, tokenizer_dir, tok, end_id, "float32")
        venv.run(
            cfg,
            ["export-hf", str(items.resolve()), str(tmp.resolve()), f"--config={tmp / 'config.json'}"],
            log,
            transcript=shared_init.transcript(log),
        )
        mt = shared_init.maxtext_logits(cfg, keys, items, ids, Path(scratch), log)
        hf = shared_init.hf_logits(tmp, ids)
        result = {
            "format": "tpu-export/1",
            "trainer": "maxtext",
            "checkpoint_step": step,
            **shared_init.parity(mt, hf, cfg.max_logit_diff),
            "parameters": int(sum(t.numel() for t in _weights(tmp).values())),
        }
        shared_init.require_parity(result, "export", result, metrics)
        meta = json.loads((checkpoints / train.FINGERPRINT).read_text())
        write_json(
            tmp / TRAINER_FILE,
            {"trainer": "maxtext", "steps": step, "fingerprint": meta, "versions": train.versions(cfg)},
        )
    write_json(metrics, result)
    log.summary(result)
    return result


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))
