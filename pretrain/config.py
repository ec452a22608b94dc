"""The ``pretrain:`` profile section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from dasi.integrity import VerifyMode
from dasi.strict import StrictModel


class ParallelConfig(StrictModel):
    """megatron-core's layout: world = TP x PP x CP x DP ranks (TP innermost)."""

    tensor_parallel: PositiveInt = 1
    pipeline_parallel: PositiveInt = 1
    virtual_pipeline_parallel: PositiveInt | None = Field(
        None, description="model chunks per pipeline rank (interleaved 1F1B); None: one")
    context_parallel: PositiveInt = 1
    sequence_parallel: bool = Field(False, description="shard norms/dropout activations over TP ranks")
    data_parallel: PositiveInt = 1
    nodes: PositiveInt = 1
    gpus_per_node: PositiveInt | None = Field(None, description="ranks per node; default world/nodes")

    @property
    def model_parallel(self) -> int:
        return self.tensor_parallel * self.pipeline_parallel * self.context_parallel

    @property
    def world_size(self) -> int:
        return self.model_parallel * self.data_parallel

    @property
    def chunks(self) -> int:
        """Model chunks each pipeline rank holds."""
        return self.virtual_pipeline_parallel or 1

    @property
    def procs_per_node(self) -> int:
        return self.gpus_per_node or self.world_size // self.nodes

    @model_validator(mode="after")
    def _fits(self) -> ParallelConfig:
        if self.procs_per_node * self.nodes != self.world_size:
            raise ValueError(f"nodes {self.nodes} x gpus_per_node {self.procs_per_node} != "
                             f"tensor x pipeline x context x data parallel = {self.world_size}")
        if self.sequence_parallel and self.tensor_parallel == 1:
            raise ValueError("sequence_parallel needs tensor_parallel > 1")
        if self.virtual_pipeline_parallel not in (None, 1) and self.pipeline_parallel == 1:
            raise ValueError("virtual_pipeline_parallel needs pipeline_parallel > 1")
        return self


class SlurmConfig(StrictModel):
    partition: str = "gpu"
    account: str | None = None
    time: str = "7-00:00:00"
    job_name: str = "dasi-pretrain"
    cpus_per_task: PositiveInt = 16
    extra_sbatch: list[str] = Field(default_factory=list, description="more '#SBATCH' options")
    requeue: bool = Field(True, description="after a signal-triggered save the job requeues itself "
                          "(same job id) and resumes; Slurm also requeues it on preemption")
    signal_seconds: PositiveInt = Field(600, description="USR1 to the batch shell this long before the "
                                        "time limit: enough for the current step and one save")
    poll_seconds: PositiveInt = Field(60, description="how often the stage asks Slurm whether a requeued "
                                      "job has ended")


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
    init_from: str | None = Field(None, description="checkpoint folder whose model weights start the run "
                                  "(dasi import-hf, another run); None: random init")
    recompute: Literal["none", "selective", "full"] = Field(
        "none", description="activation recompute: none, selective (core attention) or full layers")
    recompute_num_layers: PositiveInt = Field(1, description="full: layers per recomputed block")
    overlap_grad_reduce: bool = Field(False, description="reduce gradients while backward runs")
    overlap_param_gather: bool = Field(False, description="gather parameters while forward runs "
                                       "(distributed optimizer: GPU only)")
    compile: bool = Field(False, description="torch.compile each transformer layer: inductor fuses "
                          "the norms, RoPE, SwiGLU and residual adds around the matmuls")
    async_save: bool = Field(False, description="write checkpoints in the background (dist_checkpointing)")
    document_masking: bool = Field(False, description="attention and positions reset at every EOD: "
                                   "a token sees only its own document")
    nan_policy: Literal["stop", "skip"] = Field(
        "stop", description="a non-finite loss or a loss spike: skip the batch, or stop naming the "
        "last good checkpoint")
    spike_factor: PositiveFloat | None = Field(
        None, description="a loss above factor x the mean of the last spike_window losses is a spike; "
        "None: no spike check")
    spike_window: PositiveInt = 50
    max_skipped: NonNegativeInt = Field(10, description="stop after this many skipped batches in a row")
    peak_tflops: PositiveFloat | None = Field(
        None, description="dense peak TFLOP/s of one device in the training dtype, for MFU; None: "
        "from the device name when known")
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
        par = self.parallel
        # megatron's interleaved schedule runs micro-batches in groups of pipeline_parallel
        counts = {"micro-batches per step": self.accumulation_steps, "eval_iters": self.eval_iters}
        for key, count in counts.items():
            if par.virtual_pipeline_parallel and count % par.pipeline_parallel:
                raise ValueError(f"interleaved pipelining needs {key} ({count}) divisible by "
                                 f"pipeline_parallel {par.pipeline_parallel}")
        return self
