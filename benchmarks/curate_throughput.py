"""The curate stage against a plain datatrove pipeline with the same filters and thresholds, on the
same input; plus curate's peak memory at 1x and ``--scale``x the input.

    python benchmarks/curate_throughput.py [--mb 4] [--scale 10] [--workers 2] [--repeat 1]
                                           [--params params.yaml] [--profiles configs]

**Input.** Real text, recombined: the lines of konlpy's kolaw and kobill (Korean), every pydoc
reference topic (English) and the stdlib's top-level modules (code). A document is a run of
windows of consecutive lines, each window from a random place of its language's line pool, until
a random length of 500 to 4000 characters (seeded); languages are drawn with the tiny profile's
blend (ko 0.35, en 0.28, code 0.37). So the text is real line by line, and documents rarely share
a long span: exact and MinHash dedup remove what they would find in real data, not 90% copies
(the output says how many each removed). It is written as a seeds ``documents`` file (row groups
of ``--row-group`` documents; curate's reader deals row groups to tasks) with an empty generated
folder, and for the baseline as one plain Parquet file per row group (datatrove's ParquetReader
deals files to tasks): task ``r`` of either reads the same documents in the same order.

**Ours** is ``data_gen.curate.run`` with the profile's ``curate`` section (``--params``), tasks =
workers = ``--workers``, no evaluation tasks: its seven passes (filter, exact-find, minhash-sig,
minhash-buckets, minhash-cluster, decontam-index, final), input sha256 for the fingerprint,
per-source stats, held-out split, decontamination against the held-out documents, manifest.

**Baseline** is what a user writes with datatrove's stock steps, on LocalPipelineExecutor with the
same tasks, workers and start method, thresholds read from the same CurateConfig:
  pass 1 (T tasks): ParquetReader -> LambdaFilter(min chars) -> LambdaFilter(max chars) ->
    our LanguageIDFilter (datatrove's LanguageFilter refuses to be built without the ``fasteners``
    and ``fasttext-numpy2-wheel`` distributions, which lock and load its lid.176.bin download;
    neither is installed, fasttext-predict is, and the project does not download the model) ->
    LambdaFilter(Hangul ratio of ko documents) -> datatrove's own GopherQualityFilter,
    GopherRepetitionFilter, FineWebQualityFilter per language with the profile's arguments (one
    word tokenizer per language shared by the three, as ours; ``stock_quality_filters``: ours
    hashes the repetition filter's n-gram checks, same decisions) -> our SpamFilter (datatrove has no
    spam list) -> our KoreanPII formatter (datatrove's PIIFormatter does emails and IPs only) ->
    ParquetWriter(filtered) -> ExactDedupSignature;
  ExactFindDedups (1 task); ParquetReader(filtered) -> ExactDedupFilter -> MinhashDedupSignature
  (T); MinhashDedupBuckets (num_buckets tasks); MinhashDedupCluster (1);
  ParquetReader(filtered) -> ExactDedupFilter -> MinhashDedupFilter -> ParquetWriter (T).
A filter that applies to one language is wrapped as ``LambdaFilter(lang != X or f.filter(doc))``,
datatrove having no per-language routing. Both sides use the exact-dedup and MinHash configs of
curate (normalized text, sha1 64-bit hashes: datatrove's default xxhash path fails on str with
xxhash >= 4) and the whitespace word tokenizer for English and MinHash (datatrove's English one
needs spaCy, not installed), and kiwi with kiwipiepy_model's ``cong`` for Korean (the baseline:
datatrove's KiwiTokenizer(model_type="cong"), as it asks for ``sbg`` by default, which no longer
ships). Ours does more than the baseline: the
held-out split, decontamination (its index pass and filter), per-source stats, fingerprint.

**Measures.** Each run is a fresh process. Wall time is start to exit. CPU time is user + system
of the process and every descendant: this process makes itself a child subreaper, so worker and
forkserver processes orphaned at exit are reparented to it and reaped, and
``getrusage(RUSAGE_CHILDREN)`` then covers them all. MB/s per core is input text (UTF-8 MB,
10^6 bytes) / wall seconds / workers (``*_mb_s_per_core``) and input MB / CPU seconds
(``*_mb_per_cpu_s``); ``ratio`` is ours / baseline of the first (the same workers, so the wall
ratio), ``cpu_ratio`` of the second. Memory is the peak over the run of the summed RSS of the
process and all its descendants, sampled every 0.1 s (``peak_rss_*``; summed PSS beside it, which
counts pages shared between forked workers once); ``rss_ratio`` = peak at ``--scale``x / peak at
1x, goal <= 1.2. The machine may be shared: the load average at start is printed.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BLEND = {"ko": 0.35, "en": 0.28, "code": 0.37}
DOC_CHARS = (500, 4000)
WINDOW_LINES = {"ko": (2, 6), "en": (2, 6), "code": (5, 30)}
PERTURB_EVERY = 5


# -- the input -----------------------------------------------------------------------------------

def line_pools() -> dict[str, list[str]]:
    """Non-empty lines of each language's real texts (whole files: no chunking)."""
    from data_gen.sources import KonlpySource, PydocTopicsSource, StdlibSource, iter_documents

    whole = 10**9
    sources = [KonlpySource(name=c, type="konlpy", corpus=c, lang="ko", max_chars_per_doc=whole)
               for c in ("kolaw", "kobill")] + [
        PydocTopicsSource(name="pydoc", type="pydoc_topics", lang="en", max_chars_per_doc=whole),
        StdlibSource(name="pystdlib", type="python_stdlib", lang="code", include=["*.py"],
                     max_chars_per_doc=whole)]
    pools: dict[str, list[str]] = {lang: [] for lang in BLEND}
    for src in sources:
        for doc in iter_documents(src):
            pools[src.lang] += [ln.rstrip() for ln in doc["text"].splitlines() if ln.strip()]
    return pools


def vocabularies(pools: dict[str, list[str]]) -> dict[str, list[str]]:
    return {lang: sorted({w for ln in lines for w in ln.split()}) for lang, lines in pools.items()}


def perturbed(lines: list[str], vocab: list[str], rng: random.Random) -> str:
    """Every PERTURB_EVERY-th word (from a random offset) swapped for a random word of the same
    language: recombined documents then share no 13-word span, which decontamination would take
    for a leak from the held-out split (the Korean pool is ~50k characters, reused at every size)."""
    k, out = rng.randrange(PERTURB_EVERY), []
    for line in lines:
        tokens = line.split(" ")
        for j, tok in enumerate(tokens):
            if tok:
                k = (k + 1) % PERTURB_EVERY
                if k == 0:
                    tokens[j] = rng.choice(vocab)
        out.append(" ".join(tokens))
    return "\n".join(out)


def recombined_docs(pools: dict[str, list[str]], n_bytes: int, seed: int) -> Iterator[dict]:
    """Seed ``documents`` rows of windows of real lines, until ``n_bytes`` of UTF-8 text."""
    rng, vocab = random.Random(seed), vocabularies(pools)
    langs, weights = list(BLEND), list(BLEND.values())
    total, i = 0, 0
    while total < n_bytes:
        lang = rng.choices(langs, weights)[0]
        pool, (lo, hi) = pools[lang], WINDOW_LINES[lang]
        target, lines = rng.randint(*DOC_CHARS), []
        while sum(map(len, lines)) < target:
            start = rng.randrange(len(pool))
            lines += pool[start: start + rng.randint(lo, hi)]
        text = perturbed(lines, vocab[lang], rng)
        yield {"doc_id": f"bench-{i:09d}", "source": f"bench_{lang}", "lang": lang, "text": text,
               "n_chars": len(text), "origin": "benchmarks/curate_throughput.py", "license": "mixed"}
        total += len(text.encode("utf-8"))
        i += 1


def write_input(root: Path, pools: dict[str, list[str]], n_bytes: int, seed: int, row_group: int,
                plain: bool) -> dict:
    """``root/documents.parquet`` (seeds format), ``root/generated`` (empty, with its manifest) and,
    if ``plain``, ``root/plain/NNNNN.parquet``: one file per row group. Returns the input's size."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dasi.formats import FORMAT_KEY, SCHEMAS, format_tag

    root.mkdir(parents=True)
    (root / "generated").mkdir()
    (root / "generated" / "_manifest.json").write_text(json.dumps({"format": "generated-manifest/2",
                                                                    "shards": []}))
    schema = SCHEMAS["documents"][1].with_metadata({FORMAT_KEY: format_tag("documents").encode()})
    docs, n_text, groups = 0, 0, 0
    batch: list[dict] = []

    def flush(out: pq.ParquetWriter) -> None:
        nonlocal groups
        table = pa.Table.from_pylist(batch, schema=schema)
        out.write_table(table, row_group_size=len(batch))
        if plain:
            (root / "plain").mkdir(exist_ok=True)
            pq.write_table(table, root / "plain" / f"{groups:05d}.parquet", compression="zstd")
        groups += 1
        batch.clear()

    with pq.ParquetWriter(root / "documents.parquet", schema, compression="zstd") as out:
        for d in recombined_docs(pools, n_bytes, seed):
            batch.append(d)
            docs, n_text = docs + 1, n_text + len(d["text"].encode("utf-8"))
            if len(batch) == row_group:
                flush(out)
        if batch:
            flush(out)
    return {"documents": docs, "text_bytes": n_text, "row_groups": groups}


# -- the two pipelines (run in child processes) --------------------------------------------------

def curate_config(params: Path, profiles: Path, workers: int):
    from dasi.config import resolve_params, validate_section
    from data_gen.curate import CurateConfig

    cfg = validate_section("curate", resolve_params(params, profiles)["curate"], CurateConfig)
    return cfg.model_copy(update={"tasks": workers, "workers": workers})


class QuietLog:
    """What curate.run logs to: events and the summary go to stderr."""

    def event(self, name: str, **fields) -> None:
        print(name, fields, file=sys.stderr)

    def summary(self, fields: dict) -> None:
        print("summary", fields, file=sys.stderr)


def ours(inp: Path, out: Path, cfg) -> dict:
    from data_gen.curate import run

    stats = run(cfg, inp / "documents.parquet", inp / "generated", out / "curated", out / "curate.json",
                QuietLog())
    removed = stats["removed_documents"]
    return {"input_documents": stats["input_documents"], "kept_documents": stats["kept_documents"],
            "filtered_out": sum(n for f, n in removed.items()
                                if f not in ("duplicate", "near_duplicate", "decontaminated")),
            "exact_duplicates": removed["duplicate"], "near_duplicates": removed["near_duplicate"],
            "decontaminated": removed["decontaminated"], "removed_by_filter": removed}


def for_lang(lang: str, step) -> object:
    """A datatrove filter applied to documents of one language only; the others pass."""
    from datatrove.pipeline.filters import LambdaFilter

    return LambdaFilter(lambda doc: doc.metadata["lang"] != lang or step.filter(doc) is True)


def stock_quality_filters(lang: str, q) -> dict:
    """datatrove's own GopherQuality/GopherRepetition/FineWeb classes with curate's arguments, one
    word tokenizer per language shared by the three: datatrove's KiwiTokenizer with only the model
    name set for Korean, the whitespace one otherwise. (Curate's own filters differ: a hashed
    repetition filter, one kiwi per process; the baseline must not pick those up.)"""
    from datatrove.pipeline.filters import FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter
    from datatrove.utils.word_tokenizers import KiwiTokenizer

    from data_gen.curate.quality import KIWI_MODEL, WhitespaceWordTokenizer, quality_filter_args

    classes = {"gopher_quality": GopherQualityFilter, "gopher_repetition": GopherRepetitionFilter,
               "fineweb_quality": FineWebQualityFilter}
    language = KiwiTokenizer(model_type=KIWI_MODEL) if lang == "ko" else WhitespaceWordTokenizer()
    return {name: classes[name](**kwargs, language=language)
            for name, kwargs in quality_filter_args(q).items()}


def baseline_passes(cfg, inp: Path, work: Path) -> list[tuple[str, list, int]]:
    """(name, pipeline, tasks) of the plain datatrove pipeline described in the module doc."""
    from datatrove.pipeline.dedup import (
        ExactDedupFilter,
        ExactDedupSignature,
        ExactFindDedups,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.filters import LambdaFilter
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import ParquetWriter

    from data_gen.curate.dedup import exact_config, minhash_config
    from data_gen.curate.pipeline import resolved_spam
    from data_gen.curate.quality import WhitespaceWordTokenizer
    from data_gen.filters import hangul_ratio
    from data_gen.langid import LanguageIDFilter
    from data_gen.pii import KoreanPII
    from data_gen.spam import SpamFilter

    t, mh = cfg.tasks, minhash_config(cfg.minhash)
    exact = exact_config()
    exact.document_priority = None  # ours prefers held-out documents; the baseline has no split
    filtered, sigs, dups = work / "filtered", work / "exact" / "sigs", work / "exact" / "dups"

    def reader(folder: Path) -> ParquetReader:
        return ParquetReader(str(folder), id_key="doc_id", glob_pattern="*.parquet")

    quality = {lang: stock_quality_filters(lang, q) for lang, q in cfg.quality.items()}
    filters = [
        LambdaFilter(lambda d: len(d.text) >= cfg.min_chars),
        LambdaFilter(lambda d: len(d.text) <= cfg.max_chars),
        LanguageIDFilter(cfg.langid),
        LambdaFilter(lambda d: d.metadata["lang"] != "ko" or hangul_ratio(d.text) >= cfg.min_hangul_ratio),
        *[for_lang(lang, fs[name]) for name in ("gopher_quality", "gopher_repetition", "fineweb_quality")
          for lang, fs in quality.items() if name in fs],
        SpamFilter(resolved_spam(cfg.spam)), KoreanPII()]
    return [
        ("filter", [reader(inp / "plain"), *filters, ParquetWriter(str(filtered), adapter=plain_row),
                    ExactDedupSignature(str(sigs), exact)], t),
        ("exact-find", [ExactFindDedups(str(sigs), str(dups), exact)], 1),
        ("minhash-sig", [reader(filtered), ExactDedupFilter(str(dups), exact),
                         MinhashDedupSignature(str(work / "mh" / "sigs"), mh,
                                               language=WhitespaceWordTokenizer())], t),
        ("minhash-buckets", [MinhashDedupBuckets(str(work / "mh" / "sigs"), str(work / "mh" / "buckets"),
                                                 config=mh)], cfg.minhash.num_buckets),
        ("minhash-cluster", [MinhashDedupCluster(str(work / "mh" / "buckets"), str(work / "mh" / "remove"),
                                                 config=mh)], 1),
        ("final", [reader(filtered), ExactDedupFilter(str(dups), exact),
                   MinhashDedupFilter(str(work / "mh" / "remove")),
                   ParquetWriter(str(work / "output"), adapter=plain_row)], t),
    ]


def plain_row(writer, doc) -> dict:
    """ParquetWriter's adapter: fixed columns (the schema is taken from the first batch, and the
    LID metadata is set on ko/en documents only)."""
    m = doc.metadata
    return {"text": doc.text, "doc_id": doc.id, "source": m["source"], "lang": m["lang"]}


def parquet_rows(folder: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in sorted(folder.glob("*.parquet")))


def baseline(inp: Path, out: Path, cfg) -> dict:
    from datatrove.executor import LocalPipelineExecutor

    for name, pipeline, tasks in baseline_passes(cfg, inp, out):
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=min(cfg.workers, tasks),
                              logging_dir=str(out / "logs" / name), skip_completed=True).run()
    final = json.loads((out / "logs" / "final" / "stats.json").read_text())
    dropped = [block["stats"].get("dropped", 0) for block in final]  # ExactDedupFilter, MinhashDedupFilter
    n_input, n_filtered = parquet_rows(inp / "plain"), parquet_rows(out / "filtered")
    return {"input_documents": n_input, "kept_documents": parquet_rows(out / "output"),
            "filtered_out": n_input - n_filtered, "exact_duplicates": dropped[1],
            "near_duplicates": dropped[2]}


# -- timed runs ----------------------------------------------------------------------------------

def become_subreaper() -> None:
    """Orphaned descendants (forkserver and pool workers left at exit) are reparented to this
    process, so waiting for them adds their CPU time to RUSAGE_CHILDREN."""
    pr_set_child_subreaper = 36
    if ctypes.CDLL(None, use_errno=True).prctl(pr_set_child_subreaper, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def reap_orphans() -> None:
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def timed(cmd: list[str]) -> dict:
    """Wall and CPU seconds, peak tree RSS/PSS (MB) and the JSON result line of ``cmd``."""
    import psutil
    from process_memory import tree_memory  # benchmarks/, this script's folder

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    peak = [0, 0]
    done = threading.Event()

    def sample() -> None:
        ps = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                rss, pss = tree_memory(ps)
            except psutil.NoSuchProcess:
                return
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t
    done.set()
    sampler.join()
    reap_orphans()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[2:5])} failed:\n{err[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "peak_rss_mb": round(peak[0] / 2**20, 1),
            "peak_pss_mb": round(peak[1] / 2**20, 1), **json.loads(out.strip().splitlines()[-1])}


def child(which: str, inp: Path, out: Path, workers: int, params: Path, profiles: Path) -> dict:
    return timed([sys.executable, __file__, "--child", which, "--input", str(inp), "--out", str(out),
                  "--workers", str(workers), "--params", str(params), "--profiles", str(profiles)])


def per_core(run: dict, mb: float, workers: int) -> dict:
    return {"mb_s_per_core": round(mb / run["wall_s"] / workers, 4),
            "mb_per_cpu_s": round(mb / run["cpu_s"], 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=4.0, help="UTF-8 MB of text at 1x")
    ap.add_argument("--scale", type=int, default=10, help="the large input is this many times 1x")
    ap.add_argument("--workers", type=int, default=2, help="tasks = workers of both pipelines")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each at 1x; best wall kept")
    ap.add_argument("--row-group", type=int, default=25, help="documents per input row group / plain file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline-big", action="store_true",
                    help="also run the baseline at --scale x (ratio_big: the ratio with less startup in it)")
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--profiles", type=Path, default=REPO / "configs")
    ap.add_argument("--child", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    ap.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        cfg = curate_config(args.params, args.profiles, args.workers)
        result = (ours if args.child == "ours" else baseline)(args.input, args.out, cfg)
        print(json.dumps(result))
        return

    become_subreaper()
    load = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="dasi-bench-curate-"))
    pools = line_pools()
    inputs = {"1x": write_input(work / "in-1x", pools, int(args.mb * 1e6), args.seed, args.row_group, True),
              "big": write_input(work / "in-big", pools, int(args.mb * args.scale * 1e6), args.seed + 1,
                                 args.row_group, args.baseline_big)}
    for name, i in inputs.items():
        print(f"input {name}: {i['documents']:,} documents, {i['text_bytes'] / 1e6:.1f} MB of text, "
              f"{i['row_groups']} row groups", flush=True)
    runs: dict[str, list[dict]] = {"ours": [], "baseline": []}
    for r in range(args.repeat):
        for which in ("baseline", "ours"):
            runs[which].append(child(which, work / "in-1x", work / f"{which}-1x-{r}", args.workers,
                                     args.params, args.profiles))
            print(f"{which} 1x (run {r + 1}): {runs[which][-1]}", flush=True)
    big = child("ours", work / "in-big", work / "ours-big", args.workers, args.params, args.profiles)
    print(f"ours {args.scale}x: {big}", flush=True)
    extra = {}
    if args.baseline_big:
        base_big = child("baseline", work / "in-big", work / "baseline-big", args.workers, args.params,
                         args.profiles)
        print(f"baseline {args.scale}x: {base_big}", flush=True)
        extra = {"baseline_big": base_big, "ratio_big": round(base_big["wall_s"] / big["wall_s"], 3),
                 "cpu_ratio_big": round(base_big["cpu_s"] / big["cpu_s"], 3)}
    shutil.rmtree(work)  # inputs and outputs: ~100 MB at 10 MB of text
    best = {k: min(v, key=lambda x: x["wall_s"]) for k, v in runs.items()}
    mb = inputs["1x"]["text_bytes"] / 1e6
    o, b = per_core(best["ours"], mb, args.workers), per_core(best["baseline"], mb, args.workers)
    ratio = o["mb_s_per_core"] / b["mb_s_per_core"]
    rss_ratio = big["peak_rss_mb"] / best["ours"]["peak_rss_mb"]
    print(f"1x ({mb:.1f} MB), {args.workers} workers: ours {o['mb_s_per_core']:.3f} MB/s/core, "
          f"baseline {b['mb_s_per_core']:.3f}: ratio {ratio:.2f} (goal >= 1.0); "
          f"our peak RSS {args.scale}x / 1x = {rss_ratio:.2f} (goal <= 1.2)")
    print(json.dumps({
        "benchmark": "curate_throughput", "input_mb": round(mb, 2), "workers": args.workers,
        "cpus": os.cpu_count(), "load_average_at_start": round(load, 2), "scale": args.scale,
        "input": inputs, "ours_mb_s_per_core": o["mb_s_per_core"],
        "baseline_mb_s_per_core": b["mb_s_per_core"], "ratio": round(ratio, 3),
        "ours_mb_per_cpu_s": o["mb_per_cpu_s"], "baseline_mb_per_cpu_s": b["mb_per_cpu_s"],
        "cpu_ratio": round(o["mb_per_cpu_s"] / b["mb_per_cpu_s"], 3),
        "peak_rss_1x_mb": best["ours"]["peak_rss_mb"], "peak_rss_10x_mb": big["peak_rss_mb"],
        "rss_ratio": round(rss_ratio, 3), "peak_pss_1x_mb": best["ours"]["peak_pss_mb"],
        "peak_pss_10x_mb": big["peak_pss_mb"], "ours_1x": runs["ours"], "baseline_1x": runs["baseline"],
        "ours_big": big, **extra, "throughput_goal_met": ratio >= 1.0, "memory_goal_met": rss_ratio <= 1.2}))


if __name__ == "__main__":
    main()
