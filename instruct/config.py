"""The ``sft:`` profile section: what is trained, and over how many processes and nodes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from dasi.fsdp import check_fsdp_words, check_wrap_layer
from dasi.parallel import Parallel, SlurmSpec
from dasi.strict import StrictModel


class SFTSlurm(SlurmSpec):
    job_name: str = "dasi-sft"


class SFTConfig(StrictModel):
    seed: int = 0
    full_determinism: bool = Field(False, description="torch deterministic algorithms (30x slower on "
                                   "CPU; seeded runs are already bit-identical there)")
    use_seed_chats: bool = Field(True, description="include instruct/data/seed_chats.jsonl")
    heldout_fraction: float = Field(0.2, ge=0, lt=1)
    max_length: int = Field(256, gt=8, description="tokens per chat; longer chats are truncated")
    epochs: float = Field(3.0, gt=0)
    max_steps: int = Field(-1, description="> 0 overrides epochs")
    batch_size: int = Field(8, gt=0, description="per device (rank): a step trains batch_size x "
                            "grad_accum x parallel.world_size chats")
    grad_accum: int = Field(1, gt=0)
    learning_rate: float = Field(1e-3, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup: float = Field(0.0, ge=0, description="steps (>= 1) or a fraction of all steps (< 1)")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    dtype: Literal["float32", "bfloat16"] = "float32"
    activation_checkpointing: bool = False
    fsdp: str = Field("", description="TrainingArguments.fsdp words, e.g. 'full_shard auto_wrap'; "
                      "'' trains data parallel (DDP) when there are several ranks")
    fsdp_wrap_layer: str | None = Field(None, description="e.g. LlamaDecoderLayer")
    eval_batch_size: int = Field(8, gt=0)
    logging_steps: int = Field(1, gt=0)
    parallel: Parallel = Field(default_factory=Parallel)
    slurm: SFTSlurm = Field(default_factory=SFTSlurm)

    @field_validator("fsdp")
    @classmethod
    def _fsdp_words(cls, v: str) -> str:
        return check_fsdp_words(v)

    @field_validator("fsdp_wrap_layer")
    @classmethod
    def _wrap_needs_fsdp(cls, v: str | None, info: ValidationInfo) -> str | None:
        return check_wrap_layer(v, info.data.get("fsdp"), "sft")
