import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dasi.integrity import IntegrityError
from pretrain.pack import PackConfig, blend_weights, load_manifest, run, verify_manifest
from pretrain.tokenizer import TokenizerConfig
from pretrain.tokenizer import run as train_tokenizer


def test_blend_weights_split_language_share_by_tokens():
    w = blend_weights({"a": 300, "b": 100, "c": 50}, {"a": "ko", "b": "ko", "c": "en"},
                      {"ko": 0.6, "en": 0.4})
    assert w == pytest.approx({"a": 0.45, "b": 0.15, "c": 0.4})
    with pytest.raises(ValueError, match=r"no weight for languages \['code'\]"):
        blend_weights({"a": 1}, {"a": "code"}, {"ko": 1.0})


def test_pack_writes_megatron_readable_data_and_manifest(tmp_path, curated_file, runlog):
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from transformers import AutoTokenizer

    from dasi.formats import read_parquet

    with runlog("tokenizer") as log:
        train_tokenizer(TokenizerConfig(vocab_size=500, sample_chars={"ko": 5000, "en": 5000,
                                                                      "code": 5000}, references=[]),
                        curated_file, tmp_path / "tok", tmp_path / "eff.json", log)
    with runlog("pack") as log:
        manifest = run(PackConfig(blend={"ko": 0.5, "en": 0.3, "code": 0.2}), curated_file,
                       tmp_path / "tok", tmp_path / "packed", log)
    assert load_manifest(tmp_path / "packed" / "manifest.json") == manifest
    train = manifest.split("train")
    assert sum(d.weight for d in train) == pytest.approx(1.0, abs=1e-5)
    assert {d.lang: d.weight for d in train}["ko"] == pytest.approx(0.5, abs=1e-5)
    assert {d.name for d in manifest.split("valid")} == {"heldout_ko", "heldout_en", "heldout_code"}

    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    docs = [d for d in read_parquet(curated_file, "curated").to_pylist()
            if d["source"] == "kolaw" and d["split"] == "train"]
    entry = next(d for d in train if d.name == "kolaw")
    ds = IndexedDataset(str(tmp_path / "packed" / entry.prefix))
    assert len(ds) == entry.documents == len(docs)
    assert int(ds.sequence_lengths.sum()) == entry.tokens
    first = ds[0]
    assert first.dtype == np.uint16 and first[0] == tok.bos_token_id and first[-1] == tok.eos_token_id
    assert tok.decode(first[1:-1].tolist()) == docs[0]["text"]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_manifest_records_every_file_and_packing_is_deterministic(tmp_path, curated_file, tokenizer_dir,
                                                                  runlog):
    cfg = PackConfig(blend={"ko": 0.35, "en": 0.28, "code": 0.37})
    for out in ("a", "b"):
        with runlog("pack") as log:
            manifest = run(cfg, curated_file, tokenizer_dir, tmp_path / out, log)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")  # same inputs, same bytes
    assert sorted(_files(tmp_path / "a")) == sorted(
        ["manifest.json"] + [f"{d.prefix}.{ext}" for d in manifest.datasets for ext in ("bin", "idx")])
    assert manifest.format == "pack-manifest/2"
    for d in manifest.datasets:
        for ext in ("bin", "idx"):
            data, rec = (tmp_path / "a" / f"{d.prefix}.{ext}").read_bytes(), getattr(d, ext)
            assert rec.bytes == len(data) and rec.sha256 == hashlib.sha256(data).hexdigest()
    assert verify_manifest(tmp_path / "a" / "manifest.json") == manifest
    assert not list(tmp_path.glob(".*"))  # written through a temp folder, renamed whole


def _swap_two_tokens(path: Path) -> None:
    """Same size, still valid token ids: only a content hash can tell."""
    ids = np.fromfile(path, dtype=np.uint16)
    i = int(np.flatnonzero(ids[1:] != ids[:-1])[0])
    ids[[i, i + 1]] = ids[[i + 1, i]]
    ids.tofile(path)


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated bin": ("kolaw.bin", lambda p: p.write_bytes(p.read_bytes()[:-10]), "size"),
    "altered bin, same size": ("kolaw.bin", _swap_two_tokens, "sha256 differs"),
    "altered idx": ("heldout_en.idx", _flip_last_byte, "sha256 differs"),
    "missing bin": ("code.bin", Path.unlink, "missing"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_verify_names_the_damaged_file(tmp_path, packed, case):
    name, damage, what = DAMAGE[case]
    shutil.copytree(packed.parent, tmp_path / "p")
    damage(tmp_path / "p" / name)
    with pytest.raises(IntegrityError) as e:
        verify_manifest(tmp_path / "p" / "manifest.json")
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'p' / name}: {what}") and "\n" not in msg
    assert "dvc repro -f pack" in msg
    if case == "truncated bin":
        size = (tmp_path / "p" / name).stat().st_size
        assert f"size {size} bytes, expected {size + 10}" in msg
    if what != "sha256 differs":
        with pytest.raises(IntegrityError, match=name):
            verify_manifest(tmp_path / "p" / "manifest.json", mode="size")
    else:  # size mode trades this check for speed
        verify_manifest(tmp_path / "p" / "manifest.json", mode="size")


def test_manifest_of_another_format_is_refused_in_one_line(tmp_path, packed):
    raw = json.loads(packed.read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**raw, "format": "pack-manifest/1"}))
    with pytest.raises(IntegrityError, match=r"format 'pack-manifest/1', expected 'pack-manifest/2'"):
        load_manifest(tmp_path / "manifest.json")
