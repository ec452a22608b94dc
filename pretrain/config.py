"""The ``pretrain:`` profile section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from dasi.integrity import VerifyMode
from dasi.strict import StrictModel


class ParallelConfig(StrictModel):
    tensor_parallel: PositiveInt = 1
    data_parallel: PositiveInt = 1
    nodes: PositiveInt = 1
    gpus_per_node: PositiveInt | None = Field(None, description="ranks per node; default TP*DP/nodes")

    @property
    def world_size(self) -> int:
        return self.tensor_parallel * self.data_parallel

    @property
    def procs_per_node(self) -> int:
        return self.gpus_per_node or self.world_size // self.nodes

    @model_validator(mode="after")
    def _fits(self) -> ParallelConfig:
        if self.procs_per_node * self.nodes != self.world_size:
            raise ValueError(f"nodes {self.nodes} x gpus_per_node {self.procs_per_node} != "
                             f"tensor_parallel x data_parallel = {self.world_size}")
        return self


class SlurmConfig(StrictModel):
    partition: str = "gpu"
    account: str | None = None
    time: str = "7-00:00:00"
    job_name: str = "dasi-pretrain"
    cpus_per_task: PositiveInt = 16
    extra_sbatch: list[str] = Field(default_factory=list, description="more '#SBATCH' options")


class PretrainConfig(StrictModel):
    train_steps: PositiveInt
    micro_batch_size: PositiveInt
    global_batch_size: PositiveInt | None = Field(None, description="default micro x data_parallel")
    lr: PositiveFloat = 3e-4
    min_lr: NonNegativeFloat = 3e-5
    warmup_steps: NonNegativeInt = 10
    lr_schedule: Literal["cosine", "wsd"] = "cosine"
    wsd_decay_steps: NonNegativeInt = Field(0, description="WSD: length of the final decay")
    weight_decay: NonNegativeFloat = 0.1
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.95, ge=0, lt=1)
    adam_eps: PositiveFloat = 1e-8
    clip_grad: PositiveFloat = 1.0
    bf16: bool = False
    seed: int = 1234
    eval_interval: PositiveInt = 20
    eval_iters: PositiveInt = 2
    save_interval: PositiveInt = 50
    log_interval: PositiveInt = 1
    verify_data: VerifyMode = Field("sha256", description="check packed files by sha256 or only size")
    verify_checkpoints: VerifyMode = Field("sha256", description="checksums.json of each checkpoint: "
                                           "sha256 + size, or size only")
    keep_last: PositiveInt | None = Field(None, description="retention: keep the last N checkpoints "
                                          "(and every keep_every-th); None keeps all")
    keep_every: NonNegativeInt | None = Field(None, description="retention: also keep checkpoints whose "
                                              "step is a multiple of this; None/0: none specially")
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)

    @property
    def global_batch(self) -> int:
        return self.global_batch_size or self.micro_batch_size * self.parallel.data_parallel

    @property
    def accumulation_steps(self) -> int:
        return self.global_batch // (self.micro_batch_size * self.parallel.data_parallel)

    @model_validator(mode="after")
    def _check(self) -> PretrainConfig:
        if self.global_batch % (self.micro_batch_size * self.parallel.data_parallel):
            raise ValueError(f"global_batch_size {self.global_batch} must be a multiple of "
                             "micro_batch_size x data_parallel")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr {self.min_lr} must be <= lr {self.lr}")
        if self.warmup_steps >= self.train_steps:
            raise ValueError(f"warmup_steps {self.warmup_steps} must be < train_steps")
        if self.lr_schedule == "wsd" and not 0 < self.wsd_decay_steps <= self.train_steps:
            raise ValueError("lr_schedule wsd needs 0 < wsd_decay_steps <= train_steps")
        return self
