"""Stage ``generate``: every request answered by its teacher on vLLM, fanned out over tasks.

Layout of the output folder::

    <out>/<teacher>/shard-00000.parquet ...   shard k = requests [k*shard_size, (k+1)*shard_size)
    <out>/_state.json                         fingerprint of what shapes the content
    <out>/_manifest.json, <out>/README.md     written last: counts, hashes, the dataset card

Fan-out runs on datatrove's executors: ``LocalPipelineExecutor`` (local processes) or
``SlurmPipelineExecutor`` (one array job per teacher, each task one vLLM replica of TP x PP GPUs).
Task ``r`` of ``n`` takes the unfinished shards ``r, r+n, ...``; the shard, not the task, is the
unit of output and resume, so the number of tasks, the batch size and TP/PP only change speed
and are not part of the fingerprint. A task keeps vLLM full across shard boundaries with at
most ``INFLIGHT_SHARDS`` shards in flight, writes each shard atomically when its last request
finishes, and holds no more than those shards in memory; a kill loses only them.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow.parquet as pq
from pydantic import Field, PositiveInt

from dasi.atomic import write_json
from dasi.config import ConfigError
from dasi.formats import check_format, format_tag, write_parquet
from dasi.provenance import sha256_file
from dasi.resume import fingerprint
from dasi.strict import StrictModel
from data_gen.engines.base import Completion, Engine, encode_request
from data_gen.engines.vllm_engine import ServingConfig
from data_gen.plan import PlanConfig
from data_gen.teacher import read_manifest

STATE_FILE = "_state.json"
MANIFEST_FILE = "_manifest.json"
CARD_FILE = "README.md"
INFLIGHT_SHARDS = 2
ENGINE = "vllm"


class SamplingConfig(StrictModel):
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.9, gt=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0)
    max_new_tokens: PositiveInt = Field(256, description="default; a template may set its own")
    seed: int = Field(0, description="base of every request's seed (derived from its id)")


class GenerateSlurmConfig(StrictModel):
    partition: str
    time: str = "24:00:00"
    cpus_per_task: PositiveInt = 16
    mem_per_cpu_gb: PositiveInt = 8
    qos: str | None = None
    env_command: str = "source .venv/bin/activate"
    sbatch_args: dict[str, str] = Field(default_factory=dict)
    poll_seconds: PositiveInt = 60


class GenerateConfig(StrictModel):
    sampling: SamplingConfig = SamplingConfig()
    shard_size: PositiveInt = Field(1024, description="requests per output file: the resume unit")
    # Speed only (not in the fingerprint):
    max_num_seqs: PositiveInt = Field(256, description="vLLM's batch: sequences decoded together")
    tasks: PositiveInt = Field(1, description="independent tasks (vLLM replicas) per teacher")
    workers: PositiveInt = Field(1, description="tasks running at once (local) / array throttle (slurm)")
    serving: dict[str, ServingConfig] = Field(default_factory=dict, description="per teacher name")
    slurm: GenerateSlurmConfig | None = None
    plan: PlanConfig | None = Field(None, description="the scale plan (dasi plan generate)")

    def serving_for(self, teacher: str) -> ServingConfig:
        return self.serving.get(teacher, ServingConfig())


class FingerprintMismatch(RuntimeError):
    """Finished work in the output folder was made from other inputs."""


# -- planning ------------------------------------------------------------------------------

def request_seed(base: int, request_id: str) -> int:
    """Each request's seed depends only on its id: not on batch, shard or task layout."""
    digest = hashlib.sha256(f"{base}/{request_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def sampling_for(cfg: SamplingConfig, request: dict) -> dict:
    """The exact sampling parameters of one request, as recorded with its output."""
    return {
        "temperature": cfg.temperature, "top_p": cfg.top_p,
        "repetition_penalty": cfg.repetition_penalty,
        "max_new_tokens": request["max_new_tokens"] or cfg.max_new_tokens,
        "stop": list(request["stop"] or []), "seed": request_seed(cfg.seed, request["request_id"]),
    }


@dataclass(frozen=True)
class TeacherWork:
    name: str
    folder: Path
    manifest: dict
    rows: list[int]         # row indices of the requests file, in order
    shards: int


def plan(requests_file: Path, teachers_dir: Path, shard_size: int) -> list[TeacherWork]:
    table = pq.read_table(requests_file, columns=["teacher"])
    names = table.column("teacher").to_pylist()
    work = []
    for name in dict.fromkeys(names):
        rows = [i for i, n in enumerate(names) if n == name]
        folder = Path(teachers_dir) / name
        work.append(TeacherWork(name, folder, read_manifest(folder), rows, -(-len(rows) // shard_size)))
    return work


def fingerprint_parts(cfg: GenerateConfig, requests_file: Path, work: list[TeacherWork],
                      engine_version: str) -> dict:
    return {
        "requests_sha256": sha256_file(requests_file),
        "teachers": {w.name: {"revision": w.manifest["revision"], "weights_hash": w.manifest["weights_hash"]}
                     for w in work},
        "sampling": cfg.sampling.model_dump(mode="json"),
        "shard_size": cfg.shard_size,
        "format": format_tag("generated"),
        "engine": engine_version,
    }


def read_rows(parquet: pq.ParquetFile, rows: list[int]) -> list[dict]:
    """Rows by index, reading only the row groups that hold them (seeds writes small groups)."""
    meta = parquet.metadata
    sizes = (meta.row_group(g).num_rows for g in range(meta.num_row_groups))
    starts = list(itertools.accumulate(sizes, initial=0))
    group_of = [bisect.bisect_right(starts, r) - 1 for r in rows]
    groups = sorted(set(group_of))
    base = dict(zip(groups, itertools.accumulate((starts[g + 1] - starts[g] for g in groups), initial=0),
                    strict=False))
    table = parquet.read_row_groups(groups)
    return table.take([base[g] + r - starts[g] for r, g in zip(rows, group_of, strict=True)]).to_pylist()


def shard_path(out_dir: Path, teacher: str, k: int) -> Path:
    return Path(out_dir) / teacher / f"shard-{k:05d}.parquet"


def check_state(out_dir: Path, parts: dict, restart: bool, log) -> None:
    """Refuse to mix work of two fingerprints; never delete finished work unless told to."""
    state_file = out_dir / STATE_FILE
    fp = fingerprint(parts)
    if out_dir.exists() and restart:
        log.event("restart", path=str(out_dir), deleted_shards=len(list(out_dir.glob("*/shard-*.parquet"))))
        shutil.rmtree(out_dir)
    if out_dir.exists():
        old = json.loads(state_file.read_text()) if state_file.exists() else {}
        shards = list(out_dir.glob("*/shard-*.parquet"))
        if old.get("fingerprint") != fp and shards:
            changed = sorted(k for k in parts if old.get("parts", {}).get(k) != parts[k])
            raise FingerprintMismatch(
                f"{out_dir} holds {len(shards)} finished shards made from other inputs "
                f"(changed: {', '.join(changed) or 'unknown'}); nothing was deleted. To start over: "
                f"dasi generate --restart (deletes them), or move the folder away")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(state_file, {"fingerprint": fp, "parts": parts, "complete": False})


def shard_done(path: Path, expected_ids: list[str]) -> bool:
    """A shard counts as done only if it is a readable file with exactly the expected requests.
    Shards are written atomically, so anything else is damage: say so instead of redoing it."""
    if not path.exists():
        return False
    try:
        ids = pq.read_table(path, columns=["request_id"]).column("request_id").to_pylist()
    except Exception as e:
        raise RuntimeError(f"{path}: unreadable shard ({e}); delete it to regenerate it") from e
    if ids != expected_ids:
        raise RuntimeError(f"{path}: holds other requests than planned; delete it to regenerate it")
    return True


# -- one task ------------------------------------------------------------------------------

def record(req: dict, comp: Completion, sampling: dict, teacher: dict, engine: Engine,
           task: int, shard: int) -> dict:
    return {
        "request_id": req["request_id"], "purpose": req["purpose"], "lang": req["lang"],
        "style": req["style"], "text": (req["head"] or "") + comp.text, "completion": comp.text,
        "template_id": req["template_id"], "template_version": req["template_version"],
        "template_hash": req["template_hash"], "seed_doc_id": req["seed_doc_id"],
        "instruction": req["instruction"], "teacher": teacher["name"], "teacher_id": teacher["id"],
        "teacher_revision": teacher["revision"], "teacher_weights_hash": teacher["weights_hash"],
        "engine": engine.name, "engine_version": engine.version,
        "sampling": json.dumps(sampling, sort_keys=True, ensure_ascii=False), "seed": sampling["seed"],
        "prompt_tokens": comp.prompt_tokens, "completion_tokens": comp.completion_tokens,
        "finish_reason": comp.finish_reason, "stop_reason": comp.stop_reason, "task": task, "shard": shard,
    }


def generate_shards(engine: Engine, tokenizer, shards: Iterable[tuple[int, list[dict]]], cfg: GenerateConfig,
                    teacher: dict, out_dir: Path, task: int, stats_dir: Path, progress=None) -> None:
    """Run ``shards`` (index, requests) through ``engine``, keeping at most INFLIGHT_SHARDS
    admitted; write each shard the moment its last request finishes, and its timing to
    ``stats_dir`` (kept out of the shard so that shards are bit-identical across runs)."""
    pending = iter(shards)
    inflight: dict[int, dict] = {}
    where: dict[str, tuple[int, int]] = {}
    exhausted = False
    while not exhausted or inflight:
        while not exhausted and len(inflight) < INFLIGHT_SHARDS:
            nxt = next(pending, None)
            if nxt is None:
                exhausted = True
                break
            k, reqs = nxt
            sampling = [sampling_for(cfg.sampling, req) for req in reqs]
            inflight[k] = {"reqs": reqs, "sampling": sampling, "out": [None] * len(reqs), "left": len(reqs),
                           "t0": time.time()}
            for pos, req in enumerate(reqs):
                where[req["request_id"]] = (k, pos)
                engine.add(req["request_id"], encode_request(tokenizer, req), sampling[pos])
        for rid, comp in engine.step():
            k, pos = where.pop(rid)
            shard = inflight[k]
            shard["out"][pos] = record(shard["reqs"][pos], comp, shard["sampling"][pos], teacher, engine,
                                       task, k)
            shard["left"] -= 1
            if progress is not None:
                progress.update(1)
            if shard["left"] == 0:
                stats = {"task": task, "seconds": round(time.time() - shard["t0"], 3),
                         "completion_tokens": sum(r["completion_tokens"] for r in shard["out"])}
                write_parquet(shard_path(out_dir, teacher["name"], k), shard["out"], "generated")
                write_json(stats_path(stats_dir, k), stats)
                del inflight[k]
        if inflight and not engine.has_unfinished():
            raise RuntimeError(f"generate: the engine finished with {len(where)} requests unanswered")


class GenerationTask:
    """The pipeline datatrove runs for each task: one vLLM replica over its share of shards.
    Picklable (datatrove's Slurm executor ships it to the array tasks with dill)."""

    def __init__(self, cfg: GenerateConfig, requests_file: Path, teacher: TeacherWork, out_dir: Path,
                 todo: list[int], stats_dir: Path) -> None:
        self.cfg, self.requests_file, self.teacher = cfg, Path(requests_file).resolve(), teacher
        self.out_dir, self.todo, self.stats_dir = Path(out_dir).resolve(), todo, Path(stats_dir).resolve()

    def __call__(self, data, rank: int = 0, world_size: int = 1):
        from tqdm import tqdm

        from data_gen.engines.vllm_engine import VLLMEngine

        mine = self.todo[rank::world_size]
        if not mine:
            return
        requests = pq.ParquetFile(self.requests_file)
        size = self.cfg.shard_size

        def shards():  # read lazily: only the shards in flight are in memory
            for k in mine:
                yield k, read_rows(requests, self.teacher.rows[k * size: (k + 1) * size])

        engine = VLLMEngine(self.teacher.folder, self.teacher.manifest["dtype"],
                            self.cfg.serving_for(self.teacher.name), self.cfg.max_num_seqs)
        n = sum(min(size, len(self.teacher.rows) - k * size) for k in mine)
        with tqdm(total=n, desc=f"generate {self.teacher.name} task {rank}", unit="req") as bar:
            generate_shards(engine, engine.tokenizer, shards(), self.cfg,
                            self.teacher.manifest, self.out_dir, rank, self.stats_dir, bar)
        del engine
        return
        yield  # a generator step in datatrove's pipeline


# -- launching -----------------------------------------------------------------------------

Launcher = Literal["local", "slurm"]


def datatrove_dir(logs_dir: str, fp: str, teacher: str) -> Path:
    """Where datatrove keeps its task logs, stats and (on Slurm) scripts: a path that depends only
    on the work, so a dry run prints exactly the script a run submits."""
    return Path(logs_dir) / "datatrove" / f"generate-{fp[:12]}" / teacher


def check_slurm_section(cfg: GenerateConfig, launcher: str) -> None:
    if launcher == "slurm" and cfg.slurm is None:
        raise ConfigError("generate.slurm: needed for launcher slurm (partition, time, ...)")


def executor_for(cfg: GenerateConfig, launcher: Launcher, task: GenerationTask, tasks: int,
                 logging_dir: Path):
    if launcher == "local":
        from datatrove.executor import LocalPipelineExecutor

        return LocalPipelineExecutor(pipeline=[task], tasks=tasks, workers=min(cfg.workers, tasks),
                                     logging_dir=str(logging_dir), skip_completed=False)
    check_slurm_section(cfg, launcher)
    from datatrove.executor import SlurmPipelineExecutor

    serving = cfg.serving_for(task.teacher.name)
    s = cfg.slurm
    return SlurmPipelineExecutor(
        pipeline=[task], tasks=tasks, workers=cfg.workers if cfg.workers < tasks else -1,
        time=s.time, partition=s.partition, cpus_per_task=s.cpus_per_task, mem_per_cpu_gb=s.mem_per_cpu_gb,
        gpus_per_task=serving.tensor_parallel_size * serving.pipeline_parallel_size,
        job_name=f"dasi-generate-{task.teacher.name}", qos=s.qos, env_command=s.env_command,
        sbatch_args=s.sbatch_args, logging_dir=str(logging_dir.resolve()), skip_completed=False,
        mail_type="NONE", requeue=True)


def slurm_script(executor, tasks: int) -> str:
    """The array script datatrove's executor submits (what ``launch_job`` writes), built
    without submitting or writing anything."""
    logs = Path(executor.slurm_logs_folder)
    existing = next(p for p in [logs, *logs.parents] if p.exists())
    try:
        args = executor.get_sbatch_args(tasks)  # (creates the Slurm log folder)
    finally:
        for folder in [logs, *logs.parents]:  # remove what that created, nothing else
            if folder == existing or any(folder.iterdir()):
                break
            folder.rmdir()
    pik = executor.logging_dir.resolve_paths("executor.pik")
    return executor.get_launch_file_contents(args, f"srun -l -n {executor.nodes_per_task} "
                                                   f"launch_pickled_pipeline {pik}")


def wait_for_slurm(job_id: str, poll: int) -> None:
    """Block until the array leaves the queue (DVC expects the stage's outputs when it returns)."""
    while subprocess.run(["squeue", "-h", "-j", str(job_id)], capture_output=True, text=True).stdout.strip():
        time.sleep(poll)


# -- the stage -----------------------------------------------------------------------------

def todo_shards(out_dir: Path, w: TeacherWork, ids: list[str], shard_size: int) -> list[int]:
    """Shards of ``w`` not yet written (``ids``: the request ids of the requests file)."""
    todo = []
    for k in range(w.shards):
        expected = [ids[i] for i in w.rows[k * shard_size: (k + 1) * shard_size]]
        if not shard_done(shard_path(out_dir, w.name, k), expected):
            todo.append(k)
    return todo


def run(cfg: GenerateConfig, requests_file: Path, teachers_dir: Path, out_dir: Path, log,
        launcher: Launcher = "local", logs_dir: str = "logs", restart: bool = False,
        dry_run: bool = False) -> dict:
    from data_gen.engines.vllm_engine import vllm_distribution

    out_dir = Path(out_dir)
    check_format(requests_file, "requests")  # refuses another format before any work
    work = plan(requests_file, teachers_dir, cfg.shard_size)
    dist, version = vllm_distribution()
    parts = fingerprint_parts(cfg, requests_file, work, f"{ENGINE}:{dist}=={version}")
    fp = fingerprint(parts)
    if dry_run:
        scripts = []
        for w in work:
            ddir = datatrove_dir(logs_dir, fp, w.name)
            task = GenerationTask(cfg, requests_file, w, out_dir, list(range(w.shards)), ddir / "shards")
            tasks = min(cfg.tasks, w.shards)
            ex = executor_for(cfg, launcher, task, tasks, ddir)
            scripts.append(slurm_script(ex, tasks) if launcher == "slurm" else
                           f"# {w.name}: LocalPipelineExecutor(tasks={tasks}, workers={ex.workers}), "
                           f"{w.shards} shards of {cfg.shard_size} requests")
        return {"dry_run": "\n".join(scripts)}
    check_state(out_dir, parts, restart, log)
    ids = pq.read_table(requests_file, columns=["request_id"]).column("request_id").to_pylist()
    for w in work:
        todo = todo_shards(out_dir, w, ids, cfg.shard_size)
        if len(todo) < w.shards:
            log.event("resume", teacher=w.name, shards_done=w.shards - len(todo), shards_total=w.shards)
        if not todo:
            continue
        tasks = min(cfg.tasks, len(todo))
        ddir = datatrove_dir(logs_dir, fp, w.name)
        task = GenerationTask(cfg, requests_file, w, out_dir, todo, ddir / "shards")
        ex = executor_for(cfg, launcher, task, tasks, ddir)
        log.event("launch", teacher=w.name, launcher=launcher, tasks=tasks, shards=len(todo),
                  datatrove_logs=str(ddir))
        t0 = time.time()
        ex.run()
        if launcher == "slurm":
            wait_for_slurm(ex.job_id, cfg.slurm.poll_seconds)
        missing = todo_shards(out_dir, w, ids, cfg.shard_size)
        if missing:
            raise RuntimeError(f"generate: {len(missing)} shards of {w.name} were not written "
                               f"(see {ddir})")
        log_shards(log, ddir / "shards", w, todo, time.time() - t0)
    manifest = write_manifest(out_dir, work, parts)
    write_card(out_dir, manifest)
    by_lang = manifest["records_by"]["purpose_lang"]
    summary = {"records": manifest["records"], "completion_tokens": manifest["completion_tokens"],
               **{f"records_{k.replace('/', '_')}": v for k, v in by_lang.items()},
               **{f"finish_{k}": v for k, v in manifest["records_by"]["finish_reason"].items()}}
    write_json(out_dir / STATE_FILE, {"fingerprint": fp, "parts": parts, "complete": True})
    log.summary(summary)
    return summary


def stats_path(stats_dir: Path, k: int) -> Path:
    return Path(stats_dir) / f"shard-{k:05d}.json"


def log_shards(log, stats_dir: Path, w: TeacherWork, shards: list[int], seconds: float) -> None:
    tokens = 0
    for k in shards:
        stats = json.loads(stats_path(stats_dir, k).read_text())
        made, took = stats["completion_tokens"], stats["seconds"]
        tokens += made
        log.log({f"{w.name}/shard_seconds": took, f"{w.name}/shard_tokens": made,
                 f"{w.name}/shard_tokens_per_s": made / max(took, 1e-9)}, step=k)
    log.event("teacher_done", teacher=w.name, shards=len(shards), completion_tokens=tokens,
              seconds=round(seconds, 2), tokens_per_s=round(tokens / max(seconds, 1e-9), 2))


# -- manifest and dataset card -------------------------------------------------------------

COUNT_COLUMNS = ["purpose", "lang", "template_id", "teacher", "finish_reason", "prompt_tokens",
                 "completion_tokens"]


def write_manifest(out_dir: Path, work: list[TeacherWork], parts: dict) -> dict:
    """Counts and hashes, read shard by shard (never the whole set in memory)."""
    shards, by = [], {k: Counter() for k in ("purpose_lang", "template", "teacher", "finish_reason")}
    tokens = Counter()
    for w in work:
        for k in range(w.shards):
            path = shard_path(out_dir, w.name, k)
            t = pq.read_table(path, columns=COUNT_COLUMNS).to_pylist()
            shards.append({"file": path.relative_to(out_dir).as_posix(), "rows": len(t),
                           "sha256": sha256_file(path)})
            for r in t:
                by["purpose_lang"][f"{r['purpose']}/{r['lang']}"] += 1
                by["template"][r["template_id"]] += 1
                by["teacher"][r["teacher"]] += 1
                by["finish_reason"][r["finish_reason"]] += 1
                tokens[f"{r['purpose']}/{r['lang']}"] += r["completion_tokens"]
                tokens["prompt"] += r["prompt_tokens"]
    manifest = {
        "format": "generated-manifest/2", "fingerprint": fingerprint(parts), "inputs": parts,
        "shards": shards, "records": sum(s["rows"] for s in shards),
        "completion_tokens": sum(v for k, v in tokens.items() if k != "prompt"),
        "prompt_tokens": tokens["prompt"],
        "records_by": {k: dict(sorted(v.items())) for k, v in by.items()},
        "completion_tokens_by": {k: v for k, v in sorted(tokens.items()) if k != "prompt"},
        "teachers": {w.name: {k: w.manifest[k] for k in ("id", "kind", "revision", "license", "license_file",
                                                         "output_terms", "weights_hash")} for w in work},
    }
    write_json(out_dir / MANIFEST_FILE, manifest)
    return manifest


def write_card(out_dir: Path, m: dict) -> None:
    """The dataset card, written from the manifest (nothing canned)."""
    lines = ["# Synthetic data generated by dasi", "",
             f"{m['records']} records, {m['completion_tokens']:,} completion tokens "
             f"({m['prompt_tokens']:,} prompt tokens), in {len(m['shards'])} shards. "
             f"Fingerprint `{m['fingerprint'][:16]}`.", "",
             "| purpose/lang | records | completion tokens |", "|---|---:|---:|"]
    for k, n in m["records_by"]["purpose_lang"].items():
        lines.append(f"| {k} | {n} | {m['completion_tokens_by'].get(k, 0):,} |")
    lines += ["", "| template | records |", "|---|---:|"]
    lines += [f"| {k} | {n} |" for k, n in m["records_by"]["template"].items()]
    lines += ["", "| finish reason | records |", "|---|---:|"]
    lines += [f"| {k} | {n} |" for k, n in m["records_by"]["finish_reason"].items()]
    lines += ["", "## Teachers and the terms of their outputs", "",
              "| teacher | model | kind | revision | records | license |", "|---|---|---|---|---:|---|"]
    for name, t in m["teachers"].items():
        lic = t["license"] + (f" (`{t['license_file']}` in the teacher folder)" if t["license_file"] else "")
        lines.append(f"| {name} | {t['id']} | {t['kind']} | {t['revision']} | "
                     f"{m['records_by']['teacher'].get(name, 0)} | {lic} |")
    lines += ["", "What each teacher's terms say about its outputs and about models trained on them:", ""]
    lines += [f"- **{name}**: {t['output_terms']}" for name, t in m["teachers"].items()]
    lines += ["", "Every record carries its teacher, revision, weights hash, engine version, template id and "
              "hash, sampling parameters, seed, token counts and finish reason (schema `generated/2`).", ""]
    (out_dir / CARD_FILE).write_text("\n".join(lines), encoding="utf-8")
