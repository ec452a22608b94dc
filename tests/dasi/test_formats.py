import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dasi.formats import FormatError, read_parquet, write_parquet


def test_roundtrip_and_version_check(tmp_path):
    rows = [{"doc_id": "a", "source": "s", "lang": "ko", "text": "가나다", "n_chars": 3,
             "origin": "o", "license": "l"}]
    p = tmp_path / "d.parquet"
    assert write_parquet(p, rows, "documents") == 1
    assert read_parquet(p, "documents").to_pylist() == rows
    with pytest.raises(FormatError, match="expected 'requests/2'"):
        read_parquet(p, "requests")
    pq.write_table(pa.table({"x": [1]}), tmp_path / "raw.parquet")
    with pytest.raises(FormatError, match="format '<none>'"):
        read_parquet(tmp_path / "raw.parquet", "documents")


def test_failed_write_leaves_nothing(tmp_path):
    p = tmp_path / "d.parquet"
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, KeyError, TypeError)):
        write_parquet(p, [{"doc_id": 1}], "documents")
    assert list(tmp_path.iterdir()) == []
