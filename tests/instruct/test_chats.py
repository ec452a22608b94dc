from __future__ import annotations

import json
from pathlib import Path

import pytest

from instruct.chats import (
    SEED_FILE,
    Chat,
    ChatFormatError,
    read_chats,
    split_heldout,
    write_chats,
)


def test_seed_file_is_bilingual_and_versioned() -> None:
    chats = read_chats(SEED_FILE)
    assert len(chats) == 40
    assert sum(c.lang == "ko" for c in chats) == 20
    assert sum(c.lang == "en" for c in chats) == 20
    raw = [json.loads(line) for line in SEED_FILE.read_text(encoding="utf-8").splitlines()]
    assert {r["schema"] for r in raw} == {"dasi.chat/1"}
    for c in chats:
        assert c.messages[-1].role == "assistant"
        if c.lang == "ko":  # Korean chats really are Korean
            assert any("\uac00" <= ch <= "\ud7a3" for ch in c.messages[-1].content)


@pytest.mark.parametrize("bad", [
    {"id": "x", "lang": "ko", "source": "s", "messages": [{"role": "user", "content": "hi"},
                                                         {"role": "user", "content": "again"}]},
    {"id": "x", "lang": "fr", "source": "s", "messages": [{"role": "user", "content": "hi"},
                                                         {"role": "assistant", "content": "yo"}]},
    {"id": "x", "lang": "en", "source": "s", "messages": [{"role": "user", "content": "hi"},
                                                         {"role": "assistant", "content": ""}]},
    {"id": "x", "lang": "en", "source": "s", "turns": []},
])
def test_bad_records_are_refused(tmp_path: Path, bad: dict) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(ChatFormatError, match="bad.jsonl:1"):
        read_chats(path)


def test_heldout_split_is_deterministic_and_per_language() -> None:
    chats = read_chats(SEED_FILE)
    train, held = split_heldout(chats, 0.2)
    assert [c.id for c in held] == [c.id for c in split_heldout(list(reversed(chats)), 0.2)[1]]
    assert sum(c.lang == "ko" for c in held) == 4 and sum(c.lang == "en" for c in held) == 4
    assert not {c.id for c in train} & {c.id for c in held}
    assert len(train) + len(held) == len(chats)
    all_train, none_held = split_heldout(chats, 0.0)
    assert none_held == [] and len(all_train) == len(chats)


def test_chat_model_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError):
        Chat.model_validate({"id": "a", "lang": "en", "source": "s", "extra": 1,
                             "messages": [{"role": "user", "content": "q"},
                                          {"role": "assistant", "content": "a"}]})




def test_parquet_roundtrip_keeps_provenance(tmp_path: Path) -> None:
    chats = read_chats(SEED_FILE)[:3]
    chats = [c.model_copy(update={"provenance": '{"teacher_id": "t"}'}) for c in chats]
    path = tmp_path / "chats.parquet"
    assert write_chats(path, chats) == 3
    assert read_chats(path) == chats
