"""Run one pipeline stage: validate its config sections, then do the work inside a RunLog."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from dasi.config import PARAMS_FILE, PROFILES_DIR, ConfigError, resolve_params, validate_section
from dasi.runlog import LoggingConfig, RunLog


class MissingInputs(FileNotFoundError):
    """A stage's input is not there (an earlier stage has not run): one line for the user."""


class JobFailed(RuntimeError):
    """A job the stage submitted (Slurm) ended badly; its logs are in the run log: one line."""


def load_sections(sections: dict[str, type[BaseModel]], params: Path = PARAMS_FILE,
                  profiles: Path = PROFILES_DIR) -> tuple[dict[str, BaseModel], LoggingConfig, str]:
    """Validated configs for ``sections``, the logging config and the profile name."""
    tree = resolve_params(params, profiles)
    cfgs = {}
    for name, model in sections.items():
        if name not in tree:
            raise ConfigError(f"profile {tree['profile']!r} has no section {name!r}")
        cfgs[name] = validate_section(name, tree[name], model)
    logging = validate_section("logging", tree.get("logging") or {}, LoggingConfig)
    return cfgs, logging, tree["profile"]


def load_stage(section: str, model: type[BaseModel], params: Path = PARAMS_FILE,
               profiles: Path = PROFILES_DIR) -> tuple[BaseModel, LoggingConfig, str]:
    cfgs, logging, profile = load_sections({section: model}, params, profiles)
    return cfgs[section], logging, profile


def run_stage(stage: str, sections: dict[str, type[BaseModel]], inputs: list[Path],
              outputs: list[Path], work: Callable[..., Any], params: Path = PARAMS_FILE,
              profiles: Path = PROFILES_DIR, rank: int = 0) -> Any:
    """Validate every section (stopping on the first bad value), check inputs exist, then call
    ``work(*configs, log)`` with the configs in the order of ``sections``."""
    cfgs, logging, profile = load_sections(sections, params, profiles)
    missing = [str(p) for p in inputs if not Path(p).exists()]
    if missing:
        raise MissingInputs(f"{stage}: missing inputs {missing} (run the earlier stages first)")
    logged = {k: v.model_dump(mode="json") for k, v in cfgs.items()}
    logged = logged[stage] if list(logged) == [stage] else logged
    with RunLog(stage, logged, inputs, outputs, logging, profile=profile, rank=rank) as log:
        return work(*cfgs.values(), log)
