"""A tiny English Llama (4 layers, its own byte-level BPE) and a curated folder of real Korean
(konlpy's corpora) and English text: what the adaptation tests train on."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.conftest import write_curated_dir

ENGLISH = ("The json module exposes an API familiar to users of the marshal and pickle modules. "
           "Heaps are binary trees for which every parent node is at most its children. ")


def korean_texts() -> list[str]:
    from konlpy.corpus import kobill, kolaw

    law = kolaw.open("constitution.txt").read()
    bills = [kobill.open(f).read() for f in kobill.fileids()[:6]]
    return [law[i:i + 1500] for i in range(0, 9000, 1500)] + [b[:1500] for b in bills]


def curated_dir(root: Path) -> Path:
    ko = korean_texts()
    rows = [{"doc_id": f"ko-{i}", "source": "kolaw", "kind": "natural", "lang": "ko", "text": t,
             "n_chars": len(t), "split": "heldout" if i % 4 == 3 else "train", "provenance": "{}"}
            for i, t in enumerate(ko)]
    rows += [{"doc_id": f"en-{i}", "source": "pydoc", "kind": "natural", "lang": "en",
              "text": ENGLISH * (i + 2), "n_chars": len(ENGLISH) * (i + 2),
              "split": "heldout" if i == 3 else "train", "provenance": "{}"}
             for i in range(4)]
    return write_curated_dir(root, rows)


def english_llama(folder: Path, tied: bool = False, layers: int = 4, seed: int = 1) -> Path:
    """A random Llama whose byte-level BPE was trained on English only (Korean falls to bytes)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([ENGLISH * 4], trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="</s>")
    tok.save_pretrained(str(folder))
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=bpe.get_vocab_size(), hidden_size=32, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
                      max_position_embeddings=256, bos_token_id=0, eos_token_id=1, pad_token_id=1,
                      tie_word_embeddings=tied)
    LlamaForCausalLM(cfg).save_pretrained(str(folder))
    return folder


def adapt_section(base: Path, phases: dict | None = None, **train: object) -> dict:
    section = {
        "base": {"path": str(base)},
        "vocab": {"korean_vocab_size": 800, "max_new_tokens": 300, "sample_chars": 100_000,
                  "heldout_chars": 20_000},
        "train": {"seq_length": 32, "batch_size": 4, "lang_weights": {"ko": 0.75, "en": 0.25},
                  "save_steps": 2, **train},
        "phases": {"embed_head": {"steps": 2, "learning_rate": 1e-2},
                   "odd_layers": {"steps": 2, "learning_rate": 1e-3},
                   "even_layers": {"steps": 2, "learning_rate": 1e-3},
                   "lora": {"steps": 2, "learning_rate": 1e-2}},
        "lora": {"r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]},
        "baseline": {"learning_rate": 1e-3},
        "eval": {"bpb_langs": ["ko", "en"]},
    }
    for name, values in (phases or {}).items():
        section["phases"][name].update(values)
    return section


def adapt_config(base: Path, phases: dict | None = None, **train: object):
    from adapt.config import AdaptConfig

    return AdaptConfig.model_validate(yaml.safe_load(yaml.safe_dump(adapt_section(base, phases, **train))))
