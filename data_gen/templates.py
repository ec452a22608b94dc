"""Versioned prompt templates (``templates/*.yaml``) and the slot values they draw from.

A template declares the kind of teacher it needs:
- ``base``: a document beginning the teacher continues (Cosmopedia / "rephrasing the web" style
  for a base model). ``context`` is shown to the teacher but is not part of the document;
  ``head`` starts the document, and the document is ``head`` + the continuation.
- ``instruct``: ``prompt`` is one user turn; the document is the assistant's answer.

and what its output is for: ``pretrain`` (documents, slots ``{audience} {topic} {seed}``) or
``sft`` (answers to versioned instructions, slot ``{instruction}``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, PositiveInt, model_validator

from dasi.provenance import sha256_file
from dasi.strict import StrictModel

TEMPLATES_DIR = Path(__file__).parent / "templates"
SLOTS = {"pretrain": ("{audience}", "{topic}", "{seed}"), "sft": ("{instruction}",)}
NON_TEMPLATE_FILES = {"slots.yaml", "instructions.yaml"}


class Template(StrictModel):
    id: str
    version: PositiveInt
    lang: Literal["ko", "en"]
    style: str
    teacher_kind: Literal["base", "instruct"]
    purpose: Literal["pretrain", "sft"] = "pretrain"
    seed_langs: list[Literal["ko", "en", "code"]] = Field(default_factory=list)
    prompt: str = Field("", description="instruct: the user turn")
    context: str = Field("", description="base: shown to the teacher, not part of the document")
    head: str = Field("", description="base: the start of the document the teacher continues")
    stop: list[str] = Field(default_factory=list, description="strings that end the output")
    max_new_tokens: PositiveInt | None = None
    hash: str = ""  # sha256 of the template file, filled by load_templates

    @model_validator(mode="after")
    def _shape(self) -> Template:
        if self.teacher_kind == "instruct" and (not self.prompt or self.head or self.context):
            raise ValueError(f"{self.id}: an instruct template has a prompt and no context/head")
        if self.teacher_kind == "base" and (self.prompt or not self.head):
            raise ValueError(f"{self.id}: a base template has a head (and optional context), no prompt")
        if self.purpose == "pretrain" and not self.seed_langs:
            raise ValueError(f"{self.id}: a pretrain template needs seed_langs")
        text = self.prompt + self.context + self.head
        missing = [s for s in SLOTS[self.purpose] if s not in text]
        if missing:
            raise ValueError(f"{self.id}: lacks slots {missing}")
        return self

    def render(self, **slots: str) -> tuple[str, str]:
        """(what the teacher is given, the document head that starts its output)."""
        def fill(text: str) -> str:
            for name, value in slots.items():
                text = text.replace("{" + name + "}", value)
            return text

        if self.teacher_kind == "instruct":
            return fill(self.prompt).strip(), ""
        head = fill(self.head).lstrip()
        return fill(self.context).lstrip() + head, head


class Slots(StrictModel):
    version: PositiveInt
    audience: dict[str, list[str]]
    topic: dict[str, list[str]]


class Instructions(StrictModel):
    """Versioned instructions the ``sft`` templates turn into chats."""

    version: PositiveInt
    system: dict[str, str]
    prompts: dict[str, list[str]]


def load_templates(directory: Path, ids: list[str] | None = None) -> list[Template]:
    """Load ``<dir>/*.yaml`` except the slot/instruction files; ``ids`` selects (and orders) a subset."""
    found = {}
    for path in sorted(directory.glob("*.yaml")):
        if path.name in NON_TEMPLATE_FILES:
            continue
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        try:
            tpl = Template.model_validate({**data, "hash": sha256_file(path)})
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
        found[tpl.id] = tpl
    if ids is None:
        return list(found.values())
    unknown = [i for i in ids if i not in found]
    if unknown:
        raise ValueError(f"unknown template ids {unknown}; found: {sorted(found)}")
    return [found[i] for i in ids]


def load_slots(directory: Path) -> Slots:
    return Slots.model_validate(yaml.safe_load((directory / "slots.yaml").read_text(encoding="utf-8")))


def load_instructions(directory: Path) -> tuple[Instructions, str]:
    path = directory / "instructions.yaml"
    return Instructions.model_validate(yaml.safe_load(path.read_text(encoding="utf-8"))), sha256_file(path)
