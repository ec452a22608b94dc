"""Stage ``adapt-eval``: the adapted model beside the baseline arm and the unadapted base, on
held-out text (bits per byte, comparable across tokenizers), with the token ratio and each goal of
the adaptation path checked; written to ``metrics/adapt.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from adapt.config import ENGLISH_LOSS_GOAL, RATIO_GOAL, AdaptConfig
from dasi.atomic import write_json


def _bpb(model_dir: str, revision: str | None, texts: dict[str, list[str]], window: int) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evals.bpb import texts_nll

    tok = AutoTokenizer.from_pretrained(model_dir, revision=revision)
    model = AutoModelForCausalLM.from_pretrained(model_dir, revision=revision, dtype=torch.float32).eval()
    return {lang: {"bpb": n.bpb, "tokens": n.tokens, "bytes": n.bytes, "docs": n.docs}
            for lang, n in texts_nll(model, tok, texts, window).items()}


def run_eval(cfg: AdaptConfig, adapted: Path, baseline: Path, vocab_metrics: Path, phase_metrics: list[Path],
             curated: Path, out: Path, log: Any) -> dict[str, Any]:
    """Bits per byte on held-out text for the unadapted base, the adapted model and the baseline
    arm, the token ratio, and each goal of issue 11 checked."""
    import json

    from evals.evaluate import heldout_texts

    texts = heldout_texts(curated, list(cfg.eval.bpb_langs), cfg.eval.bpb_max_docs)
    window = cfg.eval.bpb_window or cfg.train.seq_length
    src, revision = cfg.base.source()
    arms = {"base": (src, revision), "adapted": (str(adapted), None), "baseline": (str(baseline), None)}
    bpb = {}
    for name, (folder, rev) in arms.items():
        bpb[name] = _bpb(folder, rev, texts, window)
        log.event("bpb", model=name, **{lang: v["bpb"] for lang, v in bpb[name].items()})
    vocab = json.loads(vocab_metrics.read_text())
    phases = [json.loads(p.read_text()) for p in phase_metrics]
    trained = {p["phase"]: {"steps": p["steps"], "tokens": p["tokens"], "train_loss": p["train_loss"],
                            "trainable_params": p["trainable_params"]} for p in phases}
    adapted_tokens = sum(v["tokens"] for k, v in trained.items() if k != "baseline")
    checks = {"token_ratio_at_most_goal": vocab["token_ratio"] <= RATIO_GOAL}
    if "ko" in bpb["adapted"]:
        checks["ko_bpb_below_baseline"] = bpb["adapted"]["ko"]["bpb"] < bpb["baseline"]["ko"]["bpb"]
    if "en" in bpb["adapted"]:
        rel = bpb["adapted"]["en"]["bpb"] / bpb["base"]["en"]["bpb"] - 1
        checks["en_bpb_within_5pct_of_base"] = rel <= ENGLISH_LOSS_GOAL
    result = {
        "format": "adapt/1", "base": src, "revision": revision,
        "token_ratio": {"heldout_korean": vocab["token_ratio"], "goal": RATIO_GOAL,
                        "tokens_base": vocab["heldout_korean"]["base_tokens"],
                        "tokens_merged": vocab["heldout_korean"]["merged_tokens"]},
        "training_tokens": {"adapted": adapted_tokens, "baseline": trained.get("baseline", {}).get("tokens")},
        "phases": trained,
        "bpb": bpb,
        "en_bpb_vs_base": ({k: bpb[k]["en"]["bpb"] / bpb["base"]["en"]["bpb"] - 1 for k in bpb}
                           if "en" in bpb["base"] else None),
        "checks": checks,
        "bpb_window": window,
    }
    write_json(out, result)
    log.summary({"token_ratio": vocab["token_ratio"], **{f"bpb_{k}_{lang}": v["bpb"] for k, r in bpb.items()
                                                          for lang, v in r.items()}, **checks})
    return result
