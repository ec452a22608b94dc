"""One process's part of the ``sft`` stage: instruction-tune a Hugging Face causal LM folder on
bilingual chats.

Engine: TRL ``SFTTrainer`` with ``assistant_only_loss`` (the chat template marks assistant
content with ``{% generation %}``, so labels are -100 on every other token). :func:`train` is the
whole stage in one process (the tiny profile) and each rank's work under torchrun / Slurm
(:mod:`instruct.stage` launches, :mod:`instruct.worker` runs a rank): the Trainer reads the
distributed environment itself and shards with FSDP on GPUs. Held-out chat loss (token-weighted
mean NLL over assistant tokens, overall and per language) is measured before and after training
with one function, on the model where the Trainer placed it, so the two numbers are comparable.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, get_args

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, TrainerCallback

from dasi.atomic import atomic_path, write_json
from dasi.fsdp import fsdp_options as fsdp_args
from dasi.hf_save import save_tokenizer
from dasi.hf_trainer import MirrorToRunLog, log_trainer_setup
from instruct.chats import SEED_FILE, Chat, read_chats, split_heldout
from instruct.config import SFTConfig

__all__ = ["SEED_FILE", "SFTConfig", "build_trainer", "heldout_loss", "load_chats", "train"]

END_OF_TURN = "<|end|>"
LANGS = get_args(Chat.model_fields["lang"].annotation)


def load_chats(cfg: SFTConfig, extra: list[Path]) -> list[Chat]:
    chats = read_chats(SEED_FILE) if cfg.use_seed_chats else []
    for path in extra:
        chats += read_chats(path)
    ids = [c.id for c in chats]
    if len(set(ids)) != len(ids):
        raise ValueError("sft: chat ids repeat across the seed and extra chat files")
    if not chats:
        raise ValueError("sft: no chats (use_seed_chats is off and no --extra-chats given)")
    return chats


def _rows(chats: list[Chat]) -> list[dict[str, Any]]:
    return [{"id": c.id, "lang": c.lang, "messages": c.as_messages()} for c in chats]


def model_device(model: torch.nn.Module) -> torch.device:
    """Where ``model`` computes. We load on CPU; the Trainer then moves the model to the GPU (or
    FSDP shards it there), so inputs built on the CPU must follow it."""
    return next(model.parameters()).device


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, examples: list[dict[str, Any]], collator: Any,
                 batch_size: int) -> dict[str, float]:
    """Token-weighted mean NLL of the labelled (assistant) tokens: overall and per ``lang``.

    With several ranks each scores every world-th example and the sums are all-reduced, so every
    rank returns the same figures. Every rank runs the same number of forwards (a rank short of
    examples scores one again and drops it): under FSDP a forward is a collective."""
    rank, world = _rank_world()
    device = model_device(model)
    was_training = model.training
    model.eval()
    mine = examples[rank::world]
    batches = math.ceil(math.ceil(len(examples) / world) / batch_size)
    nll: dict[str, float] = {}
    count: dict[str, int] = {}
    for b in range(batches):
        chunk = mine[b * batch_size:(b + 1) * batch_size]
        rows = chunk or examples[:1]
        batch = collator([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in rows])
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       use_cache=False).logits
        labels = batch["labels"][:, 1:]
        per_tok = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
        for e, row, lab in zip(chunk, per_tok, labels, strict=False):  # none for a padding forward
            for key in ("all", e["lang"]):
                nll[key] = nll.get(key, 0.0) + row.sum().item()
                count[key] = count.get(key, 0) + int((lab != -100).sum())
    model.train(was_training)
    if world > 1:
        keys = ("all", *LANGS)
        sums = torch.tensor([[nll.get(k, 0.0), count.get(k, 0)] for k in keys], dtype=torch.float64,
                            device=device)
        torch.distributed.all_reduce(sums)
        nll = {k: s[0].item() for k, s in zip(keys, sums, strict=True)}
        count = {k: int(s[1].item()) for k, s in zip(keys, sums, strict=True)}
    return {k: nll[k] / count[k] for k in sorted(nll) if count[k]}


class _HeldoutAtStart(TrainerCallback):
    """The held-out loss before the first step, on the model as the Trainer prepared it (on its
    device, FSDP-wrapped when sharded): the same placement as the loss after training."""

    def __init__(self, examples: list[dict[str, Any]], collator: Any, batch_size: int, log: Any) -> None:
        self.examples, self.collator, self.batch_size, self.log = examples, collator, batch_size, log
        self.losses: dict[str, float] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs) -> None:  # noqa: ANN001
        self.losses = heldout_loss(model, self.examples, self.collator, self.batch_size)
        self.log.log({f"heldout_loss/{k}": v for k, v in self.losses.items()}, step=0)


def fsdp_options(cfg: SFTConfig) -> tuple[bool, dict[str, Any] | None, bool]:
    """``sft.fsdp`` as TrainingArguments' (fsdp, fsdp_config, gradient_checkpointing)."""
    return fsdp_args(cfg.fsdp, cfg.fsdp_wrap_layer, cfg.activation_checkpointing)


def _trainer_args(cfg: SFTConfig, workdir: Path) -> Any:
    from trl import SFTConfig as TRLConfig

    fsdp, fsdp_config, grad_ckpt = fsdp_options(cfg)
    return TRLConfig(
        output_dir=str(workdir), report_to="none", save_strategy="no", eval_strategy="no",
        logging_strategy="steps", logging_steps=cfg.logging_steps, disable_tqdm=True,
        seed=cfg.seed, data_seed=cfg.seed, full_determinism=cfg.full_determinism,
        assistant_only_loss=True, max_length=cfg.max_length, packing=False,
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup, weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        bf16=cfg.dtype == "bfloat16",
        fsdp=fsdp, fsdp_config=fsdp_config, use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        gradient_checkpointing=grad_ckpt,
    )


def build_trainer(cfg: SFTConfig, model: Any, tok: Any, train: list[Chat], heldout: list[Chat],
                  workdir: Path, callbacks: list[TrainerCallback] | None = None) -> Any:
    """A TRL SFTTrainer whose datasets are tokenized with assistant-only labels."""
    from datasets import Dataset
    from trl import SFTTrainer

    return SFTTrainer(
        model=model, args=_trainer_args(cfg, workdir), processing_class=tok,
        train_dataset=Dataset.from_list(_rows(train)),
        eval_dataset=Dataset.from_list(_rows(heldout)) if heldout else None,
        callbacks=callbacks or [],
    )


def _generation_config(tok: Any) -> GenerationConfig:
    """Stop at the end of an assistant turn as well as at end of text."""
    eos = [tok.eos_token_id, tok.convert_tokens_to_ids(END_OF_TURN)]
    return GenerationConfig(bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
                            eos_token_id=[i for i in dict.fromkeys(eos) if i is not None])


def _save(trainer: Any, tok: Any, out: Path, sidecar: dict[str, Any], scratch: Path) -> None:
    """The tuned model folder, written by the main process. Every rank calls ``save_model``: under
    FSDP it gathers the full weights from all of them; the other ranks write nothing (their path
    is their own scratch)."""
    if not trainer.is_world_process_zero():
        trainer.save_model(str(scratch / "not-written"))
        return
    with atomic_path(out) as tmp:
        trainer.save_model(str(tmp))
        save_tokenizer(tok, tmp)
        (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle naming the scratch dir
        (tmp / "dasi_sft.json").write_text(json.dumps(sidecar, indent=1) + "\n")


def train(cfg: SFTConfig, base: Path, tokenizer_dir: Path | None, extra_chats: list[Path],
          out: Path, metrics_path: Path, log: Any) -> dict[str, Any]:
    """Train; the main process saves the tuned model folder to ``out`` atomically and writes
    ``metrics_path``. Every rank returns the metrics (they are all-reduced)."""
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir or base))
    if not tok.chat_template or "generation" not in tok.chat_template:
        raise ValueError(f"sft: tokenizer {tokenizer_dir or base} has no chat template with "
                         "{% generation %} markers (needed for assistant-only loss)")
    dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype)
    if len(tok) > model.config.vocab_size:
        raise ValueError(f"sft: tokenizer has {len(tok)} tokens, model vocab is {model.config.vocab_size}")

    if cfg.max_length > getattr(model.config, "max_position_embeddings", cfg.max_length):
        log.event("warning", message=f"sft.max_length {cfg.max_length} exceeds the model's "
                  f"max_position_embeddings {model.config.max_position_embeddings}")
    train_chats, heldout = split_heldout(load_chats(cfg, extra_chats), cfg.heldout_fraction)
    log.event("chats", train=len(train_chats), heldout=len(heldout),
              train_ko=sum(c.lang == "ko" for c in train_chats),
              train_en=sum(c.lang == "en" for c in train_chats))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{Path(out).name}.trainer-", dir=Path(out).parent))
    try:
        trainer = build_trainer(cfg, model, tok, train_chats, heldout, workdir, [MirrorToRunLog(log)])
        held = list(trainer.eval_dataset) if heldout else []
        start = _HeldoutAtStart(held, trainer.data_collator, cfg.eval_batch_size, log)
        if held:
            trainer.add_callback(start)
        log_trainer_setup(trainer, cfg.fsdp, log)
        result = trainer.train()
        before = start.losses
        after = heldout_loss(trainer.model, held, trainer.data_collator, cfg.eval_batch_size) if held else {}
        log.log({f"heldout_loss/{k}": v for k, v in after.items()}, step=trainer.state.global_step)
        trainer.model.generation_config = _generation_config(tok)
        trainer.model.config.use_cache = True  # the trainer turns it off for training
        _save(trainer, tok, Path(out), {"base": str(base), "seed": cfg.seed,
                                        "train_chats": [c.id for c in train_chats],
                                        "heldout_chats": [c.id for c in heldout]}, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    metrics = {
        "heldout_loss_before": before.get("all"),
        "heldout_loss_after": after.get("all"),
        **{f"heldout_loss_before_{k}": v for k, v in before.items() if k != "all"},
        **{f"heldout_loss_after_{k}": v for k, v in after.items() if k != "all"},
        "train_loss": result.training_loss, "steps": trainer.state.global_step,
        "train_chats": len(train_chats), "heldout_chats": len(heldout),
        "train_tokens": int(sum(sum(1 for x in e["labels"] if x != -100) for e in trainer.train_dataset)),
    }
    # The metrics file is a DVC output hashed into dvc.lock and the release, so it holds only
    # what the same inputs reproduce; the wall time goes to the run log.
    if trainer.is_world_process_zero():
        write_json(Path(metrics_path), metrics)
    log.summary({**metrics, "wall_s": round(time.time() - t0, 2)})
    return metrics
