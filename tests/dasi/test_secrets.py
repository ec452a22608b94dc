"""Credentials in the environment never reach logs/, W&B or TensorBoard files."""

import os
import subprocess
import sys

from tests.conftest import REPO

SECRETS = {
    "HF_TOKEN": "hf_plantedSecretValue0001",
    "WANDB_API_KEY": "plantedSecretValue0002abcdef0123456789abcd",
    "AWS_SECRET_ACCESS_KEY": "plantedSecretValue0003",
    "DASI_DB_PASSWORD": "plantedSecretValue0004",
    "OPENAI_API_KEY": "sk-plantedSecretValue0005",
    "GITHUB_TOKEN": "ghp_plantedSecretValue0006",
}

RUN = """
import sys
from dasi.runlog import LoggingConfig, RunLog
logging = LoggingConfig(logs_dir=sys.argv[1], wandb=True, tensorboard=True)
with RunLog("probe", {"lr": 0.1}, inputs=[], outputs=[], logging=logging, profile="tiny") as log:
    log.log({"loss": 1.0}, step=1)
    log.event("resume", step=1)
    log.summary({"loss": 1.0})
"""


def test_planted_credentials_are_written_nowhere(tmp_path):
    logs = tmp_path / "logs"
    env = {**os.environ, **SECRETS, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", RUN, str(logs)], cwd=REPO, env=env, check=True,
                   capture_output=True, timeout=300)
    files = [p for p in logs.rglob("*") if p.is_file()]
    assert any(p.name == "env.json" for p in files)
    assert any("wandb" in p.parts for p in files) and any("tfevents" in p.name for p in files)
    leaks = [(str(p.relative_to(logs)), name) for p in files for name, value in SECRETS.items()
             if value.encode() in p.read_bytes()]
    assert not leaks, f"credentials written to: {leaks}"
