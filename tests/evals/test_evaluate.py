from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from dasi.runlog import LoggingConfig, RunLog
from evals.evaluate import EvaluateConfig, heldout_texts, run
from evals.harness import TaskSpec, shipped_task_yaml, write_local_task
from tests.conftest import write_curated_dir

REPO = Path(__file__).resolve().parents[2]
COPA = REPO / "evals" / "data" / "copa_ko_mini.jsonl"
ORIGIN = "32 hand-written Korean items in KoBEST COPA format, not KoBEST"

KO_LONG = "모든 국민은 법 앞에 평등하다. 누구든지 성별·종교 또는 사회적 신분에 의하여 차별을 받지 아니한다. "
EN_LONG = "The json module exposes an API familiar to users of the marshal and pickle modules. "
DOCS = [
    ("ko-1", "ko", "heldout", KO_LONG * 3),
    ("ko-2", "ko", "heldout", "국가는 전통문화의 계승·발전과 민족문화의 창달에 노력하여야 한다."),
    ("ko-3", "ko", "train", "이 문서는 학습용이므로 평가에 쓰이지 않는다."),
    ("en-1", "en", "heldout", EN_LONG * 3),
    ("en-2", "en", "heldout", "Heaps are binary trees for which every parent node is at most its children."),
    ("code-1", "code", "heldout", "def f(x):\n    return x + 1\n"),
]


@pytest.fixture()
def curated(tmp_path: Path) -> Path:
    rows = [{"doc_id": d, "source": "test", "kind": "natural", "lang": lang, "text": t, "n_chars": len(t),
             "split": s, "provenance": "{}"} for d, lang, s, t in DOCS]
    return write_curated_dir(tmp_path / "curated", rows)


def test_copa_ko_mini_follows_the_kobest_copa_format() -> None:
    from lm_eval.tasks.kobest import utils  # lm-eval's own KoBEST prompt functions

    docs = [json.loads(line) for line in COPA.read_text(encoding="utf-8").splitlines()]
    assert 20 <= len(docs) <= 40
    for d in docs:
        assert set(d) == {"premise", "question", "alternative_1", "alternative_2", "label"}
        assert d["question"] in ("원인", "결과") and d["label"] in (0, 1)
        assert utils.copa_doc_to_text(d).startswith(d["premise"])
        assert utils.copa_doc_to_target(d) == utils.copa_doc_to_choice(d)[d["label"]]
    labels = [d["label"] for d in docs]
    assert 0.3 < sum(labels) / len(labels) < 0.7  # no constant-answer shortcut


def test_local_task_yaml_includes_lm_evals_config(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="source local needs format, local_file, origin"):
        TaskSpec(name="copa_ko_mini", source="local")
    with pytest.raises(ValueError, match="'kobest_copa' is lm-eval's name for the real benchmark"):
        TaskSpec(name="kobest_copa", source="local", format="kobest_copa", local_file=str(COPA),
                 origin=ORIGIN)
    task = TaskSpec(name="copa_ko_mini", source="local", format="kobest_copa", local_file=str(COPA),
                    origin=ORIGIN)
    path = write_local_task(task, tmp_path)
    spec = yaml.safe_load(path.read_text())
    assert spec["include"] == str(shipped_task_yaml("kobest_copa"))
    assert spec["include"].endswith("lm_eval/tasks/kobest/kobest_copa.yaml")
    assert spec["task"] == "copa_ko_mini" and spec["dataset_path"] == "json" and spec["tag"] == []
    assert spec["dataset_kwargs"]["data_files"]["test"] == str(COPA)
    assert TaskSpec(name="kobest_copa").registered_name == "kobest_copa"  # hub by default


def test_heldout_texts_per_language(curated: Path) -> None:
    texts = heldout_texts(curated, ["ko", "en"], None)
    assert [len(texts["ko"]), len(texts["en"])] == [2, 2]
    assert all("학습용" not in t for t in texts["ko"])
    assert heldout_texts(curated, ["ko"], 1)["ko"] == [DOCS[0][3]]
    empty = write_curated_dir(curated.parent / "empty", [])
    with pytest.raises(ValueError, match="no held-out"):
        heldout_texts(empty, ["ko"], None)


def test_evaluate_two_models(tiny_model: Path, tmp_path: Path, curated: Path) -> None:
    from transformers import AutoModelForCausalLM

    # a second model: the same weights with a perturbed output layer, saved without a tokenizer
    other = tmp_path / "other"
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    model.lm_head.weight.data.mul_(4.0)
    model.save_pretrained(str(other))

    cfg = EvaluateConfig(tasks=[TaskSpec(name="copa_ko_mini", source="local", format="kobest_copa",
                                         local_file=str(COPA), origin=ORIGIN)],
                         limit=20, bpb_window=48, chat_template=["sft"])
    out, work = tmp_path / "eval.json", tmp_path / "work"
    logging = LoggingConfig(logs_dir=str(tmp_path / "logs"), wandb=False, tensorboard=False)
    with RunLog("evaluate", cfg, logging=logging) as log:
        report = run(cfg, {"base": tiny_model, "sft": other}, curated, tiny_model, out, work, log)

    assert json.loads(out.read_text()) == report
    assert set(report["models"]) == {"base", "sft"}
    for name in ("base", "sft"):
        copa = report["models"][name]["tasks"]["copa_ko_mini"]
        assert copa["n"] == 20 and 0.0 <= copa["acc"] <= 1.0 and "f1" in copa
        assert copa["acc"] * 20 == pytest.approx(round(copa["acc"] * 20))  # a count of right answers
        for lang in ("ko", "en"):
            bpb = report["models"][name]["bpb"][lang]
            assert math.isfinite(bpb) and bpb > 0
    # a random model is near uniform: about log2(2048)=11 bits per token
    assert report["models"]["base"]["nll_per_token"]["ko"] == pytest.approx(math.log(2048), rel=0.05)
    # the sharpened random head is worse than the near-uniform one
    assert report["models"]["sft"]["bpb"]["en"] > report["models"]["base"]["bpb"]["en"]
    assert report["bpb_docs"] == {"ko": 2, "en": 2}
    # every lm-eval / datasets cache landed in the work folder
    assert (work / "hf_home" / "datasets").is_dir()
    assert (work / "tasks" / "copa_ko_mini.yaml").is_file()
    assert "Running loglikelihood requests" in (log.dir / "harness.log").read_text()  # in the run log
    summary = json.loads((log.dir / "summary.json").read_text())
    assert summary["base/copa_ko_mini/acc"] == report["models"]["base"]["tasks"]["copa_ko_mini"]["acc"]

    with pytest.raises(ValueError, match="no tokenizer"):
        with RunLog("evaluate", cfg, logging=logging) as log:
            run(EvaluateConfig(tasks=[]), {"x": other}, curated, None, tmp_path / "e2.json", work, log)
