"""Run one pipeline stage: validate its config section, then do the work inside a RunLog."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from dasi.config import PARAMS_FILE, PROFILES_DIR, resolve_params, validate_section
from dasi.runlog import LoggingConfig, RunLog

T = TypeVar("T", bound=BaseModel)


def load_stage(section: str, model: type[T], params: Path = PARAMS_FILE,
               profiles: Path = PROFILES_DIR) -> tuple[T, LoggingConfig, str]:
    """The stage's validated config, the logging config and the profile name (raises ConfigError)."""
    tree = resolve_params(params, profiles)
    if section not in tree:
        from dasi.config import ConfigError

        raise ConfigError(f"profile {tree['profile']!r} has no section {section!r}")
    cfg = validate_section(section, tree[section], model)
    logging = validate_section("logging", tree.get("logging") or {}, LoggingConfig)
    return cfg, logging, tree["profile"]


def run_stage(section: str, model: type[T], inputs: list[Path], outputs: list[Path],
              work: Callable[[T, RunLog], Any], params: Path = PARAMS_FILE,
              profiles: Path = PROFILES_DIR) -> Any:
    cfg, logging, profile = load_stage(section, model, params, profiles)
    missing = [str(p) for p in inputs if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"{section}: missing inputs {missing} (run the earlier stages first)")
    with RunLog(section, cfg, inputs, outputs, logging, profile=profile) as log:
        return work(cfg, log)
