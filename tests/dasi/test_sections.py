"""Stage ``config``: every section validated first, so a bad value costs no stage its outputs."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dasi.config import ConfigError
from dasi.sections import SECTIONS, write_sections
from tests.conftest import REPO


def params(tmp_path, text: str):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    return p


def test_writes_every_section_resolved(tmp_path):
    summary = write_sections(tmp_path / "cfg", params(tmp_path, "profile: tiny\npack: {encode_batch: 7}\n"),
                             REPO / "configs")
    assert summary["sections"] == list(SECTIONS)
    assert sorted(p.stem for p in (tmp_path / "cfg").glob("*.json")) == sorted(SECTIONS)
    pack = json.loads((tmp_path / "cfg/pack.json").read_text())
    assert pack["profile"] == "tiny" and pack["config"]["encode_batch"] == 7
    model = json.loads((tmp_path / "cfg/model.json").read_text())["config"]
    assert "rotary_base" in model  # defaults written out: a changed default is a changed file


@pytest.mark.parametrize("profile", ["tiny", "kormo-1b", "kormo-10.8b"])
def test_the_written_sections_do_not_depend_on_string_hashing(tmp_path, profile):
    """A set dumped in its iteration order changes with PYTHONHASHSEED: the config files (DVC
    outputs) and the fingerprints made from them must not."""
    code = ("import sys; from pathlib import Path; from dasi.sections import write_sections; "
            "write_sections(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))")
    p = params(tmp_path, f"profile: {profile}\n")
    files = []
    for seed in ("1", "2", "3"):
        out = tmp_path / f"cfg{seed}"
        subprocess.run([sys.executable, "-c", code, str(out), str(p), str(REPO / "configs")], check=True,
                       cwd=REPO, env=dict(os.environ, PYTHONHASHSEED=seed))
        files.append({f.name: f.read_bytes() for f in sorted(out.glob("*.json"))})
    assert files[0] == files[1] == files[2]


@pytest.mark.parametrize("text, says", [
    ("profile: nosuch\n", "profile = 'nosuch': allowed: kormo-10.8b, kormo-1b, tiny"),
    ("profile: tiny\ncurate: {foo: 1}\n", "curate.foo: unknown key"),
    ("profile: tiny\ntokenizer: {vocab_size: -5}\n", "tokenizer.vocab_size = -5"),
    ("profile: tiny\npretrain: {train_steps: 0}\n", "pretrain.train_steps = 0"),
    ("profile: tiny\nlauncher: slurmm\n", "launcher = 'slurmm': allowed: local, slurm"),
    ("profile: tiny\nseeds: {templates: [{id: textbook-ko, teacher: smollm2-135m-instruct}]}\n",
     "textbook-ko needs a base teacher"),
])
def test_a_bad_value_is_one_line_and_nothing_is_written(tmp_path, text, says):
    with pytest.raises(ConfigError) as err:
        write_sections(tmp_path / "cfg", params(tmp_path, text), REPO / "configs")
    assert says in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "cfg").exists()


@pytest.mark.slow
@pytest.mark.parametrize("text, says", [
    ("profile: nosuch\n", "dasi: config error: params.yaml: profile = 'nosuch'"),
    ("profile: tiny\ntokenizer: {vocab_size: -5}\n", "dasi: config error: tokenizer.vocab_size = -5"),
])
def test_dvc_repro_stops_at_config_before_removing_any_output(tmp_path, text, says):
    """The probes of issue 7: DVC removed data/seeds before the stage refused the value."""
    for item in ("dvc.yaml", ".dvcignore", "configs", "dasi", "data_gen", "pretrain", "evals", "instruct",
                 "adapt", "pretrain_tpu"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / item)
    (tmp_path / "params.yaml").write_text(text)
    bin_dir = Path(sys.executable).parent  # dvc and dasi of this environment
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True, env=env)
    done = tmp_path / "data/seeds/documents.parquet"  # stands for the outputs of earlier runs
    done.parent.mkdir(parents=True)
    done.write_text("earlier work")
    run = subprocess.run(["dvc", "repro"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert run.returncode != 0
    assert says in run.stdout + run.stderr
    assert "Running stage 'teacher'" not in run.stdout and "Running stage 'seeds'" not in run.stdout
    assert done.read_text() == "earlier work"
