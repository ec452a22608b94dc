"""`dvc repro` on a copy of the repository with the tiny profile, then its outputs checked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def sh(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               DVC_NO_ANALYTICS="1")
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise AssertionError(f"{args} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A clean copy of the working tree (tracked + unignored files) as its own git repo."""
    dst = tmp_path_factory.mktemp("e2e") / "repo"
    files = sh(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], REPO).stdout
    for rel in filter(None, files.split("\0")):
        src = REPO / rel
        if src.is_file() and not rel.startswith(("logs/", "data/", "metrics/")) and rel != "dvc.lock":
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    sh(["git", "init", "-q"], dst)
    sh(["git", "add", "-A"], dst)
    sh(["git", "-c", "user.name=ci", "-c", "user.email=ci@dasi", "commit", "-qm", "e2e"], dst)
    sh(["dvc", "repro"], dst)
    return dst


def test_data_half_outputs(repo):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from dasi.formats import read_parquet
    from pretrain.pack import load_manifest

    docs = read_parquet(repo / "data/seeds/documents.parquet", "documents").to_pylist()
    assert {d["lang"] for d in docs} == {"ko", "en", "code"}
    reqs = read_parquet(repo / "data/seeds/requests.parquet", "requests").to_pylist()
    gen = read_parquet(sorted((repo / "data/generated").glob("shard-*.parquet")), "generated")
    assert gen.num_rows == len(reqs) == 24
    for row in gen.to_pylist():
        assert row["teacher_id"] and len(row["teacher_file_hash"]) == 64
        assert row["engine"] == "transformers" and row["template_hash"] and row["seed_doc_id"]
        assert row["completion_tokens"] > 0 and row["finish_reason"] in ("stop", "length")
    stats = json.loads((repo / "metrics/curate.json").read_text())
    assert stats["input_documents"] == len(docs) + len(reqs)
    assert stats["kept_documents"] + sum(stats["removed_documents"].values()) == stats["input_documents"]
    curated = read_parquet(repo / "data/curated/documents.parquet", "curated")
    assert curated.num_rows == stats["kept_documents"]
    eff = json.loads((repo / "metrics/tokenizer.json").read_text())
    assert set(eff["chars_per_token"]) == {"dasi", "cl100k_base", "o200k_base", "llama3", "qwen3"}
    manifest = load_manifest(repo / "data/packed/manifest.json")
    for d in manifest.datasets:
        ds = IndexedDataset(str(repo / "data/packed" / d.prefix))
        assert len(ds) == d.documents and int(ds.sequence_lengths.sum()) == d.tokens
    for stage in ("seeds", "generate", "sft-data", "curate", "tokenizer", "pack", "pretrain", "export",
                  "sft", "evaluate", "release"):
        runs = list((repo / "logs" / stage).iterdir())
        run = json.loads((runs[0] / "run.json").read_text())
        assert run["status"] == "ok", stage
        assert json.loads((runs[0] / "env.json").read_text())["git"]["commit"]


def test_model_half_outputs(repo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from instruct.chats import read_chats

    pretrain = json.loads((repo / "metrics/pretrain.json").read_text())
    assert pretrain["steps"] == 300 and pretrain["final_train_loss"] < pretrain["first_train_loss"] - 1
    export = json.loads((repo / "metrics/export.json").read_text())
    assert export["passed"] and export["max_abs_logit_diff"] < 1e-4
    assert read_chats(repo / "data/sft/teacher_chats.parquet")
    sft = json.loads((repo / "metrics/sft.json").read_text())
    assert sft["heldout_loss_after"] < sft["heldout_loss_before"]
    evals = json.loads((repo / "metrics/eval.json").read_text())
    for name in ("base", "sft"):
        m = evals["models"][name]
        assert m["tasks"]["kobest_copa"]["n"] == 32 and 0 <= m["tasks"]["kobest_copa"]["acc"] <= 1
        assert set(m["bpb"]) == {"ko", "en"} and all(0 < v < 8 for v in m["bpb"].values())
    for folder in ("data/hf/base", "data/hf/sft"):
        tok = AutoTokenizer.from_pretrained(repo / folder)
        model = AutoModelForCausalLM.from_pretrained(repo / folder)
        ids = tok.apply_chat_template([{"role": "user", "content": "안녕?"}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        out = model.generate(**ids, max_new_tokens=4, do_sample=False)
        assert out.shape[1] > ids["input_ids"].shape[1]
    shown = sh(["dvc", "metrics", "show"], repo).stdout
    for key in ("chars_per_token.dasi.ko", "kept_documents", "final_train_loss", "max_abs_logit_diff",
                "models.sft.tasks.kobest_copa.acc", "models.base.bpb.ko"):
        assert key in shown, key


def test_release_checksums_match(repo):
    rel = repo / "releases" / "tiny"
    assert sh(["sha256sum", "-c", "--quiet", "SHA256SUMS"], rel).returncode == 0
    listed = {line.split("  ", 1)[1] for line in (rel / "SHA256SUMS").read_text().splitlines()}
    assert {"README.md", "results.json", "dvc.lock", "models/base/model.safetensors",
            "models/sft/model.safetensors"} <= listed
    card = (rel / "README.md").read_text()
    assert "## English" in card and "## 한국어" in card and "kobest_copa" in card
    lock = (rel / "dvc.lock").read_text()
    assert all(f"  {s}:" in lock for s in ("seeds", "generate", "pretrain", "export", "sft", "evaluate"))
    ignored = (rel / ".gitignore").read_text()
    assert "/models" in ignored  # the weights go to the DVC remote, not git


def test_rerun_is_a_no_op_and_a_param_reruns_only_its_stages(repo):
    assert "up to date" in sh(["dvc", "status"], repo).stdout.lower()
    params = repo / "params.yaml"
    original = params.read_text()
    params.write_text(original.replace("tokenizer: {}", "tokenizer: {vocab_size: 1024}"))
    out = sh(["dvc", "repro", "pack"], repo).stdout
    ran = [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")]
    assert ran == ["tokenizer", "pack"]
    assert json.loads((repo / "metrics/tokenizer.json").read_text())["vocab_size"] <= 1024

    params.write_text(original.replace("curate: {}", "curate: {min_hangul_ratio: 2}"))
    bad = sh(["dvc", "repro", "pack"], repo, check=False)
    assert bad.returncode != 0
    assert ("dasi: config error: curate.min_hangul_ratio = 2: Input should be less than or equal to 1"
            in bad.stderr + bad.stdout)
    params.write_text(original)
