"""The curves `dvc plots` draws (dasi/curves.py): stitched over interrupted, resumed and reused runs
into the uninterrupted run's curve, declared in dvc.yaml without the clock's values, and rendered by
`dvc plots show` and `dvc plots diff`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch
import yaml

from dasi.curves import CURVES, curve_files, lineage
from dasi.runlog import LoggingConfig, RunLog
from tests.conftest import REPO

ROWS, FEATURES = 64, 8


class Regression:
    """A least-squares fit by full-batch SGD under a cosine learning rate: a real optimisation,
    deterministic on the CPU, a millisecond a step; its state can be saved and resumed."""

    def __init__(self, seed: int = 0, steps: int = 8) -> None:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(2 * ROWS, FEATURES, generator=g)
        y = x @ torch.randn(FEATURES, 1, generator=g) + 0.1 * torch.randn(2 * ROWS, 1, generator=g)
        (self.x, self.xv), (self.y, self.yv) = x.split(ROWS), y.split(ROWS)
        self.w = torch.zeros(FEATURES, 1, requires_grad=True)
        self.steps = steps

    def lr(self, step: int) -> float:
        return 0.1 * 0.5 * (1 + math.cos(math.pi * (step - 1) / self.steps))

    def step(self, step: int) -> dict[str, float]:
        loss = ((self.x @ self.w - self.y) ** 2).mean()
        loss.backward()
        grad_norm = self.w.grad.norm().item()
        with torch.no_grad():
            self.w -= self.lr(step) * self.w.grad
        self.w.grad = None
        return {"loss": loss.item(), "lr": self.lr(step), "grad_norm": grad_norm}

    def valid(self) -> float:
        with torch.no_grad():
            return ((self.xv @ self.w - self.yv) ** 2).mean().item()

    def state(self) -> torch.Tensor:
        return self.w.detach().clone()

    def load(self, state: torch.Tensor) -> None:
        self.w = state.clone().requires_grad_(True)


def pretrain_run(logs: Path, run_id: str, model: Regression, steps: Iterable[int],
                 events: Iterable[tuple[str, dict]] = (), saves: dict[int, torch.Tensor] | None = None,
                 fail_after: int | None = None) -> Path:
    """One run folder of stage ``pretrain`` logging what pretrain logs per step (valid_loss every
    4 steps); ``saves`` collects the state at steps 4 and 8 (checkpoints); ``fail_after`` raises."""
    cfg = LoggingConfig(logs_dir=str(logs), wandb=False, tensorboard=False)
    with RunLog("pretrain", {"steps": model.steps}, logging=cfg, run_id=run_id) as log:
        for name, data in events:
            log.event(name, **data)
        for step in steps:
            t = time.perf_counter()
            metrics = model.step(step)
            per_device = ROWS * FEATURES / (time.perf_counter() - t)
            metrics.update(skipped=False, tokens_per_s_per_device=per_device,
                           tflops_per_device=per_device * 6 * FEATURES / 1e12)
            if step % 4 == 0:
                metrics["valid_loss"] = model.valid()
                if saves is not None:
                    saves[step] = model.state()
            log.log(metrics, step=step)
            if step == fail_after:
                raise RuntimeError(f"killed after step {step}")
    return log.dir


def sft_run(logs: Path, run_id: str, model: Regression) -> Path:
    """One run folder of stage ``sft`` logging as the trainer callback and heldout_loss do."""
    cfg = LoggingConfig(logs_dir=str(logs), wandb=False, tensorboard=False)
    with RunLog("sft", {"steps": model.steps}, logging=cfg, run_id=run_id) as log:
        log.log(heldout(model.valid()), step=0)
        for step in range(1, model.steps + 1):
            m = model.step(step)
            time.sleep(0.002)  # so that two records are never logged in the same clock tick
            log.log({"train/loss": m["loss"], "train/learning_rate": m["lr"],
                     "train/grad_norm": m["grad_norm"], "train/num_tokens": float(ROWS * 10 * step),
                     "train/epoch": step / model.steps}, step=step)
        log.log({"train/train_runtime": 0.1, "train/train_loss": 1.0}, step=model.steps)
        log.log(heldout(model.valid()), step=model.steps)
    return log.dir


def heldout(loss: float) -> dict[str, float]:
    return {"heldout_loss/all": loss, "heldout_loss/ko": loss * 1.1, "heldout_loss/en": loss * 0.9}


def read(path: Path) -> list[dict]:
    return json.loads(path.read_text())


def test_interrupted_resumed_and_reused_runs_give_the_uninterrupted_curve(tmp_path):
    whole = pretrain_run(tmp_path / "a" / "logs", "20260101T000000Z-00000000", Regression(), range(1, 9))
    plots_a = tmp_path / "a" / "plots" / "pretrain"
    assert [r["step"] for r in read(plots_a / "train.json")] == list(range(1, 9))
    valid = read(plots_a / "valid.json")
    assert [r["step"] for r in valid] == [4, 8] and set(valid[0]) == {"step", "valid_loss"}
    assert read(plots_a / "mfu.json") == []  # no device peak: nothing logged, an empty curve
    assert whole.name == "20260101T000000Z-00000000"

    logs, plots = tmp_path / "b" / "logs", tmp_path / "b" / "plots" / "pretrain"
    # An older run of other data, steps 0 to 10: none of it belongs to the curve below.
    pretrain_run(logs, "20260101T000001Z-11111111", Regression(seed=7, steps=10), range(0, 11))
    older = (plots / "train.json").read_bytes()
    saves: dict[int, torch.Tensor] = {}
    model = Regression()
    with pytest.raises(RuntimeError, match="killed"):  # restarted, checkpoint at 4, killed after 6
        pretrain_run(logs, "20260101T000002Z-22222222", model, range(1, 9), events=[("restart", {})],
                     saves=saves, fail_after=6)
    assert (plots / "train.json").read_bytes() == older  # a failed run leaves the curves alone
    model = Regression()
    model.load(saves[4])
    pretrain_run(logs, "20260101T000003Z-22222222", model, range(5, 9),
                 events=[("resume", {"step": 4, "consumed_samples": 16})])
    reuse = pretrain_run(logs, "20260101T000004Z-22222222", Regression(), [],
                         events=[("reuse_finished", {"step": 8})])

    assert [(run.name, upto) for run, upto in lineage(reuse)] == [
        ("20260101T000004Z-22222222", None), ("20260101T000003Z-22222222", 8),
        ("20260101T000002Z-22222222", 4)]
    for name in ("train.json", "valid.json"):  # what dvc.lock hashes: the same bytes
        assert (plots / name).read_bytes() == (plots_a / name).read_bytes(), name
    steps = [r["step"] for r in read(plots / "throughput.json")]
    assert steps == list(range(1, 9)) and all(r["tokens_per_s_per_device"] > 0
                                               for r in read(plots / "throughput.json"))


def test_sft_curves_hold_training_held_out_loss_and_token_rate(tmp_path):
    sft_run(tmp_path / "logs", "20260101T000000Z-00000000", Regression(steps=6))
    root = tmp_path / "plots" / "sft"
    train = read(root / "train.json")
    assert [r["step"] for r in train] == list(range(1, 7))
    assert set(train[0]) == {"step", "loss", "lr", "grad_norm"} and train[-1]["loss"] < train[0]["loss"]
    held = read(root / "heldout.json")
    assert [r["step"] for r in held] == [0, 6] and held[1]["heldout_loss"] < held[0]["heldout_loss"]
    assert held[0]["heldout_loss_ko"] == pytest.approx(held[0]["heldout_loss"] * 1.1)
    rate = read(root / "throughput.json")
    assert [r["step"] for r in rate] == list(range(2, 7)) and all(r["tokens_per_s"] > 0 for r in rate)


def _dvc_yaml() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def _declared(stage: dict) -> dict[str, dict]:
    entries = [e for kind in ("outs", "plots", "metrics") for e in stage.get(kind, [])]
    named = [(e, {}) if isinstance(e, str) else next(iter(e.items())) for e in entries]
    return {path: props or {} for path, props in named}


PIPELINES = ("dvc.yaml", "adapt/dvc.yaml")  # the adaptation path's stages run from the root (wdir: ..)


def test_dvc_yaml_declares_the_untimed_curves_and_plots_every_curve():
    import os

    specs = {f: yaml.safe_load((REPO / f).read_text()) for f in PIPELINES}
    timed = {str(p) for stage in CURVES for p in curve_files(stage, timed=True)}
    stages = {n: st for spec in specs.values() for n, st in spec["stages"].items()}
    for name, stage in stages.items():
        declared = _declared(stage)
        assert not timed & set(declared), f"stage {name} declares clock curves (dvc.lock would change)"
        ours = {p for p in declared if p.startswith("plots/")}
        assert ours == {str(p) for p in curve_files(name, timed=False)}, name
        assert all(declared[p].get("cache") is False for p in ours), name
    columns = {str(Path("plots") / stage / f"{c.name}.json"): set(c.columns)
               for stage, curves in CURVES.items() for c in curves}
    used: set[str] = set()
    plots = [(Path(f).parent, plot) for f, spec in specs.items() for plot in spec["plots"]]
    for folder, plot in plots:
        (title, props), = plot.items()
        assert props["x"] == "step", title
        for source, fields in props["y"].items():
            source = os.path.normpath(folder / source)  # top-level plots: relative to their dvc.yaml
            assert source in columns, f"{title}: {source} is not a curve dasi writes"
            assert set([fields] if isinstance(fields, str) else fields) <= columns[source], title
            used.add(source)
    assert used == set(columns), f"curves no plot draws: {set(columns) - used}"


def dvc(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    out = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True,
                         text=True)
    assert out.returncode == 0, f"dvc {args}: {out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return out


def git(args: list[str], cwd: Path) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                   capture_output=True)


def test_dvc_plots_show_and_diff_render_the_curves(tmp_path):
    """The project's top-level `plots:` in a small repository whose curves come from real runs."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(["init", "-q"], repo)
    dvc(["init", "-q"], repo)
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": _dvc_yaml()["plots"]}, sort_keys=False))
    pretrain_run(repo / "logs", "20260101T000000Z-00000000", Regression(), range(1, 9))
    sft_run(repo / "logs", "20260101T000001Z-00000000", Regression(steps=6))

    shown = json.loads(dvc(["plots", "show", "--json"], repo).stdout)
    assert not shown.get("errors"), shown["errors"]
    titles = [next(iter(p)) for p in _dvc_yaml()["plots"]]
    for title in titles:
        renders = shown["data"][title]
        if title == "pretrain mfu":  # nothing logged on a CPU: an empty curve draws nothing
            assert renders == []
            continue
        (vega,) = renders
        assert vega["type"] == "vega" and vega["content"]["data"]["values"], title
    losses = {row["loss"] for row in shown["data"]["pretrain loss"][0]["content"]["data"]["values"]
              if "loss" in row}
    assert losses == {r["loss"] for r in read(repo / "plots/pretrain/train.json")}

    dvc(["plots", "show"], repo)
    page = (repo / "dvc_plots" / "index.html").read_text()
    for plot in _dvc_yaml()["plots"]:
        ((title, props),) = plot.items()
        assert title == "pretrain mfu" or props["title"] in page, props["title"]
    assert page.count('"$schema"') == len(titles) - 1  # a vega-lite spec for every non-empty plot

    git(["add", "-A"], repo)
    git(["commit", "-qm", "first run"], repo)
    pretrain_run(repo / "logs", "20260101T000002Z-11111111", Regression(seed=3), range(1, 9))
    diff = json.loads(dvc(["plots", "diff", "HEAD", "--json"], repo).stdout)
    (vega,) = diff["data"]["pretrain loss"]
    rows = vega["content"]["data"]["values"]
    assert {r["rev"] for r in rows} == {"workspace", "HEAD"}
    by_rev = {rev: [r["loss"] for r in rows if r["rev"] == rev and "loss" in r]
              for rev in ("workspace", "HEAD")}
    assert len(by_rev["HEAD"]) == len(by_rev["workspace"]) == 8 and by_rev["HEAD"] != by_rev["workspace"]


def test_a_curve_that_cannot_be_written_fails_the_run_and_says_why(tmp_path):
    (tmp_path / "plots").write_text("a file where the plots folder goes")
    with pytest.raises(OSError):
        pretrain_run(tmp_path / "logs", "20260101T000000Z-00000000", Regression(), range(1, 3))
    run = json.loads((tmp_path / "logs/pretrain/20260101T000000Z-00000000/run.json").read_text())
    assert run["status"] == "failed" and "Error" in run["error"]
