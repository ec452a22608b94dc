import json
import pickle
from pathlib import Path

import pytest
from datatrove.data import Document
from pydantic import ValidationError

from data_gen.decontam import (
    DecontamConfig,
    DecontaminationFilter,
    NgramIndex,
    evaluation_items,
    unindexed_tasks,
    words,
)
from data_gen.sources import KonlpySource, iter_documents
from evals.evaluate import DEFAULT_TASKS
from evals.harness import TaskSpec

REPO = Path(__file__).resolve().parents[2]
LONG = ("국회는 국민의 대표로 구성되며 법률안을 심의하고 의결한다 예산안을 심의하고 확정하며 "
        "국정을 감사하거나 특정한 국정사안에 대하여 조사할 수 있다")  # 18 words


@pytest.fixture
def copa_items(monkeypatch) -> list[tuple[str, str]]:
    monkeypatch.chdir(REPO)  # local task files are relative to the repository root
    return list(evaluation_items(DEFAULT_TASKS))


def test_normalized_words():
    assert words("Hello, ＷＯＲＬＤ!  비가—많이 내렸다.") == ["hello", "world", "비가", "많이", "내렸다"]


def test_evaluation_items_of_the_local_copa_task(copa_items):
    assert len(copa_items) == 32
    assert copa_items[0] == ("copa_ko_mini/0", "비가 많이 내렸다. 길이 물에 잠겼다. 하늘이 맑아졌다.")
    assert unindexed_tasks(DEFAULT_TASKS) == []


def test_hub_tasks_are_reported_not_silently_skipped():
    tasks = [TaskSpec(name="kobest_hellaswag"), *DEFAULT_TASKS]
    assert unindexed_tasks(tasks) == ["kobest_hellaswag"]
    with pytest.raises(ValueError, match="wic_ko_mini"):
        list(evaluation_items([TaskSpec(name="wic_ko_mini", source="local", format="kobest_wic",
                                        origin="test items", local_file="x.jsonl")]))


def test_long_items_give_every_ngram_short_items_one_gram_tiny_items_none():
    index = NgramIndex(n=13, min_words=8)
    assert index.add("long", LONG) == 18 - 13 + 1
    assert index.add("short", "비가 많이 내렸다. 길이 물에 잠겼다. 하늘이 맑아졌다.") == 1
    assert index.add("tiny", "비가 많이 내렸다.") == 0
    assert len(index) == 7 and index.item_ids == ["long", "short"]
    middle = " ".join(LONG.split()[3:16])  # any 13 consecutive words of the long item
    assert index.match(f"서문. {middle} 끝.") == "long"
    assert index.match(" ".join(LONG.split()[3:15])) is None  # 12 words are not enough
    assert index.match("오늘 비가 많이 내렸다. 길이 물에 잠겼다! 하늘이 맑아졌다. 그래서") == "short"
    assert index.match("비가 많이 내렸다. 길이 물에 잠겼다.") is None


def test_planted_item_is_dropped_unrelated_kept_and_reported(copa_items, tmp_path):
    index = NgramIndex()
    for item_id, text in copa_items:
        index.add(item_id, text)
    kolaw = next(iter_documents(KonlpySource(type="konlpy", name="kolaw", lang="ko", corpus="kolaw")))
    item_id, item = copa_items[5]
    planted = kolaw["text"][:600] + "\n" + item + "\n" + kolaw["text"][600:1200]
    docs = [Document(text=planted, id="syn-1", metadata={"source": "synthetic_ko"}),
            Document(text=kolaw["text"], id=kolaw["doc_id"], metadata={"source": "kolaw"})]
    path = tmp_path / "index.npz"
    index.save(path)
    step = pickle.loads(pickle.dumps(DecontaminationFilter(str(path), tmp_path / "decontam")))
    kept = list(step.run(iter(docs), rank=3))
    assert [d.id for d in kept] == [kolaw["doc_id"]]
    report = (tmp_path / "decontam" / "00003.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in report] == [
        {"doc_id": "syn-1", "source": "synthetic_ko", "matched_item": item_id}]
    stats = step.stats.stats
    assert stats["dropped/synthetic_ko"].total == 1 and stats["dropped_decontaminated"].total == 1
    assert "dropped/kolaw" not in stats
    pickle.dumps(step)  # still picklable after a run


def test_save_load_round_trip(copa_items, tmp_path):
    index = NgramIndex(n=5, min_words=3)
    for item_id, text in copa_items:
        index.add(item_id, text)
    index.add("heldout/ko-000001", LONG)
    index.save(tmp_path / "idx")
    assert (tmp_path / "idx").is_file()
    loaded = NgramIndex.load(tmp_path / "idx")
    assert (loaded.n, loaded.min_words, len(loaded)) == (5, 3, len(index))
    assert loaded.item_ids == index.item_ids
    for probe in (LONG, copa_items[7][1], "관련 없는 문장입니다 정말로 전혀 관련이 없습니다"):
        assert loaded.match(probe) == index.match(probe)
    assert loaded.match(LONG) == "heldout/ko-000001"


def test_unknown_format_and_bad_config_are_refused(tmp_path):
    import numpy as np

    with open(tmp_path / "old", "wb") as f:
        np.savez(f, meta=np.array(json.dumps({"format": "ngram-index/0"})))
    with pytest.raises(ValueError, match="ngram-index/0"):
        NgramIndex.load(tmp_path / "old")
    with pytest.raises(ValidationError, match="min_words"):
        DecontamConfig(n=5, min_words=8)


class ReferenceIndex:
    """The plain definition: a dict of word tuples, each gram checked one at a time; at one text
    position the shorter gram first, and a gram shared by two items belongs to the first added."""

    def __init__(self, n: int, min_words: int) -> None:
        self.n, self.min_words, self.grams = n, min_words, {}

    def add(self, item_id: str, text: str) -> None:
        ws = words(text)
        length = min(self.n, len(ws))
        if length >= self.min_words:
            for i in range(len(ws) - length + 1):
                self.grams.setdefault(tuple(ws[i: i + length]), item_id)

    def match(self, text: str) -> str | None:
        ws, lengths = words(text), sorted({len(g) for g in self.grams})
        for i in range(len(ws)):
            for length in lengths:
                if i + length <= len(ws) and (hit := self.grams.get(tuple(ws[i: i + length]))):
                    return hit
        return None


@pytest.mark.parametrize("n,min_words", [(13, 8), (5, 3)])
def test_vectorised_match_agrees_with_the_per_gram_reference(copa_items, n, min_words):
    import random

    docs = [d for c in ("kolaw", "kobill")
            for d in iter_documents(KonlpySource(type="konlpy", name=c, lang="ko", corpus=c))]
    items = [*copa_items, *((f"heldout/{d['doc_id']}", d["text"]) for d in docs[::4])]
    index, reference = NgramIndex(n=n, min_words=min_words), ReferenceIndex(n, min_words)
    for item_id, text in items:
        index.add(item_id, text)
        reference.add(item_id, text)
    rng = random.Random(0)
    spliced = []  # a span of an item (some too short to match) amid another document's words
    for _ in range(40):
        host = rng.choice(docs)["text"].split()
        span = rng.choice(items)[1].split()
        start, size = rng.randrange(len(span)), rng.randint(2, 16)
        at = rng.randrange(len(host))
        spliced.append(" ".join(host[:at] + span[start: start + size] + host[at:]))
    probes = [d["text"] for d in docs] + [t for _, t in copa_items] + spliced
    got = [index.match(p) for p in probes]
    assert got == [reference.match(p) for p in probes]
    assert sum(g is not None for g in got) >= len(docs) // 4 + 32  # the indexed ones, at least
