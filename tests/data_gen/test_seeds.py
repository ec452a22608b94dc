import pytest

from dasi.config import ConfigError
from data_gen.seeds import SeedsConfig, build_requests, routed_templates
from data_gen.teacher import TeachersConfig
from data_gen.templates import TEMPLATES_DIR, Template, load_instructions, load_templates
from tests.conftest import REPO

TEACHERS = TeachersConfig.model_validate({"teachers": {
    "base-t": {"id": "g", "kind": "base", "license": "x", "output_terms": "-",
               "source": {"path": "/nowhere"}},
    "chat-t": {"id": "s", "kind": "instruct", "license": "y", "output_terms": "-",
               "source": {"path": "/nowhere"}},
}})


def make_cfg(**kw) -> SeedsConfig:
    templates = [{"id": t.id, "teacher": "base-t" if t.teacher_kind == "base" else "chat-t"}
                 for t in load_templates(TEMPLATES_DIR)]
    base = {"sources": [{"name": "kolaw", "type": "konlpy", "corpus": "kolaw", "lang": "ko"}],
            "templates": templates, "requests_per_template": 2,
            "templates_dir": str(REPO / "data_gen" / "templates")}
    return SeedsConfig.model_validate({**base, **kw})


def test_templates_cover_kinds_styles_and_languages():
    templates = load_templates(TEMPLATES_DIR)
    kinds = {(t.lang, t.teacher_kind, t.purpose) for t in templates}
    assert {("ko", "base", "pretrain"), ("ko", "base", "sft"), ("en", "instruct", "pretrain"),
            ("en", "instruct", "sft")} <= kinds
    assert {t.style for t in templates if t.lang == "ko"} >= {"textbook", "explainer", "qa", "rephrase"}
    assert all(len(t.hash) == 64 for t in templates)


def test_template_shapes_are_checked():
    with pytest.raises(ValueError, match="instruct template has a prompt"):
        Template(id="x", version=1, lang="en", style="s", teacher_kind="instruct", seed_langs=["en"],
                 head="{audience} {topic} {seed}")
    with pytest.raises(ValueError, match="lacks slots"):
        Template(id="x", version=1, lang="ko", style="s", teacher_kind="base", seed_langs=["ko"],
                 head="# {topic}")


def test_requests_are_seeded_routed_and_fill_every_slot(natural_docs):
    cfg = make_cfg()
    a, b = build_requests(cfg, TEACHERS, natural_docs), build_requests(cfg, TEACHERS, natural_docs)
    assert a == b
    templates = load_templates(TEMPLATES_DIR)
    instructions, _ = load_instructions(TEMPLATES_DIR)
    n_pretrain = 2 * sum(t.purpose == "pretrain" for t in templates)
    n_sft = sum(len(instructions.prompts[t.lang]) for t in templates if t.purpose == "sft")
    assert len(a) == n_pretrain + n_sft
    docs = {d["doc_id"]: d for d in natural_docs}
    for r in a:
        assert "{" not in r["prompt"]
        assert r["teacher"] == ("base-t" if r["teacher_kind"] == "base" else "chat-t")
        if r["teacher_kind"] == "base":
            assert r["prompt"].endswith(r["head"]) and r["head"]  # the document starts the continuation
        if r["purpose"] == "pretrain":
            assert r["audience"] in r["prompt"] + r["head"] and r["topic"] in r["prompt"] + r["head"]
            assert docs[r["seed_doc_id"]]["lang"] in ({"ko"} if r["lang"] == "ko" else {"en", "code"})
        else:
            assert r["instruction"] in r["prompt"] and r["seed_doc_id"] is None
    assert [r["teacher"] for r in a] == sorted(r["teacher"] for r in a)  # one engine per teacher
    assert build_requests(make_cfg(seed=99), TEACHERS, natural_docs) != a


def test_a_template_refuses_a_teacher_of_the_wrong_kind():
    cfg = make_cfg(templates=[{"id": "textbook-ko", "teacher": "chat-t"}])
    with pytest.raises(ConfigError, match="textbook-ko needs a base teacher, 'chat-t' is instruct"):
        routed_templates(cfg, TEACHERS)
    with pytest.raises(ConfigError, match="names teacher 'nope'"):
        routed_templates(make_cfg(templates=[{"id": "qa-en", "teacher": "nope"}]), TEACHERS)
