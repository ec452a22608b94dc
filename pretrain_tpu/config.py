"""The ``pretrain_tpu:`` profile section: how MaxText runs the ``model:``/``pretrain:`` sections.

The shape, the optimisation and the data are the Megatron path's own sections, translated by
:mod:`pretrain_tpu.run_config`; this section holds only what is MaxText's: its interpreter, the
layer layout, the parity gates, and where a cluster run goes (a TPU slice through ``gcloud`` or a
GKE cluster through ``xpk``).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, field_validator

from dasi.strict import StrictModel

# Accelerator types: v4-8, v5p-128, v5litepod-16, v6e-256 (the number counts TensorCores on v4/v5p,
# chips on v5e/v6e: see chips()).
TPU_TYPE = re.compile(r"^(v4|v5p|v5litepod|v5e|v6e)-(\d+)$")
TWO_CORES_PER_CHIP = {"v4", "v5p"}
MaxTextValue = str | int | float | bool


def chips(tpu_type: str) -> int:
    """Chips (JAX devices) of an accelerator type, e.g. v5p-128 -> 64, v6e-256 -> 256."""
    gen, n = TPU_TYPE.match(tpu_type).groups()  # type: ignore[union-attr]
    return int(n) // 2 if gen in TWO_CORES_PER_CHIP else int(n)


class TpuClusterConfig(StrictModel):
    """A cluster run: the slice, and where the repository, data and outputs live on it."""

    launcher: Literal["gcloud", "xpk"] = Field(
        "gcloud", description="gcloud: ssh into every TPU-VM worker; xpk: a GKE workload"
    )
    tpu_type: str = Field("v5p-8", description="accelerator type, e.g. v5p-128 or v6e-256")
    num_slices: PositiveInt = 1
    tpu_name: str = "dasi-tpu"
    zone: str = "us-east5-a"
    project: str = "my-project"
    runtime_version: str = Field("v2-alpha-tpuv5", description="TPU-VM software version")
    cluster: str = Field("dasi", description="xpk: the GKE cluster")
    docker_image: str = Field("maxtext_base_image", description="xpk: the image with this repository")
    repo_dir: str = Field("~/dasi", description="the repository's folder on every worker")
    output_dir: str = Field(
        "gs://my-bucket/dasi", description="MaxText's base_output_directory (a bucket every worker writes)"
    )

    @field_validator("tpu_type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if not TPU_TYPE.match(value):
            raise ValueError(
                f"{value!r}: allowed: <generation>-<count> with generation one of "
                "v4, v5p, v5litepod, v5e, v6e (e.g. v5p-128, v6e-256)"
            )
        return value


class PretrainTpuConfig(StrictModel):
    launcher: Literal["local", "cluster"] = Field(
        "local", description="local: this machine, CPU or one TPU VM; cluster: the slice of `cluster`"
    )
    python: str = Field(
        ".venv-maxtext/bin/python",
        description="the MaxText venv's interpreter "
        "(bash scripts/setup.sh makes it); env DASI_MAXTEXT_PYTHON overrides",
    )
    hardware: Literal["cpu", "tpu", "gpu"] = "cpu"
    scan_layers: bool = Field(False, description="stack the layers (faster compiles at depth)")
    max_logit_diff: PositiveFloat = Field(1e-4, description="export: MaxText vs HF logits")
    max_first_loss_diff: PositiveFloat = Field(
        1e-4, description="compare: MaxText vs Megatron loss of the first batch, from the same weights"
    )
    maxtext: dict[str, MaxTextValue] = Field(
        default_factory=dict,
        description="further MaxText keys "
        "as they are (e.g. ici_fsdp_parallelism); shape, "
        "optimisation and data keys are refused",
    )
    cluster: TpuClusterConfig = TpuClusterConfig()
