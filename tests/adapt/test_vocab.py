from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapt.vocab import merge_vocab, save_merged, token_bytes, token_ratio, train_korean_bpe
from tests.adapt.tiny import ENGLISH, english_llama, korean_texts

CODE = "def f(x):\n    return {'a': x + 1}  # 한 줄\n"


def merged_folder(base_dir: Path, out: Path, texts: list[str], vocab_size: int, max_new: int):
    from transformers import AutoTokenizer

    base = AutoTokenizer.from_pretrained(str(base_dir))
    base_json = json.loads(base.backend_tokenizer.to_str())
    korean = train_korean_bpe(texts, base.backend_tokenizer, vocab_size, min_frequency=2)
    merged_json, report = merge_vocab(base_json, korean, max_new)
    save_merged(base_dir, merged_json, out)
    return base, AutoTokenizer.from_pretrained(str(out)), base_json, merged_json, report


@pytest.fixture(scope="module")
def smollm2(teachers_dir: Path, tmp_path_factory):
    texts = korean_texts()
    return merged_folder(teachers_dir / "smollm2", tmp_path_factory.mktemp("merged") / "tok",
                         texts[1:], vocab_size=4000, max_new=1500), texts[0]


def test_old_ids_keep_their_meaning_and_new_ones_follow(smollm2) -> None:
    (base, merged, base_json, merged_json, report), _ = smollm2
    old = base.get_vocab()
    assert {t: i for t, i in merged.get_vocab().items() if t in old} == old
    assert len(merged) == len(base) + report.added and report.added == 1500
    assert sorted(set(merged.get_vocab().values()) - set(old.values())) == list(range(len(base), len(merged)))
    n = len(base_json["model"]["merges"])
    assert merged_json["model"]["merges"][:n] == base_json["model"]["merges"]  # ranks unchanged
    assert merged_json["added_tokens"] == base_json["added_tokens"]
    assert merged.all_special_tokens == base.all_special_tokens and merged.chat_template == base.chat_template
    assert json.loads(base.backend_tokenizer.to_str()) == base_json  # the base was not touched


def test_korean_gets_fewer_tokens_and_english_and_code_are_unchanged(smollm2) -> None:
    (base, merged, *_), heldout = smollm2
    ratio = token_ratio([heldout], merged, base)
    assert ratio["ratio"] < 0.6 and ratio["base_tokens"] > ratio["merged_tokens"] > 0
    for text in (ENGLISH, CODE.split("#")[0], "Plain ASCII: 1234, x_y = [a, b]"):
        assert merged(text)["input_ids"] == base(text)["input_ids"]
    ids = merged(heldout, add_special_tokens=False)["input_ids"]
    assert merged.decode(ids) == heldout  # decodes back, byte for byte
    assert max(ids) >= len(base)  # new tokens are used


def test_every_new_token_holds_a_non_ascii_byte(smollm2) -> None:
    (base, merged, *_), _ = smollm2
    new = [t for t, i in merged.get_vocab().items() if i >= len(base)]
    assert new and all(not token_bytes(t).isascii() for t in new)


def test_merge_keeps_the_string_form_of_merges(tmp_path: Path) -> None:
    """A tokenizer.json writing merges as "a b" strings keeps that form."""
    from transformers import AutoTokenizer

    base_dir = english_llama(tmp_path / "m")
    base = AutoTokenizer.from_pretrained(str(base_dir))
    base_json = json.loads(base.backend_tokenizer.to_str())
    base_json["model"]["merges"] = [" ".join(m) for m in base_json["model"]["merges"]]
    korean = train_korean_bpe(korean_texts()[:3], base.backend_tokenizer, 600, 2)
    merged_json, report = merge_vocab(base_json, korean, 50)
    assert report.added == 50 and all(isinstance(m, str) for m in merged_json["model"]["merges"])
    with pytest.raises(ValueError, match="not BPE"):
        merge_vocab({**base_json, "model": {"type": "Unigram"}}, korean, 5)
