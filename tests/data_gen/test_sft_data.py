import json

import pytest
import yaml

from dasi.formats import read_parquet
from data_gen.engines import SamplingConfig
from data_gen.generate import GenerateConfig
from data_gen.sft_data import PROMPTS_FILE, SftDataConfig, answer_ok, run
from tests.data_gen.conftest import TEACHER


def test_answer_check():
    cfg = SftDataConfig(min_answer_chars=5)
    assert answer_ok("ko", "Hello there, friend", cfg) == "low_hangul"
    assert answer_ok("ko", "안녕하세요, 반갑습니다", cfg) is None
    assert answer_ok("en", "ok", cfg) == "too_short"


@pytest.mark.slow
def test_teacher_chats_with_provenance(tmp_path, engine, runlog):
    cfg = SftDataConfig(prompts_file=str(PROMPTS_FILE), sampling=SamplingConfig(max_new_tokens=24),
                        min_answer_chars=5)
    gen = GenerateConfig(engine="transformers", teacher=TEACHER)
    with runlog("sft-data") as log:
        summary = run(cfg, gen, tmp_path / "chats.parquet", log, engine=engine)
    n_prompts = sum(len(v) for v in yaml.safe_load(PROMPTS_FILE.read_text())["prompts"].values())
    dropped = sum(v for k, v in summary.items() if k.startswith("dropped_"))
    assert summary["prompts"] == n_prompts == summary["chats"] + dropped
    chats = read_parquet(tmp_path / "chats.parquet", "chats").to_pylist()
    assert len(chats) == summary["chats"] and any(c["lang"] == "en" for c in chats)
    msgs = json.loads(chats[0]["messages"])
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"] and msgs[2]["content"]
    assert json.loads(chats[0]["provenance"])["teacher_id"] == TEACHER.id
    # The contract with the sft stage: its reader validates every chat.
    from instruct.chats import read_chats

    assert [c.id for c in read_chats(tmp_path / "chats.parquet")] == [c["id"] for c in chats]
