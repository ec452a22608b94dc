"""Stage ``adapt-vocab``: the Korean BPE trained on curated Korean text and merged into the base's
tokenizer, the base's embeddings grown and the new rows initialised; the token ratio measured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from adapt.config import RATIO_GOAL, AdaptConfig
from dasi.atomic import write_json


def korean_samples(curated: Path, cfg: AdaptConfig) -> tuple[list[str], list[str]]:
    """Bounded, seeded Korean samples: the train split for the BPE, the held-out one for the ratio
    (the same reservoir the tokenizer stage samples with)."""
    from dasi.reservoir import CharReservoir
    from data_gen.curated import iter_batches

    pools = {"train": CharReservoir(cfg.vocab.sample_chars, cfg.vocab.seed),
             "heldout": CharReservoir(cfg.vocab.heldout_chars, cfg.vocab.seed)}
    for batch in iter_batches(curated, ["doc_id", "lang", "split", "text"]):
        cols = batch.to_pydict()
        rows = zip(cols["doc_id"], cols["lang"], cols["split"], cols["text"], strict=True)
        for doc_id, lang, split, text in rows:
            pool = pools.get(split)
            if lang == "ko" and pool is not None and pool.wants(key := pool.key(doc_id)):
                pool.add(key, text)
    for split, pool in pools.items():
        if not pool.chars:
            raise ValueError(f"adapt.vocab: {curated} has no {split} Korean text")
    return pools["train"].texts(), pools["heldout"].texts()


def run_vocab(cfg: AdaptConfig, curated: Path, out: Path, metrics_path: Path, log: Any) -> dict[str, Any]:
    """Train the Korean BPE, merge it into the base tokenizer, grow and initialise the embeddings;
    write the initialised model with its merged tokenizer to ``out``."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adapt.embed_init import init_new_rows
    from adapt.vocab import merge_vocab, save_merged, token_ratio, train_korean_bpe
    from dasi.atomic import atomic_path

    src, revision = cfg.base.source()
    base_tok = AutoTokenizer.from_pretrained(src, revision=revision)
    base_json = json.loads(base_tok.backend_tokenizer.to_str())
    train_texts, heldout = korean_samples(curated, cfg)
    korean = train_korean_bpe(train_texts, base_tok.backend_tokenizer, cfg.vocab.korean_vocab_size,
                              cfg.vocab.min_frequency)
    merged_json, report = merge_vocab(base_json, korean, cfg.vocab.max_new_tokens)
    log.event("vocab_merged", **report.as_dict())

    model = AutoModelForCausalLM.from_pretrained(src, revision=revision, dtype=torch.float32)
    with atomic_path(out) as tmp:
        base_tok.save_pretrained(str(tmp))
        save_merged(tmp, merged_json, tmp)
        new_tok = AutoTokenizer.from_pretrained(str(tmp))
        init = init_new_rows(model, new_tok, base_tok, old_vocab=len(base_tok))
        log.event("embeddings_initialised", **init.as_dict())
        model.save_pretrained(str(tmp))
    new_tok = AutoTokenizer.from_pretrained(str(out))
    ratio = token_ratio(heldout, new_tok, base_tok)
    metrics = {"format": "adapt-vocab/1", "base": src, "merge": report.as_dict(), "init": init.as_dict(),
               "heldout_korean": ratio, "token_ratio": ratio["ratio"], "token_ratio_goal": RATIO_GOAL}
    write_json(metrics_path, metrics)
    log.summary({"token_ratio": ratio["ratio"], "new_tokens": report.as_dict()["added"]})
    return metrics
