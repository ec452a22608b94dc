"""Stage ``tpu-pretrain``: MaxText pretrains the ``model:`` shape on the packed data.

The run config (``run.yml`` in the output folder) is the translation of the model and pretrain
sections (:mod:`pretrain_tpu.run_config`), the data are the Megatron path's packed files in its
sample order, and the initial weights are ``tpu-init``'s (the ones the Megatron arm starts from).

Resume: the output folder keeps a fingerprint of the run config, data and initial weights. Same
fingerprint: MaxText resumes from its latest checkpoint (its data iterator with it), and a finished
run trains nothing. Another fingerprint: :class:`FingerprintMismatch`, nothing deleted, unless
``restart``. The per-step metrics MaxText writes are the curve: a row of a resumed step replaces the
row an interrupted run wrote for it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from dasi import resume
from dasi.atomic import write_json
from dasi.model_config import ModelConfig
from dasi.provenance import sha256_file
from pretrain.config import PretrainConfig
from pretrain.pack import verify_manifest
from pretrain_tpu import launch, run_config, shared_init, venv
from pretrain_tpu.config import PretrainTpuConfig

FINGERPRINT = "fingerprint.json"
METRICS_FILE = "metrics.jsonl"
RESTART_HOW = "dasi-tpu pretrain --restart or DASI_RESTART=1 dvc repro tpu-pretrain"


def checkpoint_steps(out: Path) -> list[int]:
    root = Path(out) / run_config.RUN_NAME / "checkpoints"
    return sorted(int(p.name) for p in root.glob("*") if p.name.isdigit()) if root.exists() else []


def latest_items(out: Path) -> Path:
    steps = checkpoint_steps(out)
    if not steps:
        raise FileNotFoundError(f"{out}: no MaxText checkpoint (run tpu-pretrain first)")
    return Path(out) / run_config.RUN_NAME / "checkpoints" / str(steps[-1]) / "items"


def curve(metrics_file: Path) -> list[dict[str, Any]]:
    """One row per step, numbered as the Megatron path numbers them (1 = the first batch); a later
    row of a step (a resumed run's) replaces an earlier one."""
    rows: dict[int, dict[str, Any]] = {}
    for line in Path(metrics_file).read_text().splitlines():
        r = json.loads(line)
        rows[int(r["step"]) + 1] = {
            "step": int(r["step"]) + 1,
            "loss": r["learning/loss"],
            "lr": r["learning/current_learning_rate"],
            "grad_norm": r["learning/raw_grad_norm"],
            "tokens_per_s_per_device": r["perf/per_device_tokens_per_sec"],
        }
    return [rows[k] for k in sorted(rows)]


def versions(cfg: PretrainTpuConfig) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
        "('maxtext', 'jax', 'jaxlib', 'flax', 'orbax-checkpoint', 'grain')}))"
    )
    out = subprocess.run([str(venv.python(cfg)), "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _check_fingerprint(out: Path, fp: dict[str, str], restart: bool, log: Any) -> None:
    saved = Path(out) / FINGERPRINT
    if restart and Path(out).exists():
        log.event("restart", path=str(out), checkpoints=checkpoint_steps(out))
        shutil.rmtree(out)
        return
    if saved.exists():
        old = json.loads(saved.read_text())
        changed = sorted(k for k in fp if old.get(k) != fp[k])
        if changed:
            raise resume.FingerprintMismatch(
                f"{out} holds a MaxText run of other {', '.join(changed)}; "
                f"nothing was deleted ({RESTART_HOW})"
            )
    elif Path(out).exists() and any(Path(out).iterdir()):
        raise resume.FingerprintMismatch(
            f"{out} holds files but no {FINGERPRINT}; nothing was deleted ({RESTART_HOW})"
        )


def _launch(
    cfg: PretrainTpuConfig,
    p: PretrainConfig,
    man: Any,
    manifest: Path,
    init_items: Path,
    out: Path,
    script: str | None,
    log: Any,
) -> None:
    """Train (or resume) with MaxText: the cluster's script, or the venv on this machine."""
    if script is not None:
        (out / "launch.sh").write_text(script)
        log.event("submit", script=str(out / "launch.sh"))
        subprocess.run(["bash", str(out / "launch.sh")], check=True)
        return
    paths = run_config.path_keys(
        str(out.resolve()),
        man,
        str(Path(manifest).parent.resolve()),
        str((out / METRICS_FILE).resolve()),
        str(init_items.resolve()),
    )
    args = ["train", f"--blend-margin={run_config.BLEND_MARGIN_PERCENT}", str(run_config.yml_path(out))]
    venv.run(
        cfg,
        [*args, *run_config.overrides(paths)],
        log,
        transcript=shared_init.transcript(log),
        progress=(out / METRICS_FILE, p.train_steps),
    )


def run(
    m: ModelConfig,
    p: PretrainConfig,
    cfg: PretrainTpuConfig,
    manifest: Path,
    init: Path,
    out: Path,
    log: Any | None,
    dry_run: bool = False,
    restart: bool = False,
) -> dict[str, Any]:
    man = verify_manifest(manifest, "size" if dry_run else p.verify_data)
    keys = run_config.maxtext_keys(m, p, cfg, man)
    init_items = Path(init) / "maxtext" / "0" / "items"
    out = Path(out)
    text = None  # the cluster's launch script
    if cfg.launcher == "cluster" or dry_run:
        c = cfg.cluster
        paths = run_config.path_keys(
            c.output_dir if cfg.launcher == "cluster" else str(out.resolve()),
            man,
            "data/packed",
            str(out / METRICS_FILE),
            str(init_items),
        )
        text = launch.script(
            cfg, str(run_config.yml_path(out)), run_config.BLEND_MARGIN_PERCENT, run_config.overrides(paths)
        )
        if dry_run:
            return {"dry_run": f"# {run_config.yml_path(out)}:\n{run_config.to_yaml(keys)}\n{text}"}
    fp = {
        "config": resume.fingerprint(keys),
        "data": resume.fingerprint(man.model_dump(mode="json")),
        "init": sha256_file(Path(init) / "hf" / "model.safetensors"),
    }
    _check_fingerprint(out, fp, restart, log)
    out.mkdir(parents=True, exist_ok=True)
    run_config.yml_path(out).write_text(run_config.to_yaml(keys))
    write_json(out / FINGERPRINT, fp)
    held = checkpoint_steps(out)
    # MaxText names checkpoints by 0-based step and refuses to "continue" a finished run
    finished = bool(held) and held[-1] >= p.train_steps - 1
    if finished:
        log.event("reuse_finished", path=str(out), step=held[-1] + 1)
    elif held:
        log.event("resume", path=str(out), checkpoint_step=held[-1])
    if not finished:
        _launch(cfg, p, man, manifest, init_items, out, text, log)
    rows = curve(out / METRICS_FILE)
    for r in rows:
        log.log({k: v for k, v in r.items() if k != "step"}, step=r["step"])
    if len(rows) != p.train_steps:
        raise RuntimeError(f"MaxText wrote {len(rows)} of {p.train_steps} steps to {out / METRICS_FILE}")
    summary = {
        "format": "tpu-pretrain/1",
        "engine": "maxtext",
        "versions": versions(cfg),
        "steps": len(rows),
        "first_train_loss": rows[0]["loss"],
        "final_train_loss": rows[-1]["loss"],
        "checkpoints": checkpoint_steps(out),
        "scan_layers": cfg.scan_layers,
        "hardware": cfg.hardware,
    }
    log.summary(summary)
    return {
        "summary": summary,
        "curve": [{k: r[k] for k in ("step", "loss", "lr", "grad_norm")} for r in rows],
    }
