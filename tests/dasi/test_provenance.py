import subprocess

from dasi.provenance import git_state, sha256_path


def test_dirty_ignores_pipeline_outputs_but_not_code(tmp_path, monkeypatch):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                       check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "dvc.lock").write_text("a")
    (tmp_path / "code.py").write_text("x = 1")
    git("add", "-A")
    git("commit", "-qm", "init")
    monkeypatch.chdir(tmp_path)
    assert git_state()["dirty"] is False
    (tmp_path / "dvc.lock").write_text("b")  # DVC rewrites it during `dvc repro`
    assert git_state()["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2")
    state = git_state()
    assert state["dirty"] is True and state["modified"] == ["code.py"] and len(state["commit"]) == 40


def test_folder_hash_covers_names_and_contents(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("1")
    h = sha256_path(tmp_path / "a")
    (tmp_path / "a" / "x.txt").rename(tmp_path / "a" / "y.txt")
    assert sha256_path(tmp_path / "a") != h
