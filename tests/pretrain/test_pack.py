import numpy as np
import pytest

from pretrain.pack import PackConfig, blend_weights, load_manifest, run
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
