"""The ``sft:`` profile section: what is trained, and over how many processes and nodes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, ValidationInfo, field_validator

from dasi.strict import StrictModel

# TrainingArguments.fsdp words this project accepts (transformers' FSDPOption, less hybrid_shard /
# no_shard, which FSDP2, transformers' default engine, does not have).
SHARDINGS = ("full_shard", "shard_grad_op")
FSDP_WORDS = (*SHARDINGS, "auto_wrap", "offload")


class SFTParallel(StrictModel):
    """Data-parallel ranks, one per GPU; FSDP (``sft.fsdp``) shards the model over all of them."""

    nodes: PositiveInt = 1
    gpus_per_node: PositiveInt = Field(1, description="ranks per node (processes on a CPU host)")

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node


class SFTSlurm(StrictModel):
    partition: str = "gpu"
    account: str | None = None
    time: str = "1-00:00:00"
    job_name: str = "dasi-sft"
    cpus_per_task: PositiveInt = 16
    extra_sbatch: list[str] = Field(default_factory=list, description="more '#SBATCH' options")


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
    parallel: SFTParallel = Field(default_factory=SFTParallel)
    slurm: SFTSlurm = Field(default_factory=SFTSlurm)

    @field_validator("fsdp")
    @classmethod
    def _fsdp_words(cls, v: str) -> str:
        words = v.split()
        unknown = [w for w in words if w not in FSDP_WORDS]
        if unknown:
            raise ValueError(f"unknown FSDP option {unknown[0]!r}: allowed {', '.join(FSDP_WORDS)}")
        if words and sum(w in SHARDINGS for w in words) != 1:
            raise ValueError(f"name exactly one sharding: {' or '.join(SHARDINGS)}")
        return v

    @field_validator("fsdp_wrap_layer")
    @classmethod
    def _wrap_needs_fsdp(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v and not info.data.get("fsdp"):
            raise ValueError("a wrap layer needs sft.fsdp (e.g. 'full_shard auto_wrap')")
        return v
