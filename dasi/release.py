"""Stage ``release`` and ``dasi release verify``.

A release folder holds the model folders, the metrics files as the stages wrote them
(``metrics/``), ``results.json`` (all of them in one object), ``release.json`` (which repository
path each released file came from, and the run of every stage), the model card (``README.md``)
and data card (``DATA_CARD.md``) written from those, ``dvc.lock`` and ``SHA256SUMS``
(``sha256sum -c`` format). The model folders are DVC outputs (remote storage), the rest is in git.

The release's ``dvc.lock``: the stage cannot copy the lock DVC writes after it, because DVC
writes the release's own entry only when the stage has ended, and that entry hashes the
release's files, this copy among them. So the copy holds every other stage's entry as DVC wrote
it (each is final once its stage ended: DVC appends entries as stages finish, and the release
runs last) plus the release's entry as DVC will write it, less its ``outs``: ``cmd`` and the
``deps`` hashed here the way DVC hashes them (md5 of a file; of a folder, the md5 of its sorted
``[{"md5", "relpath"}]`` JSON, suffixed ``.dir``). The repository's final ``dvc.lock`` is this
copy plus the release's ``outs``. ``verify`` checks the copy against the released files: each
model folder and metrics file must hash to the entry of the stage that made it.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from dasi.atomic import atomic_path
from dasi.card import CardInputs, data_card, model_card
from dasi.model_config import ModelConfig, parameter_count
from dasi.provenance import sha256_file
from dasi.stage import MissingInputs
from dasi.strict import StrictModel

FORMAT = "dasi.release/1"
# The metrics files a release carries (metrics/<name>.json), in pipeline order.
METRICS = ("curate", "sft_data", "tokenizer", "mix", "pretrain", "export", "sft", "eval")
_SUM_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


class ReleaseConfig(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    license: str = "Apache-2.0"
    authors: str = "dasi contributors"


@dataclass(frozen=True)
class ReleaseInputs:
    """What the stage reads; paths are relative to ``root`` (the repository), as in ``dvc.lock``."""

    profile: str
    models: dict[str, Path]
    metric_files: list[Path]
    lock_file: Path
    stage_cmd: str
    stage_deps: list[str]
    description: str = ""
    seeds_config: Path | None = None        # data/config/seeds.json: the sources as configured
    generated_manifest: Path | None = None  # data/generated/_manifest.json: the synthetic set
    pretrain_config: Path | None = None     # data/config/pretrain.json: where pretraining started
    root: Path = Path(".")


# -- DVC's hashes ----------------------------------------------------------------------------
def _md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def dvc_hash(path: Path) -> dict[str, Any]:
    """``{hash, md5, size[, nfiles]}`` of a file or folder as DVC 3 writes it in ``dvc.lock``."""
    path = Path(path)
    if path.is_file():
        return {"hash": "md5", "md5": _md5_file(path), "size": path.stat().st_size}
    if not path.is_dir():
        raise FileNotFoundError(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    listing = sorted(({"md5": _md5_file(f), "relpath": f.relative_to(path).as_posix()} for f in files),
                     key=lambda e: e["relpath"])
    digest = hashlib.md5(json.dumps(listing, sort_keys=True).encode()).hexdigest()
    return {"hash": "md5", "md5": f"{digest}.dir", "size": sum(f.stat().st_size for f in files),
            "nfiles": len(files)}


# -- the stage's definition and its lock ------------------------------------------------------
def stage_definition(dvc_yaml: Path, params_file: Path, name: str = "release") -> tuple[str, list[str]]:
    """A stage's command, with its ``${key}`` filled from params.yaml (dvc.yaml's ``vars``), and
    its dep paths."""
    stage = yaml.safe_load(Path(dvc_yaml).read_text())["stages"][name]
    params = yaml.safe_load(Path(params_file).read_text()) or {}

    def fill(m: re.Match) -> str:
        if m.group(1) not in params:
            raise ValueError(f"dvc.yaml: stage {name} uses ${{{m.group(1)}}}, which params.yaml does not set")
        return str(params[m.group(1)])

    cmd = re.sub(r"\$\{\s*([A-Za-z0-9_]+)\s*\}", fill, stage["cmd"])  # verbatim otherwise, as DVC keeps it
    deps = [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]
    return cmd, deps


def final_lock(lock_file: Path, cmd: str, deps: list[str], root: Path) -> dict[str, Any]:
    """The lock DVC will hold after this release, less the release's ``outs`` (see the module
    docstring). Stages by name: DVC appends entries as stages first run, so its order tells a
    repository's history, not what made the release."""
    lock = yaml.safe_load(Path(lock_file).read_text())
    stages = {k: v for k, v in lock.get("stages", {}).items() if k != "release"}
    stages["release"] = {"cmd": cmd, "deps": [{"path": d, **dvc_hash(root / d)} for d in sorted(deps)]}
    return {**lock, "stages": dict(sorted(stages.items()))}


# -- which run made what ----------------------------------------------------------------------
def _ok_runs(logs_dir: Path, stage: str) -> list[dict[str, Any]]:
    """A stage's finished runs, oldest first."""
    runs = []
    for d in sorted((logs_dir / stage).glob("*/run.json")):
        try:
            run = json.loads(d.read_text())
            if run.get("status") != "ok":
                continue
            outputs = json.loads((d.parent / "outputs.json").read_text())
            inputs = json.loads((d.parent / "inputs.json").read_text())
        except (OSError, ValueError):
            continue
        cwd = run.get("cwd", "")
        runs.append({"run_id": run["run_id"], "started": run["started"], "ended": run.get("ended", ""),
                     "outputs": {_relative(p, cwd): _record(r) for p, r in outputs.items()},
                     "inputs": {_relative(p, cwd): h for p, h in inputs.items()}})
    return sorted(runs, key=lambda r: r["started"])


def _record(rec: Any) -> dict[str, Any] | None:
    """An outputs.json entry; runlog/1 wrote a bare sha256 (file count unknown)."""
    return {"mode": "sha256", "sha256": rec, "files": None} if isinstance(rec, str) else rec


def _relative(path: str, cwd: str) -> str:
    p = Path(path)
    if p.is_absolute() and cwd and p.is_relative_to(cwd):
        p = p.relative_to(cwd)
    return p.as_posix()


def _folder_sha256(folder: str, known: dict[str, str | None], files: int | None) -> str | None:
    """A folder's sha256 (``provenance.sha256_path``) from the known hashes of its files, when
    every one of them is known."""
    children = {Path(p).relative_to(folder): h for p, h in known.items() if p.startswith(folder + "/") and h}
    if files is None or len(children) != files:
        return None
    h = hashlib.sha256()
    for rel in sorted(children):
        h.update(f"{rel.as_posix()}\0{children[rel]}\n".encode())
    return h.hexdigest()


def _outputs_match(outputs: dict[str, Any], known: dict[str, str | None]) -> bool:
    """Some recorded output has a known hash and every comparable one agrees."""
    agreed = False
    for path, rec in outputs.items():
        if not rec or rec.get("mode") != "sha256":
            continue  # a missing output, or one recorded by sizes only: nothing to compare
        have = known.get(path) or _folder_sha256(path, known, rec["files"])
        if have is None:
            continue
        if have != rec["sha256"]:
            return False
        agreed = True
    return agreed


def _consumers(stages: dict[str, Any]) -> dict[str, set[str]]:
    """stage -> the stages whose deps are (inside) one of its outs."""
    def under(dep: str, out: str) -> bool:
        return dep == out or dep.startswith(out.rstrip("/") + "/")

    outs = {s: [o["path"] for o in e.get("outs", [])] for s, e in stages.items()}
    return {s: {c for c, e in stages.items() if c != s and any(
        under(d["path"], o) for d in e.get("deps", []) for o in outs[s])} for s in stages}


def stage_runs(logs_dir: Path, stages: dict[str, Any], known: dict[str, str | None],
               started: str) -> dict[str, dict[str, str] | None]:
    """The run of each stage of the lock that made what the release holds.

    From the release back up the DAG: a stage's run is its oldest finished run whose recorded
    outputs (``outputs.json``) have the sha256 that the release or an already matched later run
    read (their ``inputs.json``): "outputs". The oldest, so that a forced re-run that wrote the
    same bytes, or a clone that reproduced them next to the published logs, names the run that
    first made them. A stage whose outputs nobody downstream recorded (e.g. a folder read file by
    file) gets its latest run that ended before its earliest matched consumer started: "time".
    None: the stage left no run log (``config``)."""
    consumers = _consumers(stages)
    found: dict[str, dict[str, str] | None] = {}
    starts = {"release": started}
    known = dict(known)
    todo = [s for s in stages if s != "release"]
    while todo:
        ready = [s for s in todo if all(c in found or c == "release" for c in consumers[s])] or todo
        stage = sorted(ready)[0]
        todo.remove(stage)
        runs = _ok_runs(logs_dir, stage)
        run = next((r for r in runs if _outputs_match(r["outputs"], known)), None)
        how = "outputs"
        if run is None:
            bound = min((starts[c] for c in consumers[stage] if c in starts), default=started)
            earlier = [r for r in runs if r["ended"] and r["ended"] <= bound]
            run, how = (earlier[-1] if earlier else None), "time"
        if run is None:
            found[stage] = None
            continue
        found[stage] = {"run_id": run["run_id"], "matched": how}
        starts[stage] = run["started"]
        for path, h in run["inputs"].items():
            known.setdefault(path, h)
    return dict(sorted(found.items()))


# -- the stage --------------------------------------------------------------------------------
def read_metrics(files: list[Path]) -> dict[str, Any]:
    """Every metrics file; a missing one stops the release (a card without it would be wrong)."""
    missing = [str(f) for f in files if not Path(f).is_file()]
    if missing:
        raise MissingInputs(f"release: missing metrics {missing} (run the earlier stages first)")
    return {Path(f).stem: json.loads(Path(f).read_text()) for f in files}


def _read_optional(path: Path | None) -> Any:
    return json.loads(Path(path).read_text()) if path and Path(path).is_file() else None


def _section(path: Path | None) -> dict[str, Any]:
    """A resolved section (data/config/<section>.json: ``{"config": {...}}``), {} if absent."""
    data = _read_optional(path) or {}
    return data.get("config", data)


def _own_run(run_dir: Path) -> tuple[dict[str, str | None], str]:
    """The release run's input hashes (``inputs.json``) and start, from its run folder."""
    inputs, run = run_dir / "inputs.json", run_dir / "run.json"
    known = json.loads(inputs.read_text()) if inputs.is_file() else {}
    started = json.loads(run.read_text()).get("started") if run.is_file() else None
    return {Path(p).as_posix(): h for p, h in known.items()}, started or datetime.now(UTC).isoformat()


def write_checksums(release_dir: Path) -> Path:
    files = sorted(p for p in release_dir.rglob("*") if p.is_file() and p.name != "SHA256SUMS")
    lines = [f"{sha256_file(p)}  {p.relative_to(release_dir).as_posix()}" for p in files]
    out = release_dir / "SHA256SUMS"
    out.write_text("\n".join(lines) + "\n")
    return out


def run(cfg: ReleaseConfig, model: ModelConfig, inputs: ReleaseInputs, out_dir: Path,
        log: Any) -> dict[str, Any]:
    root = Path(inputs.root)
    metrics = read_metrics([root / f for f in inputs.metric_files])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sources: dict[str, str] = {}
    for name, src in inputs.models.items():
        with atomic_path(out_dir / "models" / name) as tmp:
            shutil.copytree(root / src, tmp)
        sources[f"models/{name}"] = Path(src).as_posix()
    (out_dir / "metrics").mkdir(exist_ok=True)
    for f in inputs.metric_files:  # as written: verify checks them against dvc.lock
        shutil.copyfile(root / f, out_dir / "metrics" / Path(f).name)
        sources[f"metrics/{Path(f).name}"] = Path(f).as_posix()
    lock = final_lock(root / inputs.lock_file, inputs.stage_cmd, inputs.stage_deps, root)
    runs = stage_runs(Path(log.dir).parent.parent, lock["stages"], *_own_run(Path(log.dir)))
    manifest = {"format": FORMAT, "name": cfg.name, "profile": inputs.profile,
                "parameters": parameter_count(model), "sources": sources, "runs": runs}
    card_inputs = CardInputs(
        cfg.name, cfg.license, cfg.authors, inputs.profile, inputs.description, model, metrics,
        list(_section(inputs.seeds_config and root / inputs.seeds_config).get("sources", [])),
        _read_optional(inputs.generated_manifest and root / inputs.generated_manifest), runs, root,
        _section(inputs.pretrain_config and root / inputs.pretrain_config).get("init_from"))
    (out_dir / "results.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    (out_dir / "release.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    (out_dir / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False, allow_unicode=True))
    (out_dir / "README.md").write_text(model_card(card_inputs), encoding="utf-8")
    (out_dir / "DATA_CARD.md").write_text(data_card(card_inputs), encoding="utf-8")
    # DVC adds /models here after the stage; written now, so that the checksums cover it.
    (out_dir / ".gitignore").write_text("/models\n")
    sums = write_checksums(out_dir)
    summary = {"release": cfg.name, "files": len(sums.read_text().splitlines()),
               "parameters": parameter_count(model),
               "runs_matched": sum(1 for r in runs.values() if r and r["matched"] == "outputs"),
               "runs_by_time": sum(1 for r in runs.values() if r and r["matched"] == "time")}
    log.summary(summary)
    return summary


# -- dasi release verify ----------------------------------------------------------------------
def check_checksums(release_dir: Path) -> list[str]:
    """Every file listed in SHA256SUMS is there with that hash, and every file is listed."""
    sums = release_dir / "SHA256SUMS"
    if not sums.is_file():
        return ["SHA256SUMS: missing"]
    problems, listed = [], set()
    for n, line in enumerate(sums.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        m = _SUM_LINE.match(line)
        if not m:
            problems.append(f"SHA256SUMS line {n}: not '<sha256>  <path>': {line[:80]!r}")
            continue
        digest, rel = m.groups()
        if rel in listed:
            problems.append(f"SHA256SUMS line {n}: {rel} listed twice")
        listed.add(rel)
        path = release_dir / rel
        if not path.is_file():
            problems.append(f"{rel}: listed in SHA256SUMS but missing")
        elif (have := sha256_file(path)) != digest:
            problems.append(f"{rel}: sha256 {have[:16]}… differs from SHA256SUMS ({digest[:16]}…)")
    for path in sorted(p for p in release_dir.rglob("*") if p.is_file() and p != sums):
        if path.relative_to(release_dir).as_posix() not in listed:
            problems.append(f"{path.relative_to(release_dir).as_posix()}: not listed in SHA256SUMS")
    return problems


def _load(path: Path, parse: Any) -> tuple[Any, list[str]]:
    try:
        return parse(path.read_text(encoding="utf-8")), []
    except FileNotFoundError:
        return None, [f"{path.name}: missing"]
    except (ValueError, yaml.YAMLError, UnicodeDecodeError) as e:
        return None, [f"{path.name}: unreadable: {' '.join(str(e).split())[:200]}"]


def check_lock(lock: Any) -> list[str]:
    """The lock is one consistent state: each stage read the outputs of the stages before it as
    those wrote them (a stale snapshot fails here), and it holds the release's entry."""
    stages = lock.get("stages") if isinstance(lock, dict) else None
    if not isinstance(stages, dict):
        return ["dvc.lock: no stages"]
    made = {o["path"]: (s, o.get("md5")) for s, e in stages.items() for o in e.get("outs", [])}
    problems = [] if "release" in stages else ["dvc.lock: no release entry"]
    for stage, entry in stages.items():
        for dep in entry.get("deps", []):
            if dep["path"] in made and made[dep["path"]][1] != dep.get("md5"):
                producer, md5 = made[dep["path"]]
                problems.append(f"dvc.lock: {stage} read {dep['path']} with md5 {dep.get('md5')}, "
                                f"{producer} wrote {md5}")
    return problems


def check_sources(release_dir: Path, sources: dict[str, str], lock: dict[str, Any]) -> list[str]:
    """Each released model folder and metrics file hashes, as DVC hashes, to the output of the
    stage that made it and to what the release read."""
    stages = lock.get("stages", {})
    made = {o["path"]: (s, o.get("md5")) for s, e in stages.items() if s != "release"
            for o in e.get("outs", [])}
    read = {d["path"]: d.get("md5") for d in stages.get("release", {}).get("deps", [])}
    problems = []
    for rel, src in sources.items():
        path = release_dir / rel
        if not path.exists():
            problems.append(f"{rel}: missing (release.json names it)")
            continue
        md5 = dvc_hash(path)["md5"]
        if src not in made:
            problems.append(f"{rel}: dvc.lock has no stage that outputs {src}")
        elif made[src][1] != md5:
            stage, want = made[src]
            problems.append(f"{rel}: md5 {md5} differs from {src} in dvc.lock ({stage}: {want})")
        if read.get(src) is None:
            problems.append(f"{rel}: dvc.lock's release entry does not list {src}")
    return problems


def check_results(release_dir: Path, sources: dict[str, str]) -> list[str]:
    """results.json is the metrics files, each under its name."""
    results, problems = _load(release_dir / "results.json", json.loads)
    if results is None:
        return problems
    for rel in sources:
        if rel.startswith("metrics/") and (release_dir / rel).is_file():
            stem = Path(rel).stem
            try:
                same = json.loads((release_dir / rel).read_text(encoding="utf-8")) == results.get(stem)
            except (ValueError, UnicodeDecodeError):
                same = False
            if not same:
                problems.append(f"results.json: {stem} differs from {rel}")
    return problems


def check_models(release_dir: Path) -> list[str]:
    """Every Hugging Face folder under models/ loads and gives finite logits for a few tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the output is the problems, one line each
    hf_logging.disable_progress_bar()
    problems = []
    for folder in sorted(p.parent for p in (release_dir / "models").glob("*/config.json")):
        rel = folder.relative_to(release_dir).as_posix()
        try:
            model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
            if (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file():
                tok = AutoTokenizer.from_pretrained(str(folder))
                ids = tok("안녕하세요. Hello!", return_tensors="pt").input_ids
            else:
                ids = torch.arange(1, 9).unsqueeze(0)
            with torch.no_grad():
                logits = model(input_ids=ids).logits
            if logits.shape[:2] != ids.shape or not torch.isfinite(logits).all():
                problems.append(f"{rel}: forward pass gave logits of shape {tuple(logits.shape)}, "
                                f"finite: {bool(torch.isfinite(logits).all())}")
        except Exception as e:  # noqa: BLE001 - any failure to load is the finding
            problems.append(f"{rel}: does not load: {type(e).__name__}: {' '.join(str(e).split())[:200]}")
    return problems


def verify(release_dir: Path, load_models: bool = True) -> list[str]:
    """Every problem with a release folder, one line each; empty when it is intact."""
    release_dir = Path(release_dir)
    if not release_dir.is_dir():
        return [f"{release_dir}: not a folder"]
    problems = check_checksums(release_dir)
    manifest, bad = _load(release_dir / "release.json", json.loads)
    lock, bad_lock = _load(release_dir / "dvc.lock", yaml.safe_load)
    problems += bad + bad_lock
    sources = manifest.get("sources") if isinstance(manifest, dict) else None
    if manifest is not None and not isinstance(sources, dict):
        problems.append("release.json: no sources")
    sources = sources if isinstance(sources, dict) else {}
    if lock is not None:
        try:
            problems += check_lock(lock) + check_sources(release_dir, sources, lock)
        except (AttributeError, KeyError, TypeError) as e:  # parsed, but not DVC's lock layout
            problems.append(f"dvc.lock: not a DVC lock file ({type(e).__name__}: {e})")
    problems += check_results(release_dir, sources)
    if load_models:
        problems += check_models(release_dir)
    return problems
