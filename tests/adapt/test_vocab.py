from __future__ import annotations

import copy
import json
import textwrap
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from adapt.vocab import merge_vocab, save_merged, token_bytes, token_ratio, train_korean_bpe
from tests.adapt.tiny import ENGLISH, english_llama, korean_texts

CODE = Path(textwrap.__file__).read_text()  # a real, pure-ASCII Python module


def kolaw_train() -> list[str]:
    """konlpy's kolaw corpus (the constitution), one text per paragraph."""
    from konlpy.corpus import kolaw

    return [p for p in kolaw.open("constitution.txt").read().split("\n") if p.strip()]


def kobill_heldout() -> list[str]:
    """Other files: konlpy's kobill corpus (bills), none of it seen by the Korean BPE."""
    from konlpy.corpus import kobill

    return [kobill.open(f).read() for f in sorted(kobill.fileids())]


def english_texts() -> list[str]:
    from pydoc_data.topics import topics

    return [ENGLISH, CODE, topics["for"], topics["with"], "Plain ASCII: 1234, x_y = [a, b]\n\ttab"]


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
    """SmolLM2's tokenizer with 1500 tokens of a Korean BPE trained on kolaw."""
    return merged_folder(teachers_dir / "smollm2", tmp_path_factory.mktemp("merged") / "tok",
                         kolaw_train(), vocab_size=4000, max_new=1500)


def test_old_ids_keep_their_meaning_and_new_ones_follow(smollm2, teachers_dir: Path) -> None:
    base, merged, base_json, merged_json, report = smollm2
    old = base.get_vocab()
    assert {t: i for t, i in merged.get_vocab().items() if t in old} == old
    assert report.added == 1500 and report.skipped["over_limit"] > 0  # kolaw offers more than 1500
    assert len(merged) == len(base) + 1500 == report.final_vocab and report.base_vocab == len(base)
    assert sorted(set(merged.get_vocab().values()) - set(old.values())) == list(range(len(base), len(merged)))
    n = len(base_json["model"]["merges"])
    assert merged_json["model"]["merges"][:n] == base_json["model"]["merges"]  # ranks unchanged
    assert len(merged_json["model"]["merges"]) == n + 1500
    assert {k: v for k, v in merged_json.items() if k != "model"} == \
        {k: v for k, v in base_json.items() if k != "model"}  # added tokens, pre-tokenizer, decoder...
    assert merged.all_special_tokens == base.all_special_tokens and merged.chat_template == base.chat_template
    assert merged.bos_token_id == base.bos_token_id and merged.eos_token_id == base.eos_token_id
    assert json.loads(base.backend_tokenizer.to_str()) == base_json  # the base was not touched
    copied = {p.name for p in (teachers_dir / "smollm2").iterdir()} & {"tokenizer_config.json",
                                                                        "chat_template.jinja"}
    assert copied == {"tokenizer_config.json", "chat_template.jinja"}


def test_heldout_korean_gets_fewer_tokens_and_english_and_code_are_unchanged(smollm2) -> None:
    base, merged, *_ = smollm2
    heldout = kobill_heldout()
    ratio = token_ratio(heldout, merged, base)
    assert ratio["chars"] == sum(map(len, heldout)) and ratio["docs"] == len(heldout)
    assert ratio["merged_tokens"] / ratio["base_tokens"] == ratio["ratio"] < 0.6  # measured 0.445
    for text in english_texts():
        assert merged(text)["input_ids"] == base(text)["input_ids"]
    for text in heldout[:3]:
        ids = merged(text, add_special_tokens=False)["input_ids"]
        assert merged.decode(ids) == text  # decodes back, byte for byte
        assert max(ids) >= len(base)  # new tokens are used


def test_new_tokens_hold_a_non_ascii_byte_and_are_reachable(smollm2) -> None:
    base, merged, _, merged_json, report = smollm2
    new = [t for t, i in merged.get_vocab().items() if i >= len(base)]
    assert len(new) == 1500 and all(not token_bytes(t).isascii() for t in new)
    bpe = Tokenizer.from_str(json.dumps(merged_json)).model
    dead = [t for t in new if [p.value for p in bpe.tokenize(t)] != [t]]
    assert len(dead) == report.unreachable <= 15  # base merges rarely pre-empt a new one (measured: 2)


def test_korean_bpe_splits_as_the_base_and_is_deterministic(smollm2) -> None:
    base = smollm2[0].backend_tokenizer
    first = train_korean_bpe(kolaw_train(), base, 1000, 2)
    again = train_korean_bpe(kolaw_train(), base, 1000, 2)
    assert first.to_str() == again.to_str()
    as_json, base_json = json.loads(first.to_str()), json.loads(base.to_str())
    assert as_json["pre_tokenizer"] == base_json["pre_tokenizer"]
    assert as_json["normalizer"] == base_json["normalizer"] and as_json["added_tokens"] == []


# --- the merge rules, on a hand-built base whose outcome is known merge by merge ---

def _bytes_of(text: str) -> list[str]:
    """``text``'s byte-level characters, one per byte."""
    (chars, _), = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(text)
    return list(chars)


def _hand_built(pairs_as_strings: bool) -> tuple[dict, Tokenizer, list[str]]:
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    h = _bytes_of("한")  # 3 bytes
    vocab = {c: i for i, c in enumerate(sorted(alphabet))}
    vocab["ab"] = 256
    vocab[h[1] + h[2]] = 257  # a non-ASCII token the base already has
    merges = [["a", "b"], [h[1], h[2]]]
    special = {"id": 300, "content": "<|x|>", "single_word": False, "lstrip": False, "rstrip": False,
               "normalized": False, "special": True}
    base = {"version": "1.0", "added_tokens": [special],
            "normalizer": None, "pre_tokenizer": None, "decoder": None,
            "model": {"type": "BPE", "vocab": vocab,
                      "merges": [" ".join(m) for m in merges] if pairs_as_strings else merges}}
    korean_merges = [
        (h[0], h[1]),            # new: 한's first two bytes
        ("c", "d"),              # ASCII only
        (h[1], h[2]),            # the base has it
        (h[0] + h[1], h[2]),     # new: 한
        ("q" + "r", h[0]),       # "qr" is not a token of the base, nor added
        ("x", h[0] + h[1] + h[2]),  # new: x한 (holds non-ASCII bytes)
        (h[0], h[2]),            # beyond max_new_tokens=3
        ("y", h[0]),
    ]
    kvocab = {c: i for i, c in enumerate(sorted(alphabet))}
    for a, b in korean_merges:
        for t in (a, b, a + b):
            kvocab.setdefault(t, len(kvocab))
    return base, Tokenizer(models.BPE(vocab=kvocab, merges=korean_merges)), h


@pytest.mark.parametrize("as_strings", [True, False])
def test_merge_rules_on_a_hand_built_base(as_strings: bool) -> None:
    base, korean, h = _hand_built(as_strings)
    before = copy.deepcopy(base)
    merged, report = merge_vocab(base, korean, max_new_tokens=3)
    assert base == before
    taken = [(h[0], h[1]), (h[0] + h[1], h[2]), ("x", "".join(h))]
    appended = [f"{a} {b}" if as_strings else [a, b] for a, b in taken]
    assert merged["model"]["merges"] == base["model"]["merges"] + appended
    # ids after the largest in use, the added token's 300 included
    assert {t: merged["model"]["vocab"][t] for t in (h[0] + h[1], "".join(h), "x" + "".join(h))} == \
        {h[0] + h[1]: 301, "".join(h): 302, "x" + "".join(h): 303}
    assert merged["added_tokens"] == base["added_tokens"]
    assert report.base_vocab == 259 and report.added == 3 and report.final_vocab == 304
    assert report.skipped == {"already_in_base": 1, "ascii_only": 1, "part_missing": 1, "over_limit": 2}
    # the base's own merge of 한's last two bytes ranks first, so 한 and x한 are never formed
    bpe = Tokenizer.from_str(json.dumps(merged)).model
    assert [t.value for t in bpe.tokenize(h[0] + h[1])] == [h[0] + h[1]]
    assert [t.value for t in bpe.tokenize("".join(h))] == [h[0], h[1] + h[2]]
    assert report.unreachable == 2


def test_save_merged_into_the_base_folder_itself(tmp_path: Path) -> None:
    """As the adapt-vocab stage does: the base tokenizer saved into a folder, then merged in place."""
    from transformers import AutoTokenizer

    base_dir = english_llama(tmp_path / "m")
    base = AutoTokenizer.from_pretrained(str(base_dir))
    korean = train_korean_bpe(korean_texts()[:3], base.backend_tokenizer, 600, 2)
    merged_json, report = merge_vocab(json.loads(base.backend_tokenizer.to_str()), korean, 50)
    base.save_pretrained(str(tmp_path / "tok"))
    save_merged(tmp_path / "tok", merged_json, tmp_path / "tok")
    merged = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert report.added == 50 and len(merged) == len(base) + 50
    assert (merged.bos_token, merged.eos_token, merged.pad_token) == ("<s>", "</s>", "</s>")
    assert not list(tmp_path.glob("tok/.*"))  # no temporary left behind
    with pytest.raises(ValueError, match="not BPE"):
        merge_vocab({**merged_json, "model": {"type": "Unigram"}}, korean, 5)
