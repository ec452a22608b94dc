from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from evals import humaneval
from evals.sandbox import Limits, run_python

REPO = Path(__file__).resolve().parents[2]
LIMITS = Limits(wall_seconds=60, cpu_seconds=30)


def test_the_package_ships_164_problems_in_order() -> None:
    problems = humaneval.load_problems()
    assert len(problems) == 164
    assert [p["task_id"] for p in humaneval.load_problems(3)] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert all({"prompt", "test", "entry_point", "canonical_solution"} <= set(p) for p in problems)


@pytest.mark.parametrize("index", [0, 2, 11, 53])
def test_canonical_solution_passes_a_wrong_one_fails(index: int) -> None:
    problem = humaneval.load_problems()[index]
    assert run_python(humaneval.program(problem, problem["canonical_solution"]), LIMITS).passed
    wrong = run_python(humaneval.program(problem, "    return None\n"), LIMITS)
    assert wrong.status == "failed" and "AssertionError" in wrong.stderr


def test_hostile_completion_cannot_escape() -> None:
    problem = humaneval.load_problems(1)[0]
    path = REPO / f"humaneval-escape-{uuid.uuid4().hex}.txt"
    hostile = (f"    open({str(path)!r}, 'w').write('pwned')\n"
               + problem["canonical_solution"])
    out = run_python(humaneval.program(problem, hostile), LIMITS)
    assert out.status == "failed" and "Read-only file system" in out.stderr and not path.exists()
    looping = run_python(humaneval.program(problem, "    while True:\n        pass\n"),
                         Limits(wall_seconds=3, cpu_seconds=60))
    assert looping.status == "timeout"


def test_truncate_at_the_first_stop_sequence() -> None:
    body = "    return x + 1\n"
    assert humaneval.truncate(body + "\n\ndef other():\n    pass\n") == body + "\n"
    assert humaneval.truncate(body + "\nif __name__ == '__main__':\n    main()") == body
    assert humaneval.truncate(body + "\n# tests\nprint(f(1))") == body
    kept = body + "    # an indented comment stays\n"
    assert humaneval.truncate(kept) == kept


def test_evaluate_model_on_a_tiny_model(tiny_model: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model)).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    problems = humaneval.load_problems(2)
    samples = tmp_path / "samples.jsonl"
    result = humaneval.evaluate_model(model, tok, problems, 12, LIMITS, samples)
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert [r["task_id"] for r in rows] == ["HumanEval/0", "HumanEval/1"]
    assert result["n"] == 2 and result["n_total"] == 164
    assert result["pass@1"] == sum(r["passed"] for r in rows) / 2 == 0.0  # a random model
    assert all(r["status"] == "failed" for r in rows)
    # its 128 positions hold neither prompt with 12 new tokens (scored anyway, and counted)
    assert result["over_context"] == 2
    # greedy: the same completion again
    again = humaneval.complete(model, tok, problems[0]["prompt"], 12)
    assert again == rows[0]["completion"]
