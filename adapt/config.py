"""The ``adapt:`` profile section: which English model is adapted to Korean, how its vocabulary
grows, and how each training phase (and the baseline arm) is run."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, ValidationInfo, field_validator, model_validator

from dasi.config import ConfigError
from dasi.fsdp import check_fsdp_words, check_wrap_layer
from dasi.parallel import Parallel, SlurmSpec
from dasi.strict import StrictModel

# The RedWhale phases, in order: embeddings + head, odd layers, even layers, LoRA (then merged).
PHASES = ("embed_head", "odd_layers", "even_layers", "lora")
Phase = Literal["embed_head", "odd_layers", "even_layers", "lora"]
# The path's goals (issue 11), checked in metrics/adapt.json.
RATIO_GOAL = 0.60          # Korean tokens after / before the merge; RedWhale reports about 0.57
ENGLISH_LOSS_GOAL = 0.05   # English bits per byte at most 5% worse than the unadapted base


class BaseModelSpec(StrictModel):
    """The English model: a local HF folder (on ``tiny`` the teacher stage's) or a hub id at a
    pinned revision (cluster profiles)."""

    path: str | None = Field(None, description="local HF folder")
    hub_id: str | None = None
    revision: str | None = Field(None, description="40-hex commit of hub_id")

    @model_validator(mode="after")
    def _one_source(self) -> BaseModelSpec:
        if (self.path is None) == (self.hub_id is None):
            raise ValueError("give exactly one of path (a local HF folder) or hub_id")
        if self.revision is not None and len(self.revision) != 40:
            raise ValueError(f"revision {self.revision!r}: give the 40-hex commit")
        return self

    def source(self) -> tuple[str, str | None]:
        """What ``from_pretrained`` loads: the local folder, or the hub id at its revision. A hub id
        left unpinned (profiles may leave it open) stops the stage that loads it."""
        if self.path is not None:
            return self.path, None
        if self.revision is None:
            raise ConfigError(f"adapt.base.revision: {self.hub_id} must be pinned to a 40-hex commit "
                              "before the adaptation path runs")
        return str(self.hub_id), self.revision


class VocabConfig(StrictModel):
    korean_vocab_size: int = Field(ge=300, le=500_000, description="size of the Korean BPE trained "
                                   "on curated Korean text (before the merge keeps what the base lacks)")
    max_new_tokens: PositiveInt = Field(description="at most this many tokens join the base vocabulary")
    min_frequency: PositiveInt = 2
    sample_chars: PositiveInt = Field(description="Korean training characters for the BPE")
    heldout_chars: PositiveInt = Field(200_000, description="held-out Korean characters for the ratio")
    seed: int = 0


class PhaseConfig(StrictModel):
    steps: PositiveInt
    learning_rate: float = Field(gt=0)
    train_embeddings: bool = Field(False, description=(
        "also train the input embeddings and the output head (at this phase's learning rate), so "
        "that the new rows go on learning after embed_head, as Chinese-LLaMA trains them beside "
        "LoRA; not for embed_head, which trains them anyway"))


class LoraConfig(StrictModel):
    r: PositiveInt = 16
    alpha: PositiveInt = 32
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TrainConfig(StrictModel):
    """What every phase and the baseline share: the token stream and the batch shape."""

    seq_length: int = Field(gt=8)
    batch_size: PositiveInt = Field(description="sequences per step, over all ranks (per device x "
                                    "grad_accum x adapt.parallel.world_size)")
    grad_accum: PositiveInt = 1
    lang_weights: dict[Literal["ko", "en", "code"], float] = Field(
        description="share of each language's curated train text in the stream, e.g. {ko: 0.8, en: 0.2}")
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    dtype: Literal["float32", "bfloat16"] = "float32"
    save_steps: PositiveInt = Field(description="checkpoint every this many steps (what a resume "
                                    "restarts from)")
    seed: int = 0

    @model_validator(mode="after")
    def _weights(self) -> TrainConfig:
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of grad_accum "
                             f"{self.grad_accum}")
        if "ko" not in self.lang_weights or any(w <= 0 for w in self.lang_weights.values()):
            raise ValueError("lang_weights: give ko and positive weights")
        return self


class BaselineConfig(StrictModel):
    """The same base continued-pretrained with its own tokenizer on the same number of tokens."""

    learning_rate: float = Field(gt=0)


class EvalConfig(StrictModel):
    bpb_langs: list[Literal["ko", "en", "code"]] = ["ko", "en"]
    bpb_max_docs: PositiveInt | None = Field(None, description="held-out documents per language")
    bpb_window: PositiveInt | None = Field(None, description="default: train.seq_length")


class AdaptSlurm(SlurmSpec):
    job_name: str = "dasi-adapt"


class AdaptConfig(StrictModel):
    base: BaseModelSpec
    vocab: VocabConfig
    train: TrainConfig
    phases: dict[Phase, PhaseConfig]
    lora: LoraConfig = Field(default_factory=LoraConfig)
    baseline: BaselineConfig
    eval: EvalConfig = Field(default_factory=EvalConfig)
    parallel: Parallel = Field(default_factory=Parallel)
    slurm: AdaptSlurm = Field(default_factory=AdaptSlurm)
    fsdp: str = Field("", description="TrainingArguments.fsdp words, e.g. 'full_shard auto_wrap'; "
                      "'' trains data parallel (DDP) when there are several ranks")
    fsdp_wrap_layer: str | None = Field(None, description="e.g. LlamaDecoderLayer")

    @field_validator("fsdp")
    @classmethod
    def _fsdp_words(cls, v: str) -> str:
        return check_fsdp_words(v)

    @field_validator("fsdp_wrap_layer")
    @classmethod
    def _wrap_needs_fsdp(cls, v: str | None, info: ValidationInfo) -> str | None:
        return check_wrap_layer(v, info.data.get("fsdp"), "adapt")

    @model_validator(mode="after")
    def _every_phase(self) -> AdaptConfig:
        missing = [p for p in PHASES if p not in self.phases]
        if missing:
            raise ValueError(f"phases: missing {missing[0]!r}; the phases are {', '.join(PHASES)}")
        if self.phases["embed_head"].train_embeddings:
            raise ValueError("phases.embed_head.train_embeddings: embed_head trains the embeddings "
                             "anyway; set it on odd_layers, even_layers or lora")
        per_step = self.train.grad_accum * self.parallel.world_size
        if self.train.batch_size % per_step:
            raise ValueError(f"train.batch_size {self.train.batch_size} is not a multiple of grad_accum x "
                             f"ranks ({self.train.grad_accum} x {self.parallel.world_size})")
        return self

    @property
    def per_device_batch(self) -> int:
        return self.train.batch_size // (self.train.grad_accum * self.parallel.world_size)

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.phases.values())

    def tokens_per_step(self) -> int:
        return self.train.batch_size * self.train.seq_length
