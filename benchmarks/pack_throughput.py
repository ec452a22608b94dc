"""The pack stage against Megatron-LM's ``tools/preprocess_data.py``: same documents, tokenizer and
number of worker processes; plus pack's peak memory at 1x and ``--scale``x the input.

    python benchmarks/pack_throughput.py [--tokenizer-dir data/tokenizer] [--docs 4000] [--scale 10]
                                         [--workers 2] [--megatron-lm DIR] [--curated DIR]

The input is a synthetic Korean/English/code corpus (seeded), or the documents of ``--curated``
(a curated folder) repeated to ``--docs``; it is written twice, as a curated folder of
``--shard-docs``-row shards (pack's input) and as JSONL (preprocess_data.py's). Megatron-LM is
not vendored: ``--megatron-lm`` names a checkout, else the tag matching the installed
megatron-core (``core_v<version>``) is cloned into ``--cache-dir``.

Each run is a fresh process timed wall to wall. Ours is ``pretrain.pack.run``, the stage's work
(curated shards checked by sha256, per-shard .bin/.idx, sha256 of every output, manifest, mix
report) without the run log's hashing of inputs and outputs; theirs is preprocess_data.py with
``--append-eod``. Each counts the tokens it wrote (ours adds <bos> to every document as well).
Memory is the peak over the run of the summed PSS of the process and all its descendants
(sampled every 0.1 s); the flat-memory goal is peak at ``--scale``x <= 1.2 x peak at 1x.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

MEGATRON_LM = "https://github.com/NVIDIA/Megatron-LM"
BLEND = {"ko": 0.35, "en": 0.28, "code": 0.37}
EN_WORDS = ("the of and to in is that for it as with was on be by this are from or an which at not have "
            "model data language train token text korean english code example result value system "
            "function number people time year work world history science school city water").split()
SYLLABLES = [chr(0xAC00 + i) for i in range(0, 11172, 53)]  # 211 Hangul syllables spread over the block


# -- the input -----------------------------------------------------------------------------------

def synthetic_text(rng: random.Random, lang: str) -> str:
    n = rng.randint(300, 3000)
    parts: list[str] = []
    size = 0
    while size < n:
        if lang == "ko":
            word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4)))
            part = word + rng.choice(["", "", "", "은", "는", "이", "가", "를", "다.", "요."]) + " "
        elif lang == "en":
            part = rng.choice(EN_WORDS) + rng.choice([" ", " ", " ", ", ", ". "])
        else:
            part = (f"def f_{rng.randint(0, 999)}(x, y={rng.randint(0, 99)}):\n"
                    f"    return x * y + {rng.random():.3f}\n")
        parts.append(part)
        size += len(part)
    return "".join(parts)


def synthetic_docs(n: int, seed: int) -> Iterator[dict]:
    rng = random.Random(seed)
    for i in range(n):
        lang = rng.choices(list(BLEND), weights=list(BLEND.values()))[0]
        yield {"doc_id": f"bench-{i:09d}", "source": f"synthetic_{lang}", "lang": lang,
               "text": synthetic_text(rng, lang)}


def curated_docs(folder: Path, n: int) -> Iterator[dict]:
    """The documents of a curated folder, repeated (under new ids) until there are ``n``."""
    from data_gen.curated import iter_docs

    docs = list(iter_docs(folder, ["source", "lang", "text"]))
    for i in range(n):
        yield {"doc_id": f"bench-{i:09d}", **docs[i % len(docs)]}


def write_inputs(docs: Iterator[dict], root: Path, shard_docs: int) -> tuple[Path, Path, int]:
    """(curated folder, JSONL file, UTF-8 bytes of text) holding the same documents."""
    from dasi.formats import write_parquet
    from dasi.splits import heldout_by_hash
    from data_gen.curated import write_manifest

    curated, jsonl = root / "curated", root / "input.jsonl"
    (curated / "documents").mkdir(parents=True)
    shards, counts, batch, n_bytes = [], {}, [], 0

    def flush() -> None:
        shards.append(curated / "documents" / f"{len(shards):05d}.parquet")
        write_parquet(shards[-1], batch, "curated")
        batch.clear()

    with jsonl.open("w", encoding="utf-8") as f:
        for d in docs:
            split = "heldout" if heldout_by_hash(d["doc_id"], 0.01) else "train"
            batch.append({**d, "kind": "natural", "n_chars": len(d["text"]), "split": split,
                          "provenance": "{}"})
            counts.setdefault(split, {}).setdefault(d["lang"], 0)
            counts[split][d["lang"]] += 1
            f.write(json.dumps({"text": d["text"]}, ensure_ascii=False) + "\n")
            n_bytes += len(d["text"].encode())
            if len(batch) == shard_docs:
                flush()
        if batch:
            flush()
    write_manifest(curated, shards, counts)
    return curated, jsonl, n_bytes


# -- Megatron-LM ---------------------------------------------------------------------------------

def megatron_lm_checkout(given: Path | None, cache_dir: Path) -> tuple[Path, str]:
    """(checkout, tag): ``given``, or the tag of the installed megatron-core cloned into the cache."""
    tag = f"core_v{version('megatron-core')}"
    if given is not None:
        return given.resolve(), tag
    dest = cache_dir / "megatron-lm" / tag
    if not (dest / "tools" / "preprocess_data.py").is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "clone", "--depth", "1", "--branch", tag, MEGATRON_LM, str(dest)], check=True)
    return dest, tag


# -- timed runs ----------------------------------------------------------------------------------

def timed(cmd: list[str], **kw) -> tuple[float, int, str]:
    """(wall seconds, peak summed PSS in bytes, stdout) of ``cmd``."""
    import psutil
    from process_memory import tree_memory  # benchmarks/, this script's folder

    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, tree_memory(ps)[1])
        except psutil.NoSuchProcess:
            break
        time.sleep(0.1)
    out, err = proc.communicate()
    dt = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed:\n{err[-3000:]}")
    return dt, peak, out


def ours(curated: Path, tokenizer_dir: Path, out: Path, workers: int) -> None:
    """Child process: the pack stage's work; prints the tokens it wrote."""
    from dasi.runlog import LoggingConfig, RunLog
    from pretrain.pack import PackConfig, run

    cfg = PackConfig(blend=BLEND, workers=workers, max_epochs=1e9)
    logging = LoggingConfig(logs_dir=str(out.parent / "logs"), wandb=False, tensorboard=False)
    with RunLog("bench-pack", {}, logging=logging) as log:
        manifest = run(cfg, 1, curated, tokenizer_dir, out, out.parent / "mix.json", log)
    print(json.dumps({"tokens": sum(d.tokens for d in manifest.datasets)}))


def run_ours(curated: Path, tokenizer_dir: Path, out: Path, workers: int, env: dict) -> dict:
    dt, peak, stdout = timed([sys.executable, __file__, "--ours", str(curated), "--tokenizer-dir",
                              str(tokenizer_dir), "--out", str(out), "--workers", str(workers)], env=env)
    tokens = json.loads(stdout.strip().splitlines()[-1])["tokens"]
    return {"seconds": round(dt, 2), "tokens": tokens, "tokens_per_s": round(tokens / dt),
            "peak_pss_mb": round(peak / 2**20, 1)}


def run_megatron(checkout: Path, jsonl: Path, tokenizer_dir: Path, out_prefix: Path, workers: int) -> dict:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    cmd = [sys.executable, "tools/preprocess_data.py", "--input", str(jsonl), "--output-prefix",
           str(out_prefix), "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model",
           str(tokenizer_dir), "--workers", str(workers), "--append-eod", "--log-interval", "100000"]
    env = dict(os.environ, PYTHONPATH=str(checkout))
    dt, peak, _ = timed(cmd, cwd=checkout, env=env)
    written = IndexedDataset(f"{out_prefix}_text_document")  # held: its arrays view its mmap
    tokens = int(written.sequence_lengths.sum())
    return {"seconds": round(dt, 2), "tokens": tokens, "tokens_per_s": round(tokens / dt),
            "peak_pss_mb": round(peak / 2**20, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer-dir", type=Path, default=Path("data/tokenizer"))
    ap.add_argument("--curated", type=Path, help="take the documents of this curated folder")
    ap.add_argument("--docs", type=int, default=4000, help="documents at 1x")
    ap.add_argument("--scale", type=int, default=10, help="the large input is this many times 1x")
    ap.add_argument("--shard-docs", type=int, default=1000, help="documents per curated shard")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--megatron-lm", type=Path, help="a Megatron-LM checkout (default: clone the tag)")
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "dasi")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ours", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    tokenizer_dir = args.tokenizer_dir.resolve()
    if args.ours:
        return ours(args.ours, tokenizer_dir, args.out, args.workers)

    checkout, tag = megatron_lm_checkout(args.megatron_lm, args.cache_dir)
    work = Path(tempfile.mkdtemp(prefix="dasi-bench-pack-"))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    load = os.getloadavg()[0]
    inputs, results = {}, {}
    for name, n in (("1x", args.docs), ("big", args.docs * args.scale)):
        docs = curated_docs(args.curated, n) if args.curated else synthetic_docs(n, args.seed)
        inputs[name] = write_inputs(docs, work / name, args.shard_docs)
        print(f"input {name}: {n:,} documents, {inputs[name][2] / 1e6:.1f} MB of text", flush=True)
    for name in ("1x", "big"):
        curated, jsonl, _ = inputs[name]
        results[f"ours_{name}"] = run_ours(curated, tokenizer_dir, work / name / "packed", args.workers, env)
        print(f"ours {name}: {results[f'ours_{name}']}", flush=True)
        results[f"megatron_{name}"] = run_megatron(checkout, jsonl, tokenizer_dir, work / name / "megatron",
                                                   args.workers)
        print(f"megatron-lm {name}: {results[f'megatron_{name}']}", flush=True)
    shutil.rmtree(work)  # ~10 x 3 copies of the input; the numbers are all that is kept
    ours_big, theirs_big = results["ours_big"], results["megatron_big"]
    ratio = ours_big["tokens_per_s"] / theirs_big["tokens_per_s"]
    memory_ratio = ours_big["peak_pss_mb"] / results["ours_1x"]["peak_pss_mb"]
    print(f"{args.scale}x input, {args.workers} workers: ours {ours_big['tokens_per_s']:,} tokens/s, "
          f"Megatron-LM {tag} {theirs_big['tokens_per_s']:,} tokens/s: ratio {ratio:.2f} (goal >= 1.5); "
          f"our peak memory {args.scale}x / 1x = {memory_ratio:.2f} (goal <= 1.2)")
    print(json.dumps({
        "benchmark": "pack_throughput", "megatron_lm": tag, "workers": args.workers, "cpus": os.cpu_count(),
        "load_average_at_start": round(load, 2), "docs_1x": args.docs, "scale": args.scale,
        "input_mb": {k: round(v[2] / 1e6, 2) for k, v in inputs.items()}, **results,
        "tokens_per_s_ratio": round(ratio, 3),
        "wall_ratio": round(theirs_big["seconds"] / ours_big["seconds"], 3),
        "memory_ratio": round(memory_ratio, 3), "throughput_goal_met": ratio >= 1.5,
        "memory_goal_met": memory_ratio <= 1.2}))


if __name__ == "__main__":
    main()
