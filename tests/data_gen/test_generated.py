"""Generated shards are read only as the manifest lists them: any change stops the reader."""

import pyarrow.parquet as pq
import pytest

from dasi.formats import write_parquet
from dasi.integrity import IntegrityError
from data_gen.generated import verified_shards
from tests.data_gen.conftest import generated_record, write_generated


def rows(n: int, lang: str = "ko") -> list[dict]:
    return [generated_record(lang=lang, request_id=f"r{i}", text=f"문서 {i} " * 20, completion=f"문서 {i}")
            for i in range(n)]


@pytest.fixture
def gen(tmp_path):
    write_generated(tmp_path, {"a/shard-00000.parquet": rows(3), "a/shard-00001.parquet": rows(2),
                               "b/shard-00000.parquet": rows(2, "en")})
    return tmp_path


def test_listed_unchanged_shards_are_read_in_manifest_order(gen):
    assert [p.relative_to(gen).as_posix() for p in verified_shards(gen)] == \
        ["a/shard-00000.parquet", "a/shard-00001.parquet", "b/shard-00000.parquet"]


def edit_one_text(path):
    """A valid Parquet file whose one record says something else (the probe's fault)."""
    table = pq.read_table(path).to_pylist()
    table[1]["text"] = table[1]["text"].replace("문서", "광고")
    write_parquet(path, table, "generated")


@pytest.mark.parametrize("fault, says", [
    (lambda g: edit_one_text(g / "a/shard-00001.parquet"), "a/shard-00001.parquet: sha256 differs"),
    (lambda g: (g / "a/shard-00000.parquet").write_bytes((g / "a/shard-00000.parquet").read_bytes()[:-100]),
     "a/shard-00000.parquet: sha256 differs"),
    (lambda g: (g / "b/shard-00000.parquet").unlink(), "b/shard-00000.parquet: missing"),
    (lambda g: write_parquet(g / "b/shard-00001.parquet", rows(1), "generated"),
     "b/shard-00001.parquet: a shard not listed"),
    (lambda g: (g / "_manifest.json").unlink(), "_manifest.json: missing"),
])
def test_a_changed_folder_stops_the_reader_naming_the_file(gen, fault, says):
    fault(gen)
    before = {p: p.read_bytes() for p in gen.rglob("*") if p.is_file()}
    with pytest.raises(IntegrityError) as err:
        verified_shards(gen)
    message = str(err.value)
    assert says in message and "\n" not in message and "nothing was changed" in message or \
        "_manifest.json: missing" in says
    assert {p: p.read_bytes() for p in gen.rglob("*") if p.is_file()} == before  # nothing touched


def test_curate_and_sft_data_refuse_an_edited_shard(gen, tmp_path):
    from data_gen.curate import CurateConfig, run
    from data_gen.sft_data import sft_rows

    edit_one_text(gen / "a/shard-00000.parquet")
    out = tmp_path / "curated"
    with pytest.raises(IntegrityError, match="a/shard-00000.parquet"):
        run(CurateConfig(), tmp_path / "seeds.parquet", gen, out, tmp_path / "stats.json", log=None)
    assert not out.exists()  # refused before any work
    with pytest.raises(IntegrityError, match="a/shard-00000.parquet"):
        list(sft_rows(gen))
