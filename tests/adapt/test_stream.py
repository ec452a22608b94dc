from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapt.stream import BlockDataset, BlockStream, range_summary
from tests.adapt.tiny import curated_dir, english_llama


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, object]:
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("stream")
    model = english_llama(root / "model")
    return curated_dir(root / "curated"), AutoTokenizer.from_pretrained(str(model))


def take(stream: BlockStream, n: int) -> list[tuple[str, list[int]]]:
    return [b for _, b in zip(range(n), stream, strict=False)]


def test_blocks_interleave_by_weight_and_repeat_a_language_read_to_its_end(setup) -> None:
    curated, tok = setup
    stream = BlockStream(curated, tok, 32, {"ko": 3, "en": 1})
    blocks = take(stream, 400)
    langs = [lang for lang, _ in blocks]
    assert langs[:4].count("ko") == 3 and langs.count("ko") == 300
    assert all(len(b) == 32 for _, b in blocks)
    summary = stream.summary()
    assert summary["en"]["epochs_completed"] >= 1  # 100 blocks of 32 tokens: more than the English docs hold
    assert summary["ko"]["tokens"] == 300 * 32


def test_a_phase_range_is_the_same_slice_of_one_stream(setup) -> None:
    curated, tok = setup
    whole = [b for _, b in take(BlockStream(curated, tok, 32, {"ko": 3, "en": 1}), 12)]
    first = [x["input_ids"].tolist() for x in BlockDataset(curated, tok, 32, {"ko": 3, "en": 1}, 0, 8)]
    second = [x["input_ids"].tolist() for x in BlockDataset(curated, tok, 32, {"ko": 3, "en": 1}, 8, 4)]
    assert first + second == whole
    again = [x["input_ids"].tolist() for x in BlockDataset(curated, tok, 32, {"ko": 3, "en": 1}, 8, 4)]
    assert again == second  # deterministic: a resumed Trainer skipping batches sees the same blocks
    a = range_summary(curated, tok, 32, {"ko": 3, "en": 1}, 8, 4)
    b = range_summary(curated, tok, 32, {"ko": 3, "en": 1}, 4, 4)
    assert a["tokens"] == 128 and a["blocks_sha256"] != b["blocks_sha256"]


def test_no_text_in_a_weighted_language_stops_with_its_name(setup, tmp_path: Path) -> None:
    curated, tok = setup
    with pytest.raises(ValueError, match="no train documents in language 'code'"):
        take(BlockStream(curated, tok, 32, {"ko": 1, "code": 1}), 4)


class CountingTokenizer:
    """The tokenizer, counting the texts it is asked to tokenize."""

    def __init__(self, tok) -> None:
        self.tok, self.texts = tok, 0
        self.eos_token_id, self.backend_tokenizer = tok.eos_token_id, tok.backend_tokenizer

    def __call__(self, text, **kw):
        self.texts += 1
        return self.tok(text, **kw)


@pytest.mark.parametrize("cut", [1, 7, 40, 150])
def test_a_stream_from_a_cursor_goes_on_as_the_stream_would(setup, cut: int) -> None:
    """Cuts inside a long Korean document (it fills about a hundred blocks here: the English BPE
    takes Korean byte by byte) and, at 150 blocks, after English has started over."""
    curated, tok = setup
    weights = {"ko": 3, "en": 1}
    whole = BlockStream(curated, tok, 32, weights)
    head = take(whole, cut)
    cursor = json.loads(json.dumps(whole.cursor()))  # as saved in a phase's folder
    assert cursor["block"] == cut and sum(cursor["taken"].values()) == cut
    rest = take(whole, 60)
    resumed = BlockStream(curated, tok, 32, weights, cursor=cursor)
    assert take(resumed, 60) == rest
    assert resumed.summary() == whole.summary()  # docs, epochs, bytes and doc order carried over
    assert len(head) == cut
    if cut == 150:
        assert cursor["langs"]["en"]["epochs"] >= 1
    else:
        assert len(cursor["langs"]["ko"]["buf"]) > 32


def test_a_stream_from_a_cursor_tokenizes_nothing_before_it(setup) -> None:
    curated, tok = setup
    weights = {"ko": 3, "en": 1}
    counting = CountingTokenizer(tok)
    stream = BlockStream(curated, counting, 32, weights)
    take(stream, 60)
    cursor, before = stream.cursor(), counting.texts
    take(stream, 4)
    needed = counting.texts - before  # what four more blocks take, reading on
    counting.texts = 0
    assert take(BlockStream(curated, counting, 32, weights, cursor=cursor), 4)
    assert counting.texts == needed < before


def test_a_cursor_is_refused_by_another_stream(setup) -> None:
    curated, tok = setup
    stream = BlockStream(curated, tok, 32, {"ko": 3, "en": 1})
    take(stream, 5)
    for seq, weights in ((16, {"ko": 3, "en": 1}), (32, {"ko": 1, "en": 1})):
        with pytest.raises(ValueError, match="cursor was made from other data, tokenizer or settings"):
            BlockStream(curated, tok, seq, weights, cursor=stream.cursor())


def test_a_dataset_records_its_range_as_a_fresh_read_does(setup) -> None:
    curated, tok = setup
    weights = {"ko": 3, "en": 1}
    stream = BlockStream(curated, tok, 32, weights)
    take(stream, 8)
    at8 = stream.cursor()
    take(stream, 4)
    fresh = range_summary(curated, tok, 32, weights, 8, 4)  # from block 0
    for cursor in (None, at8):
        data = BlockDataset(curated, tok, 32, weights, 8, 4, cursor)
        blocks = [x["input_ids"].tolist() for x in data]
        assert blocks == [b for _, b in take(BlockStream(curated, tok, 32, weights), 12)][8:]
        assert data.record == fresh
        assert data.record["cursor"] == stream.cursor()  # where the next phase starts
    # a cursor standing elsewhere is not used: the dataset reads from block 0
    assert BlockDataset(curated, tok, 32, weights, 4, 4, at8).cursor is None
