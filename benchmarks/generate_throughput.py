"""The generate stage against raw ``vllm.LLM.generate``: same prompts, model and sampling.

    python benchmarks/generate_throughput.py [--teacher-dir data/teachers/smollm2-135m-instruct]
                                             [--requests 64] [--new-tokens 64] [--repeat 1]

Both run as fresh processes and are timed wall to wall: the raw run imports vLLM, builds
``LLM`` with the stage's settings and generates every request in one call; the stage run is
``dasi generate`` as DVC runs it (config validation, run log with W&B/TensorBoard mirrors,
input/output hashing, datatrove executor, shard files, manifest, dataset card). Both give each
request the same token ids and the same sampling parameters, seed included.
The last line is one JSON object; ``overhead`` = stage time / raw time - 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PROMPTS = ["Write a short story about a cat.", "Explain what a list is in Python.",
           "Give three tips for writing tests.", "Describe a rainy day in a city.",
           "What makes a good teacher?", "Explain recursion to a beginner.",
           "Write a haiku about autumn.", "Summarise why sleep matters."]
SAMPLING = {"temperature": 0.8, "top_p": 0.95, "repetition_penalty": 1.0, "seed": 0}
SERVING = {"max_model_len": 1024, "cpu_kv_cache_gib": 2}


def write_requests(path: Path, teacher: str, kind: str, n: int, new_tokens: int) -> None:
    from dasi.formats import write_parquet

    rows = []
    for i in range(n):
        prompt = f"{PROMPTS[i % len(PROMPTS)]} (variant {i})"
        rows.append({"request_id": f"bench-{i:05d}", "purpose": "pretrain", "lang": "en", "style": "bench",
                     "teacher": teacher, "teacher_kind": kind, "template_id": "bench", "template_version": 1,
                     "template_hash": "0" * 64, "audience": None, "topic": None, "seed_doc_id": None,
                     "instruction": None, "prompt": prompt, "head": "", "stop": [],
                     "max_new_tokens": new_tokens})
    write_parquet(path, rows, "requests")


def raw(requests: Path, folder: Path, max_num_seqs: int) -> None:
    """Child process: plain vLLM on the same inputs and engine settings; prints its token count."""
    import pyarrow.parquet as pq
    import torch

    if not torch.cuda.is_available():  # what the stage's engine does on CPU
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(SERVING["cpu_kv_cache_gib"]))
    from vllm import LLM
    from vllm.inputs import TokensPrompt

    from data_gen.engines.base import encode_request
    from data_gen.engines.vllm_engine import sampling_params
    from data_gen.generate import SamplingConfig, sampling_for
    from data_gen.teacher import read_manifest

    cuda = torch.cuda.is_available()
    llm = LLM(model=str(folder), tokenizer=str(folder), dtype=read_manifest(folder)["dtype"], seed=0,
              max_model_len=SERVING["max_model_len"], max_num_seqs=max_num_seqs, enforce_eager=not cuda)
    tok = llm.get_tokenizer()
    reqs = pq.read_table(requests).to_pylist()
    cfg = SamplingConfig(**SAMPLING)
    params = [sampling_params(sampling_for(cfg, r)) for r in reqs]
    outs = llm.generate([TokensPrompt(prompt_token_ids=encode_request(tok, r)) for r in reqs], params,
                        use_tqdm=False)
    print(json.dumps({"tokens": sum(len(o.outputs[0].token_ids) for o in outs)}))


def timed(cmd: list[str], **kw) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    dt = time.perf_counter() - t
    if out.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed:\n{out.stderr[-3000:]}")
    return dt, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher-dir", type=Path, default=Path("data/teachers/smollm2-135m-instruct"))
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--raw", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.raw:
        return raw(args.raw, args.teacher_dir, args.max_num_seqs)

    from data_gen.teacher import read_manifest

    folder = args.teacher_dir.resolve()
    manifest = read_manifest(folder)
    repo = Path(__file__).resolve().parents[1]
    work = Path(tempfile.mkdtemp(prefix="dasi-bench-gen-"))
    requests = work / "requests.parquet"
    write_requests(requests, folder.name, manifest["kind"], args.requests, args.new_tokens)
    (work / "configs").mkdir()
    profile = {"launcher": "local",
               "logging": {"logs_dir": str(work / "logs"), "wandb": True, "tensorboard": True},
               "generate": {"sampling": {**SAMPLING, "max_new_tokens": args.new_tokens},
                            "shard_size": args.requests, "max_num_seqs": args.max_num_seqs,
                            "serving": {folder.name: SERVING}}}
    (work / "configs" / "bench.yaml").write_text(yaml.safe_dump(profile))
    (work / "params.yaml").write_text("profile: bench\n")
    env = dict(os.environ, WANDB_MODE="offline", PYTHONPATH=str(repo))
    raw_s, stage_s, raw_tokens, stage_tokens = [], [], 0, 0
    for i in range(args.repeat):
        dt, out = timed([sys.executable, __file__, "--raw", str(requests), "--teacher-dir", str(folder),
                         "--max-num-seqs", str(args.max_num_seqs)], env=env, cwd=work)
        raw_s.append(dt)
        raw_tokens = json.loads(out.stdout.strip().splitlines()[-1])["tokens"]
        print(f"raw   run {i}: {dt:7.1f} s, {raw_tokens} tokens", flush=True)
        out_dir = work / f"generated-{i}"
        dt, _ = timed([sys.executable, "-m", "dasi.cli", "generate", "--requests", str(requests),
                       "--teachers", str(folder.parent), "--out", str(out_dir), "--params",
                       str(work / "params.yaml"), "--profiles", str(work / "configs")], env=env, cwd=work)
        stage_s.append(dt)
        stage_tokens = json.loads((out_dir / "_manifest.json").read_text())["completion_tokens"]
        print(f"stage run {i}: {dt:7.1f} s, {stage_tokens} tokens", flush=True)
    raw_t, stage_t = min(raw_s), min(stage_s)
    import torch

    print(json.dumps({
        "benchmark": "generate_throughput", "teacher": manifest["id"], "requests": args.requests,
        "new_tokens": args.new_tokens, "device": torch.cuda.get_device_name(0) if torch.cuda.is_available()
        else f"cpu x{os.cpu_count()}", "raw_s": round(raw_t, 2), "stage_s": round(stage_t, 2),
        "raw_tokens": raw_tokens, "stage_tokens": stage_tokens,
        "raw_tokens_per_s": round(raw_tokens / raw_t, 2),
        "stage_tokens_per_s": round(stage_tokens / stage_t, 2),
        "overhead": round(stage_t / raw_t - 1, 4), "repeat": args.repeat, "work_dir": str(work),
    }))


if __name__ == "__main__":
    main()
