"""The ``evaluate`` stage: the same tasks and held-out bits per byte for our models and for peers.

Results (``metrics/eval.json``)::

    {"models": {"<name>": {"role": "ours" | "peer", "path": ..., "source": "...", "provenance": {...} (peers),
                           "tasks": {"<task>": {"acc": ..., "acc_stderr": ..., "n": ..., "n_total": ...}},
                           "bpb": {"ko": ..., "en": ...}, "nll_per_token": {...}, "bpb_tokens": {...}}},
     "tasks": [{..., "description": "..."}], "bpb_docs": {"ko": n, "en": n}, "bpb_bytes": {...}}

lm-eval tasks (hub or local files) run in a child process (:mod:`evals.harness`); HumanEval
(``source: human_eval``) generates here and runs each program in :mod:`evals.sandbox`. Bits per
byte use each model's own tokenizer, so they compare across models; token counts do not.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from dasi.atomic import write_json
from dasi.runlog import RunLog
from dasi.strict import StrictModel
from data_gen.curated import iter_docs
from evals.bpb import NLL, texts_nll
from evals.harness import HUMAN_EVAL_MAX_NEW_TOKENS, TaskSpec, run_in_child
from evals.peers import ModelRef, PeerSpec, all_models
from evals.sandbox import Limits

DEFAULT_TASKS = [TaskSpec(name="copa_ko_mini", source="local", format="kobest_copa",
                          local_file="evals/data/copa_ko_mini.jsonl",
                          origin="32 hand-written Korean items in KoBEST COPA format, not KoBEST "
                                 "(evals/data/README.md)")]


class SandboxConfig(StrictModel):
    """Limits for each HumanEval program (evals/sandbox.py)."""

    wall_seconds: float = Field(10.0, gt=0)
    cpu_seconds: int = Field(10, gt=0)
    memory_mb: int = Field(1024, ge=64)

    def limits(self) -> Limits:
        return Limits(wall_seconds=self.wall_seconds, cpu_seconds=self.cpu_seconds,
                      memory_bytes=self.memory_mb << 20)


class EvaluateConfig(StrictModel):
    tasks: list[TaskSpec] = Field(default_factory=lambda: list(DEFAULT_TASKS))
    peers: list[PeerSpec] = Field(default_factory=list, description="other models scored on the same "
                                  "tasks and texts (rows with role: peer)")
    num_fewshot: int = Field(0, ge=0)
    limit: int | None = Field(None, gt=0, description="examples per lm-eval task (None: all)")
    batch_size: int = Field(8, gt=0)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = Field("auto", description="auto: cuda if available, else cpu")
    chat_template: list[str] = Field(default_factory=list, description="models evaluated through their "
                                     "chat template in lm-eval (e.g. [sft])")
    bpb_langs: list[Literal["ko", "en", "code"]] = Field(default_factory=lambda: ["ko", "en"])
    bpb_max_docs: int | None = Field(None, gt=0, description="held-out documents per language")
    bpb_window: int | None = Field(None, gt=1, description="tokens; None: the model's max positions")
    bpb_stride: int | None = Field(None, gt=0, description="tokens; None: half the window")
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    seed: int = 0

    @model_validator(mode="after")
    def _unique_names(self) -> EvaluateConfig:
        for what, names in (("tasks", [t.name for t in self.tasks]), ("peers", [p.name for p in self.peers])):
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ValueError(f"{what}: names used twice: {twice}")
        return self


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


def load_model(ref: ModelRef, dtype: str, device: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ref.tokenizer, revision=ref.revision)
    model = AutoModelForCausalLM.from_pretrained(ref.load, revision=ref.revision, dtype=getattr(torch, dtype))
    return model.to(device).eval(), tok


def model_bpb(model: Any, tok: Any, texts: dict[str, list[str]], cfg: EvaluateConfig) -> dict[str, NLL]:
    window = cfg.bpb_window or int(model.config.max_position_embeddings)
    return texts_nll(model, tok, texts, window, cfg.bpb_stride)


def code_tasks(model: Any, tok: Any, cfg: EvaluateConfig, name: str, log: RunLog) -> dict[str, Any]:
    """HumanEval-style tasks for one model; completions and outcomes go to the run log's folder."""
    from evals import humaneval

    out = {}
    for task in (t for t in cfg.tasks if t.source == "human_eval"):
        problems = humaneval.load_problems(task.limit)
        samples = log.dir / "humaneval" / f"{task.name}-{name}.jsonl"
        max_new = task.max_new_tokens or HUMAN_EVAL_MAX_NEW_TOKENS
        out[task.name] = humaneval.evaluate_model(model, tok, problems, max_new, cfg.sandbox.limits(),
                                                  samples)
    return out


def run(cfg: EvaluateConfig, models: dict[str, Path], curated: Path, tokenizer_dir: Path | None,
        out: Path, work_dir: Path | None, log: RunLog) -> dict[str, Any]:
    """Evaluate our ``models`` and the configured peers; write ``out`` (JSON). lm-eval's caches go
    to ``work_dir`` (default: a temporary folder, removed after: they hold absolute paths and
    locks, not results), its log to the run log's folder."""
    if not models:
        raise ValueError("evaluate: no models given")
    refs = all_models(models, cfg.peers, tokenizer_dir)
    unknown = set(cfg.chat_template) - {r.name for r in refs}
    if unknown:
        raise ValueError(f"evaluate.chat_template names unknown models {sorted(unknown)}")
    if any(t.source == "human_eval" for t in cfg.tasks):
        from evals.sandbox import check_available

        check_available()  # before any model runs: a missing bwrap stops the stage at once
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    torch.manual_seed(cfg.seed)
    texts = heldout_texts(curated, cfg.bpb_langs, cfg.bpb_max_docs)

    t0 = time.time()
    lm_tasks = [t for t in cfg.tasks if t.runs_in_lm_eval]
    spec = {
        "models": {r.name: {**r.harness_args(), "chat_template": r.name in cfg.chat_template} for r in refs},
        "tasks": [t.model_dump() for t in lm_tasks], "num_fewshot": cfg.num_fewshot, "limit": cfg.limit,
        "batch_size": cfg.batch_size, "dtype": cfg.dtype, "device": device, "seed": cfg.seed,
    }
    if lm_tasks:
        with tempfile.TemporaryDirectory(prefix="dasi-eval-") as tmp:
            harness = run_in_child(spec, Path(work_dir or tmp), log.dir)
    else:
        harness = {r.name: {} for r in refs}
    log.event("lm_eval_done", seconds=round(time.time() - t0, 2))

    results: dict[str, Any] = {}
    for step, ref in enumerate(refs):
        t1 = time.time()
        model, tok = load_model(ref, cfg.dtype, device)
        nll = model_bpb(model, tok, texts, cfg)
        t2 = time.time()
        tasks = {**harness[ref.name], **code_tasks(model, tok, cfg, ref.name, log)}
        del model
        results[ref.name] = {
            "role": ref.role, "path": ref.load,
            **({"source": ref.source, "provenance": ref.provenance} if ref.role == "peer" else {}),
            "tasks": {t.name: tasks[t.name] for t in cfg.tasks},
            "bpb": {lang: v.bpb for lang, v in nll.items()},
            "nll_per_token": {lang: v.nll_per_token for lang, v in nll.items()},
            "bpb_tokens": {lang: v.tokens for lang, v in nll.items()},
        }
        flat = {f"{ref.name}/bpb/{lang}": v.bpb for lang, v in nll.items()}
        for task, metrics in tasks.items():
            flat.update({f"{ref.name}/{task}/{k}": v for k, v in metrics.items()})
        log.log({**flat, f"{ref.name}/bpb_seconds": round(t2 - t1, 2),
                 f"{ref.name}/code_seconds": round(time.time() - t2, 2)}, step=step)

    report = {"models": results,
              "tasks": [{**t.model_dump(), "description": t.description(cfg.limit)} for t in cfg.tasks],
              "bpb_docs": {lang: len(d) for lang, d in texts.items()},
              "bpb_bytes": {lang: sum(len(t.encode()) for t in d) for lang, d in texts.items()}}
    write_json(Path(out), report)
    summary = {f"{n}/bpb/{lang}": v for n, r in results.items() for lang, v in r["bpb"].items()}
    summary.update({f"{n}/{task}/{k}": v for n, r in results.items() for task, m in r["tasks"].items()
                    for k, v in m.items()})
    log.summary(summary)
    return report
