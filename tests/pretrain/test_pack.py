import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dasi.integrity import IntegrityError
from pretrain.mix import TooManyEpochs, mix_report, token_budget
from pretrain.pack import PackConfig, blend_weights, load_manifest, run, set_weights, verify_manifest

BLEND = {"ko": 0.35, "en": 0.28, "code": 0.37}


def test_blend_weights_split_language_share_by_tokens():
    w = blend_weights({"a": 300, "b": 100, "c": 50}, {"a": "ko", "b": "ko", "c": "en"},
                      {"ko": 0.6, "en": 0.4})
    assert w == pytest.approx({"a": 0.45, "b": 0.15, "c": 0.4})
    with pytest.raises(ValueError, match=r"no weight for languages \['code'\]"):
        blend_weights({"a": 1}, {"a": "code"}, {"ko": 1.0})


def _entry(name: str, lang: str, tokens: int, split: str = "train") -> dict:
    return {"name": name, "lang": lang, "split": split, "tokens": tokens}


def test_mix_accounting_on_known_numbers():
    # Two shards of source a (300 + 100 tokens), one of b (50), one held-out set.
    entries = [_entry("a", "ko", 300), _entry("a", "ko", 100), _entry("b", "en", 50),
               _entry("heldout_ko", "ko", 20, "valid")]
    weights = set_weights(entries, {"ko": 0.6, "en": 0.4})
    assert weights == pytest.approx({"a": 0.6, "b": 0.4})
    assert [e["weight"] for e in entries] == pytest.approx([0.45, 0.15, 0.4, 1.0])
    budget = token_budget(train_steps=10, global_batch=4, seq_length=25)
    assert budget == 1000
    mix = mix_report(entries, weights, budget, max_epochs=8.0)
    assert mix == {"format": "pack-mix/1", "budget_tokens": 1000, "max_epochs": 8.0, "sources": {
        "a": {"lang": "ko", "tokens_available": 400, "weight": 0.6, "tokens_drawn": 600, "epochs": 1.5},
        "b": {"lang": "en", "tokens_available": 50, "weight": 0.4, "tokens_drawn": 400, "epochs": 8.0}}}
    with pytest.raises(TooManyEpochs) as e:
        mix_report(entries, weights, budget, max_epochs=7.9)
    assert str(e.value).startswith("pack: source 'b' would be repeated 8.0 epochs (400 tokens drawn of 50 "
                                   "available, weight 0.4, budget 1,000 tokens), above pack.max_epochs = 7.9")
    assert "raise pack.max_epochs" in str(e.value) and "\n" not in str(e.value)


def test_pack_writes_megatron_readable_data_and_manifest(tmp_path, curated_dir, tokenizer_dir, runlog):
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from transformers import AutoTokenizer

    from data_gen.curated import iter_docs

    with runlog("pack") as log:
        manifest = run(PackConfig(blend={"ko": 0.5, "en": 0.3, "code": 0.2}), 10_000, curated_dir,
                       tokenizer_dir, tmp_path / "packed", tmp_path / "mix.json", log)
    assert load_manifest(tmp_path / "packed" / "manifest.json") == manifest
    train = manifest.split("train")
    assert sum(d.weight for d in train) == pytest.approx(1.0)
    assert sum(d.weight for d in train if d.lang == "ko") == pytest.approx(0.5)
    assert {d.name for d in manifest.split("valid")} == {"heldout_ko", "heldout_en", "heldout_code"}
    assert {d.prefix for d in train if d.name == "kolaw"} == {"kolaw/00000", "kolaw/00001"}  # one per shard

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    second = [d["text"] for d in iter_docs(curated_dir) if d["source"] == "kolaw" and d["split"] == "train"
              and d["doc_id"] in {x["doc_id"] for x in _shard_docs(curated_dir, 1)}]
    entry = next(d for d in train if d.prefix == "kolaw/00001")
    ds = IndexedDataset(str(tmp_path / "packed" / entry.prefix))
    assert len(ds) == entry.documents == len(second)
    assert int(ds.sequence_lengths.sum()) == entry.tokens
    for i in (0, len(ds) - 1):
        doc = ds[i]
        assert doc.dtype == np.uint16 and doc[0] == tok.bos_token_id and doc[-1] == tok.eos_token_id
        assert doc[1:-1].tolist() == tok(second[i], add_special_tokens=False)["input_ids"]
        assert tok.decode(doc[1:-1].tolist()) == second[i]
    mix = json.loads((tmp_path / "mix.json").read_text())
    assert mix["budget_tokens"] == 10_000
    assert mix["sources"]["kolaw"]["tokens_available"] == sum(d.tokens for d in train if d.name == "kolaw")


def _shard_docs(curated_dir: Path, i: int) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(curated_dir / "documents" / f"{i:05d}.parquet").to_pylist()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_same_bytes_with_one_or_two_workers_and_every_file_recorded(tmp_path, curated_dir, tokenizer_dir,
                                                                    runlog):
    for out, workers in (("a", 1), ("b", 2)):
        with runlog("pack") as log:
            manifest = run(PackConfig(blend=BLEND, workers=workers, encode_batch=7), 10_000, curated_dir,
                           tokenizer_dir, tmp_path / out, tmp_path / f"{out}.json", log)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")  # same inputs, same bytes
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert sorted(_files(tmp_path / "a")) == sorted(
        ["manifest.json"] + [f"{d.prefix}.{ext}" for d in manifest.datasets for ext in ("bin", "idx")])
    assert manifest.format == "pack-manifest/3"
    for d in manifest.datasets:
        for ext in ("bin", "idx"):
            data, rec = (tmp_path / "a" / f"{d.prefix}.{ext}").read_bytes(), getattr(d, ext)
            assert rec.bytes == len(data) and rec.sha256 == hashlib.sha256(data).hexdigest()
    assert verify_manifest(tmp_path / "a" / "manifest.json") == manifest
    assert not list(tmp_path.glob(".*"))  # written through a temp folder, renamed whole


def test_too_many_epochs_stop_pack_before_it_writes(tmp_path, curated_dir, tokenizer_dir, runlog):
    with runlog("pack") as log, pytest.raises(TooManyEpochs) as e:
        run(PackConfig(blend=BLEND, max_epochs=2), 10**7, curated_dir, tokenizer_dir, tmp_path / "packed",
            tmp_path / "mix.json", log)
    msg = str(e.value)
    assert "\n" not in msg and "above pack.max_epochs = 2: raise pack.max_epochs" in msg
    assert msg.startswith("pack: source '")
    assert list(tmp_path.iterdir()) == [tmp_path / "logs"]  # no output, no temp folder


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
    "truncated bin": ("kolaw/00000.bin", lambda p: p.write_bytes(p.read_bytes()[:-10]), "size"),
    "altered bin, same size": ("kolaw/00001.bin", _swap_two_tokens, "sha256 differs"),
    "altered idx": ("heldout_en/00000.idx", _flip_last_byte, "sha256 differs"),
    "missing bin": ("code/00001.bin", Path.unlink, "missing"),
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
    (tmp_path / "manifest.json").write_text(json.dumps({**raw, "format": "pack-manifest/2"}))
    with pytest.raises(IntegrityError, match=r"format 'pack-manifest/2', expected 'pack-manifest/3'"):
        load_manifest(tmp_path / "manifest.json")


def test_dasi_pack_stops_on_too_many_epochs_in_one_line(tmp_path, packed, curated_dir, tokenizer_dir):
    """The real command: the budget comes from the profile's pretrain and model sections."""
    import yaml

    from tests.pretrain.conftest import cli_workspace, last_line, run_dasi

    root = cli_workspace(tmp_path / "w", packed)
    profile = yaml.safe_load((root / "configs" / "w.yaml").read_text())
    profile["pack"]["max_epochs"] = 0.01  # below what 2,048 tokens draw of the sources
    (root / "configs" / "w.yaml").write_text(yaml.safe_dump(profile))
    out = run_dasi(root, "pack", "--curated", str(curated_dir), "--tokenizer-dir", str(tokenizer_dir),
                   "--out", "out", "--mix", "metrics/mix.json")
    assert out.returncode == 2, out.stderr[-3000:]
    line = last_line(out.stderr)
    assert line.startswith("dasi: config error: pack: source '") and "Traceback" not in out.stderr
    assert "above pack.max_epochs = 0.01: raise pack.max_epochs" in line
    budget = profile["pretrain"]["train_steps"] * profile["pretrain"]["global_batch_size"] * 128
    assert f"budget {budget:,} tokens" in line
    assert not (root / "out").exists() and not (root / "metrics" / "mix.json").exists()
    assert not list(root.glob(".out*"))
