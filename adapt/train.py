"""One adaptation phase, or the baseline arm, trained with the transformers Trainer.

Why the HF Trainer and not Megatron-core: LoRA (peft) and per-parameter freezing are native to the
HF model, the base is an HF folder, and RedWhale trained that way; the same Trainer scales over
GPUs with FSDP (``adapt.fsdp``), its ranks started by :mod:`dasi.launch` (``adapt.parallel``: one
rank trains in this process, more run :mod:`adapt.worker` under torchrun or Slurm, as ``sft``
does). Megatron-core has no LoRA.

A phase resumes: the Trainer checkpoints into ``work`` every ``train.save_steps`` (DVC keeps the
folder, ``persist: true``), and a run finding a checkpoint made from the same inputs continues from
it, reading the same blocks (the stream is deterministic). A phase's stream starts where the
previous phase's stopped (its folder's stream cursor, :mod:`adapt.stream`). Checkpoints made from
other inputs stop the run and are not deleted. When the phase is done its model is saved to ``out`` and the
checkpoints are removed. Every rank saves through ``Trainer.save_model`` (under FSDP it gathers the
full weights); the main process then writes the phase's folder, merging LoRA into the phase's base."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Trainer,
    TrainingArguments,
    set_seed,
)

from adapt.config import PHASES, AdaptConfig
from adapt.phases import apply_phase, trainable_names
from adapt.stream import CURSOR_FILE, BlockDataset, range_summary, stream_fingerprint
from dasi import launch
from dasi.atomic import atomic_path, write_json
from dasi.fsdp import fsdp_options
from dasi.hf_trainer import MirrorToRunLog, log_trainer_setup
from dasi.provenance import sha256_path, sha256_text
from dasi.resume import check_fingerprint, record_fingerprint, restart
from data_gen.curated import MANIFEST_FILE

BASELINE = "baseline"
SIDECAR = "dasi_adapt.json"  # in a phase's folder: which phase made it, from what


def block_range(cfg: AdaptConfig, arm: str) -> tuple[int, int, int]:
    """(first block, blocks, steps) of a phase, or of the baseline: every phase's steps, from 0."""
    per_step = cfg.train.batch_size
    if arm == BASELINE:
        return 0, cfg.total_steps * per_step, cfg.total_steps
    before = sum(cfg.phases[p].steps for p in PHASES[: PHASES.index(arm)])
    return before * per_step, cfg.phases[arm].steps * per_step, cfg.phases[arm].steps


def _learning_rate(cfg: AdaptConfig, arm: str) -> float:
    return cfg.baseline.learning_rate if arm == BASELINE else cfg.phases[arm].learning_rate


def _train_embeddings(cfg: AdaptConfig, arm: str) -> bool:
    return arm != BASELINE and cfg.phases[arm].train_embeddings


def _args(cfg: AdaptConfig, arm: str, work: Path, steps: int) -> TrainingArguments:
    t = cfg.train
    fsdp, fsdp_config, _ = fsdp_options(cfg.fsdp, cfg.fsdp_wrap_layer, False)
    return TrainingArguments(
        output_dir=str(work), report_to="none", save_strategy="steps", save_steps=t.save_steps,
        save_total_limit=1, eval_strategy="no", logging_strategy="steps", logging_steps=1,
        seed=t.seed, data_seed=t.seed, max_steps=steps,
        per_device_train_batch_size=cfg.per_device_batch, gradient_accumulation_steps=t.grad_accum,
        learning_rate=_learning_rate(cfg, arm), lr_scheduler_type="cosine", warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm, bf16=t.dtype == "bfloat16",
        use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
        save_only_model=False, include_num_input_tokens_seen=True, fsdp=fsdp, fsdp_config=fsdp_config,
        ddp_find_unused_parameters=False,  # a phase trains only what its forward uses
    )


def _latest_checkpoint(work: Path) -> Path | None:
    found = sorted(work.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return found[-1] if found else None


def _parts(cfg: AdaptConfig, arm: str, base_dir: Path, curated: Path) -> dict[str, str]:
    """What shapes the phase's checkpoints: the model it starts from, the data, and its settings."""
    settings = {"train": cfg.train.model_dump(mode="json"), "lr": _learning_rate(cfg, arm),
                "range": block_range(cfg, arm),
                "embeddings": _train_embeddings(cfg, arm),
                "lora": cfg.lora.model_dump(mode="json") if arm == "lora" else None}
    return {"base": sha256_path(base_dir), "data": sha256_path(curated / MANIFEST_FILE),
            "settings": sha256_text(json.dumps(settings, sort_keys=True))}


def prepare(cfg: AdaptConfig, arm: str, base_dir: Path, curated: Path, work: Path, log: Any) -> Path | None:
    """Check the phase's checkpoints against its inputs (or clear them on ``DASI_RESTART=1``) and
    record its fingerprint; return the checkpoint to resume from. Runs once, before any rank."""
    parts = _parts(cfg, arm, base_dir, curated)
    if os.environ.get("DASI_RESTART", "0") == "1":  # `DASI_RESTART=1 dvc repro adapt/dvc.yaml` starts over
        restart(work, log, reason="DASI_RESTART=1")
    latest = _latest_checkpoint(work)
    check_fingerprint(work, parts, f"checkpoint {latest.name}" if latest else None,
                      f"dvc repro with DASI_RESTART=1, or delete {work}")
    record_fingerprint(work, parts)
    return latest


def train_arm(cfg: AdaptConfig, arm: str, base_dir: Path, curated: Path, out: Path, work: Path,
              log: Any) -> dict[str, Any]:
    """Train phase ``arm`` (or the baseline) in this process: see :func:`train_rank`."""
    return train_rank(cfg, arm, base_dir, curated, out, work, prepare(cfg, arm, base_dir, curated, work, log),
                      log)


def train_rank(cfg: AdaptConfig, arm: str, base_dir: Path, curated: Path, out: Path, work: Path,
               latest: Path | None, log: Any) -> dict[str, Any]:
    """One rank of phase ``arm`` (or the baseline) from the HF folder ``base_dir``, resumed from
    ``latest``; the main process saves the model (LoRA merged) and its tokenizer to ``out``.
    Returns the phase's metrics."""
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(str(base_dir))
    dtype = torch.bfloat16 if cfg.train.dtype == "bfloat16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=dtype)
    if len(tok) > model.config.vocab_size:
        raise ValueError(f"adapt: tokenizer of {base_dir} has {len(tok)} tokens, the model "
                         f"{model.config.vocab_size}")
    set_seed(cfg.train.seed)  # peft draws the LoRA matrices before the Trainer seeds anything
    if arm != BASELINE:
        model = apply_phase(model, arm, cfg.lora, _train_embeddings(cfg, arm))
    trainable = trainable_names(model)
    n_train = sum(p.numel() for n, p in model.named_parameters() if n in trainable)
    n_all = sum(p.numel() for p in model.parameters())
    log.event("phase_setup", phase=arm, trainable_params=n_train, total_params=n_all,
              trainable_tensors=len(trainable), vocab=len(tok),
              train_embeddings=_train_embeddings(cfg, arm))

    start, count, steps = block_range(cfg, arm)
    stream_args = (curated, tok, cfg.train.seq_length, cfg.train.lang_weights)
    cursor = None if arm == BASELINE else _usable_cursor(base_dir, start, stream_args, log)
    data = BlockDataset(*stream_args, start, count, cursor)
    trainer = Trainer(model=model, args=_args(cfg, arm, work, steps), train_dataset=data,
                      callbacks=[MirrorToRunLog(log)])
    log_trainer_setup(trainer, cfg.fsdp, log)
    if latest is not None:
        log.event("resume", step=int(latest.name.split("-")[1]), checkpoint=str(latest))
    result = trainer.train(resume_from_checkpoint=str(latest) if latest else None)

    metrics = {"phase": arm, "steps": steps, "train_loss": result.training_loss,
               "trainable_params": n_train, "total_params": n_all}
    record = _range_record(trainer, data, stream_args, start, count, cursor, log)
    files = {SIDECAR: {"phase": arm, "base": str(base_dir), "steps": steps, "start_block": start,
                       "blocks": count}}
    if record is not None:
        files[CURSOR_FILE] = record.pop("cursor")
    _save(trainer, arm, base_dir, dtype, tok, out, work / "final", files)
    if not trainer.is_world_process_zero():
        return metrics
    for ckpt in work.glob("checkpoint-*"):
        shutil.rmtree(ckpt)  # the phase is done: its model is in `out`
    metrics |= record
    log.summary({k: v for k, v in metrics.items() if not isinstance(v, dict)}
                | {"wall_s": round(time.time() - t0, 2)})
    return metrics


def _usable_cursor(base_dir: Path, start: int, stream_args: tuple, log: Any) -> dict[str, Any] | None:
    """The previous phase's stream cursor when it stands at this phase's first block and was made
    from the same stream; otherwise None (the stream is read from block 0), said in an event."""
    path = base_dir / CURSOR_FILE
    if not path.is_file():
        log.event("stream_start", block=start, source="block 0", reason=f"no {CURSOR_FILE} in {base_dir}")
        return None
    cursor = json.loads(path.read_text())
    if cursor.get("fingerprint") != stream_fingerprint(*stream_args):
        reason = "it was made from other data, tokenizer or settings"
    elif cursor.get("block") != start:
        reason = f"it stands at block {cursor.get('block')}, not {start}"
    else:
        log.event("stream_start", block=start, source=str(path))
        return cursor
    log.event("stream_start", block=start, source="block 0", reason=f"{path} unused: {reason}")
    return None


def _range_record(trainer: Trainer, data: BlockDataset, stream_args: tuple, start: int, count: int,
                  cursor: dict[str, Any] | None, log: Any) -> dict[str, Any] | None:
    """The main process's record of the blocks it read for the Trainer (None on other ranks); read
    afresh, and said so, if its data loader did not reach the range's last block."""
    if not trainer.is_world_process_zero():
        return None
    if data.record is not None:
        return dict(data.record)
    log.event("stream_record_recomputed", reason="the data loader did not read the range's last block")
    return range_summary(*stream_args, start, count, cursor)


def _save(trainer: Trainer, arm: str, base_dir: Path, dtype: torch.dtype, tok: Any, out: Path,
          scratch: Path, files: dict[str, Any]) -> None:
    """Every rank calls ``save_model`` (the main process writes); the main process then writes
    ``out``: the saved weights, or for LoRA the adapters merged into ``base_dir``'s weights, the
    tokenizer, and ``files`` (name: JSON)."""
    if trainer.is_world_process_zero():
        shutil.rmtree(scratch, ignore_errors=True)  # a killed save's files must not join this one's
    trainer.save_model(str(scratch))
    if not trainer.is_world_process_zero():
        return
    try:
        with atomic_path(out) as tmp:
            if arm == "lora":
                from peft import PeftModel

                base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=dtype)
                PeftModel.from_pretrained(base, str(scratch)).merge_and_unload().save_pretrained(str(tmp))
            else:
                shutil.move(str(scratch), str(tmp))
                (tmp / "training_args.bin").unlink()  # a pickle naming the scratch folder
            tok.save_pretrained(str(tmp))
            for name, content in files.items():
                (tmp / name).write_text(json.dumps(content, indent=1) + "\n")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    write_json(path, {"format": "adapt-phase/1", **metrics})


LAUNCH = "launch"  # the run log's folder for the job file and the sbatch script
WORKER = "adapt.worker"
RERUN = "running the stage again resumes from the phase's last checkpoint"


def base_folder(cfg: AdaptConfig, arm: str, base_dir: Path | None) -> Path:
    """The folder an arm starts from: the previous phase's, or for the baseline adapt.base."""
    if arm not in (*PHASES, BASELINE):
        raise ValueError(f"adapt: unknown phase {arm!r}: allowed {', '.join((*PHASES, BASELINE))}")
    if base_dir is not None:
        return base_dir
    if arm != BASELINE:
        raise ValueError(f"adapt: phase {arm} needs --base (the previous phase's folder)")
    src, revision = cfg.base.source()
    if revision is not None:
        raise ValueError("adapt: a hub base trains the baseline from a local copy: pass --base")
    return Path(src)


def dry_run(cfg: AdaptConfig, arm: str, logs_dir: Path, launcher: str = "local") -> str:
    """What ``run`` would launch. The job file lives in the run's log folder, named when the run
    starts: shown here with ``<run-id>``."""
    job = Path(logs_dir) / f"adapt-{arm.replace('_', '-')}" / "<run-id>" / LAUNCH / "job.json"
    return launch.dry_run(cfg.parallel, cfg.slurm, WORKER, job, launcher, "adapt", rerun=RERUN)


def run(cfg: AdaptConfig, arm: str, base_dir: Path | None, curated: Path, out: Path, work: Path,
        metrics_path: Path, log: Any, launcher: str = "local") -> dict[str, Any]:
    """A phase from the previous phase's folder, or the baseline from the configured base: in this
    process (one rank), or over ``adapt.parallel`` ranks under torchrun or Slurm."""
    base_dir = base_folder(cfg, arm, base_dir)
    kind = launch.choose(cfg.parallel, launcher)
    if kind == "local":
        metrics = train_arm(cfg, arm, base_dir, curated, out, work, log)
        write_metrics(metrics_path, metrics)
        return metrics
    latest = prepare(cfg, arm, base_dir, curated, work, log)
    folder = Path(log.dir) / LAUNCH
    records = folder / "records.jsonl"
    job = write_job(folder / "job.json", cfg, arm, base_dir, curated, out, work, latest, metrics_path,
                    records)
    launch.run_job(kind, cfg.parallel, cfg.slurm, WORKER, job, folder / "adapt.sbatch", records,
                   Path(metrics_path), log, f"adapt {arm}", RERUN, f"{RERUN} in {work}")
    return json.loads(Path(metrics_path).read_text())


def write_job(path: Path, cfg: AdaptConfig, arm: str, base_dir: Path, curated: Path, out: Path, work: Path,
              latest: Path | None, metrics: Path, records: Path) -> Path:
    """The job file :mod:`adapt.worker` reads; paths absolute, as ranks on other nodes may start
    elsewhere."""
    def where(p: Path | None) -> str | None:
        return None if p is None else str(Path(p).resolve())

    job = {"adapt": cfg.model_dump(mode="json"), "arm": arm, "base": where(base_dir),
           "curated": where(curated), "out": where(out), "work": where(work), "latest": where(latest),
           "metrics": where(metrics), "records": where(records)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(job, indent=2) + "\n")
    return Path(path)
