"""Versioned prompt templates (``templates/*.yaml``) and the slot values they draw from."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, PositiveInt

from dasi.provenance import sha256_file
from dasi.strict import StrictModel

TEMPLATES_DIR = Path(__file__).parent / "templates"
SLOT_NAMES = ("{audience}", "{topic}", "{seed}")


class Template(StrictModel):
    id: str
    version: PositiveInt
    lang: Literal["ko", "en"]
    style: str
    seed_langs: list[Literal["ko", "en", "code"]] = Field(min_length=1)
    prompt: str
    hash: str = ""  # sha256 of the template file, filled by load_templates

    def render(self, audience: str, topic: str, seed: str) -> str:
        return (
            self.prompt.replace("{audience}", audience)
            .replace("{topic}", topic)
            .replace("{seed}", seed)
            .strip()
        )


class Slots(StrictModel):
    version: PositiveInt
    audience: dict[str, list[str]]
    topic: dict[str, list[str]]


def load_templates(directory: Path, ids: list[str] | None = None) -> list[Template]:
    """Load ``<dir>/*.yaml`` except ``slots.yaml``; ``ids`` selects (and orders) a subset."""
    found = {}
    for path in sorted(directory.glob("*.yaml")):
        if path.name == "slots.yaml":
            continue
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        tpl = Template.model_validate({**data, "hash": sha256_file(path)})
        missing = [s for s in SLOT_NAMES if s not in tpl.prompt]
        if missing:
            raise ValueError(f"{path}: prompt lacks slots {missing}")
        found[tpl.id] = tpl
    if ids is None:
        return list(found.values())
    unknown = [i for i in ids if i not in found]
    if unknown:
        raise ValueError(f"unknown template ids {unknown}; found: {sorted(found)}")
    return [found[i] for i in ids]


def load_slots(directory: Path) -> Slots:
    return Slots.model_validate(yaml.safe_load((directory / "slots.yaml").read_text(encoding="utf-8")))
