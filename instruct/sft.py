"""The ``sft`` stage: instruction-tune a Hugging Face causal LM folder on bilingual chats.

Engine: TRL ``SFTTrainer`` with ``assistant_only_loss`` (the chat template marks assistant
content with ``{% generation %}``, so labels are -100 on every other token). It runs on CPU here
and, unchanged, under torchrun/FSDP on GPU nodes. Held-out chat loss (token-weighted mean NLL over
assistant tokens, overall and per language) is measured before and after training with one
function, so the two numbers are comparable.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, TrainerCallback

from dasi.atomic import atomic_path, write_json
from dasi.hf_save import save_tokenizer
from dasi.runlog import RunLog
from dasi.strict import StrictModel
from instruct.chats import SEED_FILE, Chat, read_chats, split_heldout

END_OF_TURN = "<|end|>"


class SFTConfig(StrictModel):
    seed: int = 0
    full_determinism: bool = Field(False, description="torch deterministic algorithms (30x slower on "
                                   "CPU; seeded runs are already bit-identical there)")
    use_seed_chats: bool = Field(True, description="include instruct/data/seed_chats.jsonl")
    heldout_fraction: float = Field(0.2, ge=0, lt=1)
    max_length: int = Field(256, gt=8, description="tokens per chat; longer chats are truncated")
    epochs: float = Field(3.0, gt=0)
    max_steps: int = Field(-1, description="> 0 overrides epochs")
    batch_size: int = Field(8, gt=0, description="per device")
    grad_accum: int = Field(1, gt=0)
    learning_rate: float = Field(1e-3, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup: float = Field(0.0, ge=0, description="steps (>= 1) or a fraction of all steps (< 1)")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    dtype: Literal["float32", "bfloat16"] = "float32"
    activation_checkpointing: bool = False
    fsdp: str = Field("", description="TrainingArguments.fsdp, e.g. 'full_shard auto_wrap'")
    fsdp_wrap_layer: str | None = Field(None, description="e.g. LlamaDecoderLayer")
    eval_batch_size: int = Field(8, gt=0)
    logging_steps: int = Field(1, gt=0)


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


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, examples: list[dict[str, Any]], collator: Any,
                 batch_size: int) -> dict[str, float]:
    """Token-weighted mean NLL of the labelled (assistant) tokens: overall and per ``lang``."""
    model.eval()
    nll: dict[str, float] = {}
    count: dict[str, int] = {}
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        batch = collator([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in chunk])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       use_cache=False).logits
        labels = batch["labels"][:, 1:]
        per_tok = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
        for e, row, lab in zip(chunk, per_tok, labels, strict=True):
            for key in ("all", e["lang"]):
                nll[key] = nll.get(key, 0.0) + row.sum().item()
                count[key] = count.get(key, 0) + int((lab != -100).sum())
    return {k: nll[k] / count[k] for k in sorted(nll) if count[k]}


class _MirrorToRunLog(TrainerCallback):
    def __init__(self, log: RunLog) -> None:
        self.log = log

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:  # noqa: ANN001
        if logs and state.is_world_process_zero:
            self.log.log({f"train/{k}": v for k, v in logs.items()}, step=state.global_step)


def _trainer_args(cfg: SFTConfig, workdir: Path) -> Any:
    from trl import SFTConfig as TRLConfig

    fsdp_config = {"transformer_layer_cls_to_wrap": [cfg.fsdp_wrap_layer]} if cfg.fsdp_wrap_layer else None
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
        fsdp=cfg.fsdp, fsdp_config=fsdp_config, use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        gradient_checkpointing=cfg.activation_checkpointing,
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


def run(cfg: SFTConfig, base: Path, tokenizer_dir: Path | None, extra_chats: list[Path],
        out: Path, metrics_path: Path, log: RunLog) -> dict[str, Any]:
    """Train, save the tuned model folder to ``out`` atomically, write ``metrics_path``."""
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
    train, heldout = split_heldout(load_chats(cfg, extra_chats), cfg.heldout_fraction)
    log.event("chats", train=len(train), heldout=len(heldout),
              train_ko=sum(c.lang == "ko" for c in train), train_en=sum(c.lang == "en" for c in train))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{Path(out).name}.trainer-", dir=Path(out).parent))
    try:
        trainer = build_trainer(cfg, model, tok, train, heldout, workdir, [_MirrorToRunLog(log)])
        held = list(trainer.eval_dataset) if heldout else []
        before = heldout_loss(trainer.model, held, trainer.data_collator, cfg.eval_batch_size) if held else {}
        log.log({f"heldout_loss/{k}": v for k, v in before.items()}, step=0)
        result = trainer.train()
        after = heldout_loss(trainer.model, held, trainer.data_collator, cfg.eval_batch_size) if held else {}
        log.log({f"heldout_loss/{k}": v for k, v in after.items()}, step=trainer.state.global_step)
        trainer.model.generation_config = _generation_config(tok)
        trainer.model.config.use_cache = True  # the trainer turns it off for training
        with atomic_path(Path(out)) as tmp:
            trainer.save_model(str(tmp))
            save_tokenizer(tok, tmp)
            (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle naming the scratch dir
            (tmp / "dasi_sft.json").write_text(json.dumps({
                "base": str(base), "seed": cfg.seed, "train_chats": [c.id for c in train],
                "heldout_chats": [c.id for c in heldout]}, indent=1) + "\n")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    metrics = {
        "heldout_loss_before": before.get("all"),
        "heldout_loss_after": after.get("all"),
        **{f"heldout_loss_before_{k}": v for k, v in before.items() if k != "all"},
        **{f"heldout_loss_after_{k}": v for k, v in after.items() if k != "all"},
        "train_loss": result.training_loss, "steps": trainer.state.global_step,
        "train_chats": len(train), "heldout_chats": len(heldout),
        "train_tokens": int(sum(sum(1 for x in e["labels"] if x != -100) for e in trainer.train_dataset)),
    }
    # The metrics file is a DVC output hashed into dvc.lock and the release, so it holds only
    # what the same inputs reproduce; the wall time goes to the run log.
    write_json(Path(metrics_path), metrics)
    log.summary({**metrics, "wall_s": round(time.time() - t0, 2)})
    return metrics
