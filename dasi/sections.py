"""Stage ``config``: validate every section of the profile before any stage touches a file.

DVC removes a stage's outputs before running its command, so a bad value found by the stage
itself has already cost its outputs. ``config`` runs first in the DAG: it resolves
``params.yaml`` over the profile, validates every section (and the checks that span sections),
and writes each one, with its defaults filled in, to ``data/config/<section>.json``. Stages
depend on the files of the sections they read, so a bad value stops ``dvc repro`` here with one
line, and a change re-runs exactly the stages whose resolved section changed.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from dasi.atomic import write_json
from dasi.config import PARAMS_FILE, PROFILES_DIR, ConfigError, resolve_params, validate_section

FORMAT = "dasi.config/1"
LAUNCHERS = ("local", "slurm")
# section -> "module:class" of its typed config (imported only here, so that `dasi params`
# and the stages themselves stay light).
SECTIONS = {
    "logging": "dasi.runlog:LoggingConfig",
    "teacher": "data_gen.teacher:TeachersConfig",
    "seeds": "data_gen.seeds:SeedsConfig",
    "generate": "data_gen.generate:GenerateConfig",
    "sft_data": "data_gen.sft_data:SftDataConfig",
    "curate": "data_gen.curate:CurateConfig",
    "tokenizer": "pretrain.tokenizer:TokenizerConfig",
    "pack": "pretrain.pack:PackConfig",
    "model": "dasi.model_config:ModelConfig",
    "pretrain": "pretrain.config:PretrainConfig",
    "export": "pretrain.export:ExportConfig",
    "sft": "instruct.sft:SFTConfig",
    "evaluate": "evals.evaluate:EvaluateConfig",
    "adapt": "adapt.config:AdaptConfig",
    "pretrain_tpu": "pretrain_tpu.config:PretrainTpuConfig",
    "release": "dasi.release:ReleaseConfig",
}
# Keys of a profile that are not validated sections.
OTHER_KEYS = {"profile", "launcher", "description"}


def model_of(section: str) -> type[BaseModel]:
    module, cls = SECTIONS[section].split(":")
    return getattr(importlib.import_module(module), cls)


def validate_tree(tree: dict[str, Any]) -> dict[str, BaseModel]:
    """Every section validated, in pipeline order; the first problem raises ConfigError."""
    unknown = sorted(set(tree) - set(SECTIONS) - OTHER_KEYS)
    if unknown:
        raise ConfigError(f"profile {tree['profile']!r}: unknown section {unknown[0]!r}: allowed: "
                          f"{', '.join(sorted(set(SECTIONS) | OTHER_KEYS))}")
    missing = [s for s in SECTIONS if s not in tree]
    if missing:
        raise ConfigError(f"profile {tree['profile']!r} has no section {missing[0]!r}")
    if tree["launcher"] not in LAUNCHERS:
        raise ConfigError(f"launcher = {tree['launcher']!r}: allowed: {', '.join(LAUNCHERS)}")
    cfgs = {name: validate_section(name, tree[name], model_of(name)) for name in SECTIONS}
    cross_check(cfgs, tree["launcher"])
    return cfgs


def cross_check(cfgs: dict[str, BaseModel], launcher: str) -> None:
    """Rules that span sections, checked here so that no stage finds them half-way."""
    from data_gen.generate import check_slurm_section
    from data_gen.seeds import routed_templates

    routed_templates(cfgs["seeds"], cfgs["teacher"])
    check_slurm_section(cfgs["generate"], launcher)


def write_sections(out_dir: Path, params: Path = PARAMS_FILE, profiles: Path = PROFILES_DIR) -> dict:
    """Validate, then write ``<out_dir>/<section>.json`` for each section; returns a summary."""
    tree = resolve_params(params, profiles)
    cfgs = validate_tree(tree)  # nothing is written unless every section is valid
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, cfg in cfgs.items():
        write_json(out_dir / f"{name}.json", {"format": FORMAT, "profile": tree["profile"],
                                              "section": name, "config": cfg.model_dump(mode="json")})
    return {"profile": tree["profile"], "launcher": tree["launcher"], "sections": list(cfgs)}
