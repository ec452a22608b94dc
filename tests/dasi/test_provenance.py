import json
import subprocess

from dasi.provenance import git_state, sha256_path
from dasi.runlog import LoggingConfig, RunLog, read_jsonl


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


def test_git_outside_a_repository_is_an_explicit_error(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    monkeypatch.chdir(tmp_path)
    state = git_state()
    assert state["commit"] is None and state["dirty"] is None
    assert state["error"].startswith("git rev-parse exited 128: fatal: not a git repository")
    assert "\n" not in state["error"]


def test_git_missing_is_an_explicit_error_and_an_event(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    assert git_state()["error"] == "git rev-parse: No such file or directory"
    logging = LoggingConfig(logs_dir=str(tmp_path / "logs"), wandb=False, tensorboard=False)
    with RunLog("demo", {}, logging=logging) as log:
        pass
    env = json.loads((log.dir / "env.json").read_text())
    assert env["git"] == {"commit": None, "dirty": None, "modified": [],
                          "error": "git rev-parse: No such file or directory"}
    events = read_jsonl(log.dir / "events.jsonl")
    assert events[0]["event"] == "git_unavailable" and events[0]["error"] == env["git"]["error"]


def test_env_records_the_cpu_and_the_pinned_kernels(monkeypatch):
    from dasi.provenance import environment, environment_events

    env = environment()
    assert set(env["cpu"]) == {"model", "simd"} and env["cpu"]["model"]
    assert env["cpu_kernels"]["pinned"]  # tests pin like `dasi` does (tests/conftest.py)
    assert env["cpu_kernels"]["vars"]["ATEN_CPU_CAPABILITY"] == "avx2"
    assert not [e for e, _ in environment_events(env) if e == "cpu_kernels_not_pinned"]
    monkeypatch.setenv("MKL_CBWR", "AUTO")  # a user's override is recorded and reported
    env = environment()
    assert not env["cpu_kernels"]["pinned"]
    assert ("cpu_kernels_not_pinned", {"vars": env["cpu_kernels"]["vars"]}) in environment_events(env)


def test_vendored_packages_on_sys_path_are_not_installed_ones(monkeypatch):
    """Importing setuptools puts setuptools/_vendor (with its .dist-info folders) on sys.path;
    those were never installed and must not read as packages missing from the lock."""
    from pathlib import Path

    import setuptools

    from dasi.provenance import installed_packages

    before = installed_packages()
    monkeypatch.syspath_prepend(str(Path(setuptools.__file__).parent / "_vendor"))
    assert installed_packages() == before
