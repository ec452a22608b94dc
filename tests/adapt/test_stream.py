from __future__ import annotations

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
