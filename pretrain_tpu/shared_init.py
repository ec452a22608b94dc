"""Stage ``tpu-init``: one set of initial weights for both engines, so that their runs compare.

A seeded Hugging Face Llama of the ``model:`` shape (normal(0, init_std) weights) is written once,
then imported into MaxText (an Orbax parameter checkpoint for ``load_parameters_path``) and into
Megatron (a checkpoint for ``pretrain.init_from``). Each import is parity-checked against the HF
model's logits on real packed tokens; a failed check writes no checkpoint.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dasi.atomic import atomic_path, write_json
from dasi.model_config import ModelConfig
from pretrain import import_hf
from pretrain.config import PretrainConfig
from pretrain.export import _load_tokenizer, _parity_ids, _write_folder, llama_config
from pretrain.pack import PackManifest, verify_manifest
from pretrain_tpu import run_config, venv
from pretrain_tpu.config import PretrainTpuConfig

HF, MAXTEXT, MEGATRON = "hf", "maxtext", "megatron"
PARITY_TOKENS = 64


class ParityError(ValueError):
    pass


def write_hf_init(m: ModelConfig, seed: int, tokenizer_dir: Path, folder: Path) -> None:
    """A freshly initialised LlamaForCausalLM (fp32) with the project's tokenizer."""
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    tok, end_id = _load_tokenizer(tokenizer_dir, m)
    _write_folder(folder, m, tokenizer_dir, tok, end_id, "float32")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(m, tok, "float32")).float()
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(folder / "model.safetensors"),
        metadata={"format": "pt"},
    )


def transcript(log: Any) -> Path:
    """Where a stage's MaxText calls write their output: one file in its run log's folder."""
    return Path(log.dir) / "maxtext.log"


def hf_logits(folder: Path, ids: torch.Tensor) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits.float().numpy()


def maxtext_logits(
    cfg: PretrainTpuConfig, keys: dict[str, Any], items: Path, ids: torch.Tensor, work: Path, log: Any
) -> np.ndarray:
    """MaxText's own forward pass of checkpoint ``items`` on ``ids`` (through the venv); ``work`` holds
    the hand-off files, the run log's folder MaxText's output."""
    yml = work / "logits.yml"
    yml.write_text(run_config.to_yaml(keys))
    np.savez(work / "tokens.npz", tokens=ids.numpy().astype(np.int32))
    venv.run(
        cfg,
        ["logits", str(yml), str(Path(items).resolve()), str(work / "tokens.npz"), str(work / "logits.npz")],
        log,
        transcript=transcript(log),
    )
    return np.load(work / "logits.npz")["logits"]


def parity(reference: np.ndarray, other: np.ndarray, gate: float) -> dict[str, Any]:
    diff = float(np.abs(reference - other).max())
    return {
        "max_abs_logit_diff": diff,
        "max_logit_diff": gate,
        "parity_tokens": int(reference.shape[1]),
        "argmax_agreement": float((reference.argmax(-1) == other.argmax(-1)).mean()),
        "passed": diff < gate,
    }


def require_parity(result: dict[str, Any], what: str, report: dict[str, Any], metrics: Path) -> None:
    """Stop when ``result`` (of :func:`parity`) missed its gate: ``report`` goes to ``metrics``, and
    the caller's atomic output is never published."""
    if not result["passed"]:
        write_json(metrics, report)
        raise ParityError(
            f"{what} parity failed: max |logit diff| {result['max_abs_logit_diff']:.3g} >= "
            f"{result['max_logit_diff']}; nothing was written"
        )


def parity_ids(manifest: Path, m: ModelConfig, verify: str) -> torch.Tensor:
    return _parity_ids(manifest, m, PARITY_TOKENS, verify)  # type: ignore[arg-type]


def run(
    m: ModelConfig,
    p: PretrainConfig,
    cfg: PretrainTpuConfig,
    manifest: Path,
    tokenizer_dir: Path,
    out: Path,
    metrics: Path,
    log: Any,
) -> dict[str, Any]:
    man: PackManifest = verify_manifest(manifest, p.verify_data)
    keys = run_config.maxtext_keys(m, p, cfg, man)  # a bad combination stops here, before any write
    venv.python(cfg)
    ids = parity_ids(manifest, m, p.verify_data)
    report: dict[str, Any] = {"format": "tpu-init/1", "seed": p.seed, "init_std": m.init_std}
    with atomic_path(out) as tmp, tempfile.TemporaryDirectory(prefix="tpu-init-") as scratch:
        tmp.mkdir(parents=True)
        write_hf_init(m, p.seed, tokenizer_dir, tmp / HF)
        reference = hf_logits(tmp / HF, ids)
        args = ["import-hf", str(tmp / HF), str((tmp / MAXTEXT).resolve())]
        venv.run(
            cfg,
            args + (["--scan-layers"] if cfg.scan_layers else []),
            log,
            transcript=transcript(log),
        )
        items = tmp / MAXTEXT / "0" / "items"
        mt = maxtext_logits(cfg, keys, items, ids, Path(scratch), log)
        report["maxtext_import"] = parity(reference, mt, cfg.max_logit_diff)
        require_parity(report["maxtext_import"], "MaxText import", report, metrics)
        mg = import_hf.run(
            m, tmp / HF, tmp / MEGATRON, log, max_logit_diff=cfg.max_logit_diff, parity_tokens=PARITY_TOKENS
        )
        report["megatron_import"] = {
            k: mg[k]
            for k in ("max_abs_logit_diff", "max_logit_diff", "parity_tokens", "argmax_agreement", "passed")
        }
    write_json(metrics, report)
    log.summary(report)
    return report
