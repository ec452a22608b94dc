"""The ``evaluate`` stage: lm-eval tasks and held-out bits per byte for one or more model folders.

Results (``metrics/eval.json``)::

    {"models": {"<name>": {"path": ..., "tasks": {"<task>": {"acc": ..., "acc_stderr": ..., "n": ...}},
                           "bpb": {"ko": ..., "en": ...}, "nll_per_token": {...}}},
     "tasks": [...], "bpb_docs": {"ko": n, "en": n}}
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from dasi.atomic import write_json
from dasi.runlog import RunLog
from dasi.strict import StrictModel
from data_gen.curated import iter_docs
from evals.bpb import NLL, text_nll
from evals.harness import TaskSpec, run_in_child

DEFAULT_TASKS = [TaskSpec(name="copa_ko_mini", source="local", format="kobest_copa",
                          local_file="evals/data/copa_ko_mini.jsonl",
                          origin="32 hand-written Korean items in KoBEST COPA format, not KoBEST "
                                 "(evals/data/README.md)")]


class EvaluateConfig(StrictModel):
    tasks: list[TaskSpec] = Field(default_factory=lambda: list(DEFAULT_TASKS))
    num_fewshot: int = Field(0, ge=0)
    limit: int | None = Field(None, gt=0, description="examples per task (None: all)")
    batch_size: int = Field(8, gt=0)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = Field("auto", description="auto: cuda if available, else cpu")
    chat_template: list[str] = Field(default_factory=list, description="models evaluated through their "
                                     "chat template in lm-eval (e.g. [sft])")
    bpb_langs: list[Literal["ko", "en", "code"]] = Field(default_factory=lambda: ["ko", "en"])
    bpb_max_docs: int | None = Field(None, gt=0, description="held-out documents per language")
    bpb_window: int | None = Field(None, gt=1, description="tokens; None: the model's max positions")
    bpb_stride: int | None = Field(None, gt=0, description="tokens; None: half the window")
    seed: int = 0


def heldout_texts(curated: Path, langs: list[str], max_docs: int | None) -> dict[str, list[str]]:
    """Held-out curated texts per language, in doc_id order, streamed from the curated shards
    (only the held-out rows are kept in memory)."""
    rows = iter_docs(curated, columns=["doc_id", "lang", "text"], split="heldout")
    by_lang: dict[str, list[tuple[str, str]]] = {lang: [] for lang in langs}
    for r in rows:
        if r["lang"] in by_lang:
            by_lang[r["lang"]].append((r["doc_id"], r["text"]))
    out = {}
    for lang, docs in by_lang.items():
        if not docs:
            raise ValueError(f"evaluate: {curated} has no held-out {lang!r} documents")
        out[lang] = [text for _, text in sorted(docs)[:max_docs]]
    return out


def model_bpb(path: Path, tokenizer: Path, texts: dict[str, list[str]], cfg: EvaluateConfig,
              device: str) -> dict[str, NLL]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, cfg.dtype)).to(device).eval()
    window = cfg.bpb_window or int(model.config.max_position_embeddings)
    stride = cfg.bpb_stride or max(1, window // 2)
    result = {}
    for lang, docs in texts.items():
        total = NLL()
        for text in docs:
            total.add(text_nll(model, tok, text, window, stride))
        result[lang] = total
    return result


def _tokenizer_for(path: Path, fallback: Path | None) -> Path:
    if (path / "tokenizer.json").exists() or (path / "tokenizer_config.json").exists():
        return path
    if fallback is None:
        raise ValueError(f"evaluate: {path} has no tokenizer and no --tokenizer-dir was given")
    return fallback


def run(cfg: EvaluateConfig, models: dict[str, Path], curated: Path, tokenizer_dir: Path | None,
        out: Path, work_dir: Path | None, log: RunLog) -> dict[str, Any]:
    """Evaluate every model; write ``out`` (JSON). lm-eval's caches go to ``work_dir`` (default:
    a temporary folder, removed after: they hold absolute paths and locks, not results), its
    log to the run log's folder."""
    if not models:
        raise ValueError("evaluate: no models given")
    unknown = set(cfg.chat_template) - set(models)
    if unknown:
        raise ValueError(f"evaluate.chat_template names unknown models {sorted(unknown)}")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    torch.manual_seed(cfg.seed)
    texts = heldout_texts(curated, cfg.bpb_langs, cfg.bpb_max_docs)
    toks = {name: _tokenizer_for(Path(p), tokenizer_dir) for name, p in models.items()}

    t0 = time.time()
    spec = {
        "models": {n: {"path": str(Path(p).resolve()), "tokenizer": str(toks[n].resolve()),
                       "chat_template": n in cfg.chat_template} for n, p in models.items()},
        "tasks": [t.model_dump() for t in cfg.tasks], "num_fewshot": cfg.num_fewshot, "limit": cfg.limit,
        "batch_size": cfg.batch_size, "dtype": cfg.dtype, "device": device, "seed": cfg.seed,
    }
    if cfg.tasks:
        with tempfile.TemporaryDirectory(prefix="dasi-eval-") as tmp:
            harness = run_in_child(spec, Path(work_dir or tmp), log.dir)
    else:
        harness = {n: {} for n in models}
    log.event("lm_eval_done", seconds=round(time.time() - t0, 2))

    results: dict[str, Any] = {}
    for step, (name, path) in enumerate(models.items()):
        t1 = time.time()
        nll = model_bpb(Path(path), toks[name], texts, cfg, device)
        results[name] = {
            "path": str(path), "tasks": harness[name],
            "bpb": {lang: v.bpb for lang, v in nll.items()},
            "nll_per_token": {lang: v.nll_per_token for lang, v in nll.items()},
            "bpb_tokens": {lang: v.tokens for lang, v in nll.items()},
        }
        flat = {f"{name}/bpb/{lang}": v.bpb for lang, v in nll.items()}
        for task, metrics in harness[name].items():
            flat.update({f"{name}/{task}/{k}": v for k, v in metrics.items()})
        log.log({**flat, f"{name}/bpb_seconds": round(time.time() - t1, 2)}, step=step)

    report = {"models": results, "tasks": [t.model_dump() for t in cfg.tasks],
              "bpb_docs": {lang: len(d) for lang, d in texts.items()},
              "bpb_bytes": {lang: sum(len(t.encode()) for t in d) for lang, d in texts.items()}}
    write_json(Path(out), report)
    summary = {f"{n}/bpb/{lang}": v for n, r in results.items() for lang, v in r["bpb"].items()}
    summary.update({f"{n}/{task}/{k}": v for n, r in results.items() for task, m in r["tasks"].items()
                    for k, v in m.items()})
    log.summary(summary)
    return report
