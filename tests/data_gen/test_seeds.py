from data_gen.seeds import SeedsConfig, build_requests
from data_gen.templates import TEMPLATES_DIR, load_templates
from tests.conftest import REPO


def make_cfg(**kw) -> SeedsConfig:
    base = {"sources": [{"name": "kolaw", "type": "konlpy", "corpus": "kolaw", "lang": "ko"}],
            "requests_per_template": 2, "templates_dir": str(REPO / "data_gen" / "templates")}
    return SeedsConfig.model_validate({**base, **kw})


def test_templates_cover_styles_and_languages():
    templates = load_templates(TEMPLATES_DIR)
    assert {(t.lang, t.style) for t in templates} >= {
        (lang, style) for lang in ("ko", "en") for style in ("textbook", "story", "qa")}
    assert all(len(t.hash) == 64 for t in templates)


def test_requests_are_seeded_and_fill_every_slot(natural_docs):
    cfg = make_cfg()
    a, b = build_requests(cfg, natural_docs), build_requests(cfg, natural_docs)
    assert a == b
    assert len(a) == 2 * len(load_templates(TEMPLATES_DIR))
    docs = {d["doc_id"]: d for d in natural_docs}
    for r in a:
        assert "{" not in r["prompt"] and r["audience"] in r["prompt"] and r["topic"] in r["prompt"]
        assert docs[r["seed_doc_id"]]["lang"] in ({"ko"} if r["lang"] == "ko" else {"en", "code"})
    assert [r["lang"] for r in a] == sorted(r["lang"] for r in a)  # batches stay single-language
    other = build_requests(make_cfg(seed=99), natural_docs)
    assert other != a
