"""Load a stage's typed config from ``params.yaml`` layered over the selected profile.

``params.yaml`` names the profile (``configs/<profile>.yaml``) and may override any section
of it. Every stage validates its own section before doing any work; a bad value raises
:class:`ConfigError` with one line naming the key, the value and what is allowed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

T = TypeVar("T", bound=BaseModel)

PARAMS_FILE = Path("params.yaml")
PROFILES_DIR = Path("configs")
# Keys of params.yaml that are not profile sections.
TOP_LEVEL_KEYS = {"profile", "launcher"}


class ConfigError(ValueError):
    """A config problem, phrased as one line for the user."""


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` wins; nested dicts merge key by key, everything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: file not found") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a mapping of sections, got {type(data).__name__}")
    return data


def profile_names(profiles_dir: Path = PROFILES_DIR) -> list[str]:
    return sorted(p.stem for p in profiles_dir.glob("*.yaml"))


def resolve_params(
    params_path: Path = PARAMS_FILE, profiles_dir: Path = PROFILES_DIR
) -> dict[str, Any]:
    """The full parameter tree: the profile with params.yaml's sections merged over it."""
    params = _read_yaml(params_path)
    profile = params.get("profile", "tiny")
    known = profile_names(profiles_dir)
    if not isinstance(profile, str) or profile not in known:
        raise ConfigError(f"{params_path}: profile = {profile!r}: allowed: {', '.join(known)}")
    base = _read_yaml(profiles_dir / f"{profile}.yaml")
    for key, value in params.items():
        if key in TOP_LEVEL_KEYS:
            continue
        if key not in base:
            raise ConfigError(
                f"{params_path}: unknown section {key!r}: allowed: "
                f"{', '.join(sorted(TOP_LEVEL_KEYS | set(base)))}"
            )
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"{params_path}: {key} must be a mapping of overrides, got {value!r}")
    overrides = {k: v for k, v in params.items() if k not in TOP_LEVEL_KEYS and v}
    merged = deep_merge(base, overrides)
    merged["profile"] = profile
    merged["launcher"] = params.get("launcher", base.get("launcher", "local"))
    return merged


def _describe(err: dict[str, Any], section: str) -> str:
    loc = ".".join(str(p) for p in (section, *err["loc"]))
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown key (check spelling; see the profile for the allowed keys)"
    if err["type"] == "missing":
        return f"{loc}: required key is missing"
    return f"{loc} = {err.get('input')!r}: {msg}"


def validate_section(section: str, data: Any, model: type[T]) -> T:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        errors = e.errors()
        first = _describe(errors[0], section)
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(first + more) from None
