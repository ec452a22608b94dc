"""Where a cluster run goes: the printed script that ``dasi-tpu pretrain --dry-run`` shows and a
cluster run executes. Both forms start the same command on every host of the slice: the MaxText
venv's Python running ``pretrain_tpu/maxtext_side.py train`` on the run config.

- ``gcloud``: ``gcloud compute tpus tpu-vm ssh --worker=all`` into a TPU VM slice (made first with
  ``tpu-vm create``; the script says so but does not create it).
- ``xpk``: an ``xpk workload create`` on a GKE cluster, the image holding this repository.
"""

from __future__ import annotations

import shlex

from pretrain_tpu.config import PretrainTpuConfig, chips

VENV_PYTHON = ".venv-maxtext/bin/python"


def train_command(yml: str, margin: float, overrides: list[str], python: str = VENV_PYTHON) -> str:
    return " ".join(
        [
            python,
            "pretrain_tpu/maxtext_side.py",
            "train",
            f"--blend-margin={margin}",
            shlex.quote(yml),
            *map(shlex.quote, overrides),
        ]
    )


def script(cfg: PretrainTpuConfig, yml: str, margin: float, overrides: list[str]) -> str:
    c = cfg.cluster
    run = train_command(yml, margin, overrides)
    head = (
        f"#!/usr/bin/env bash\n# dasi-tpu pretrain on {c.tpu_type} x {c.num_slices} slice(s) "
        f"({chips(c.tpu_type) * c.num_slices} chips), launcher {c.launcher}\nset -euo pipefail\n"
    )
    if c.launcher == "gcloud":
        remote = f"cd {c.repo_dir} && JAX_PLATFORMS=tpu {run}"
        return head + (
            f"# the slice must exist: gcloud compute tpus tpu-vm create {c.tpu_name} --zone={c.zone} "
            f"--project={c.project} --accelerator-type={c.tpu_type} --version={c.runtime_version}\n"
            f"gcloud compute tpus tpu-vm ssh {c.tpu_name} --zone={c.zone} --project={c.project} "
            f"--worker=all --command={shlex.quote(remote)}\n"
        )
    return head + (
        f"xpk workload create --cluster={c.cluster} --workload={c.tpu_name} --tpu-type={c.tpu_type} "
        f"--num-slices={c.num_slices} --project={c.project} --zone={c.zone} "
        f"--docker-image={c.docker_image} --command={shlex.quote(f'cd {c.repo_dir} && {run}')}\n"
    )
