"""How many ranks a Trainer stage (SFT, the adaptation phases) runs on, and the Slurm job that
holds them: the config half of :mod:`dasi.launch`, kept apart so that a config reads it without the
launch machinery."""

from __future__ import annotations

from pydantic import Field, PositiveInt

from dasi.strict import StrictModel


class Parallel(StrictModel):
    """Data-parallel ranks, one per GPU; FSDP (the stage's ``fsdp``) shards the model over all."""

    nodes: PositiveInt = 1
    gpus_per_node: PositiveInt = Field(1, description="ranks per node (processes on a CPU host)")

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node


class SlurmSpec(StrictModel):
    partition: str = "gpu"
    account: str | None = None
    time: str = "1-00:00:00"
    job_name: str = "dasi"
    cpus_per_task: PositiveInt = 16
    extra_sbatch: list[str] = Field(default_factory=list, description="more '#SBATCH' options")
