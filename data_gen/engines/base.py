"""What every engine returns, and how a request becomes the token ids a teacher is given."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str          # the engine's own reason: "stop", "length", "abort", ...
    stop_reason: str | None     # the stop string or token id that ended it, when one did


class Engine(Protocol):
    name: str
    version: str

    def add(self, request_id: str, token_ids: list[int], sampling: dict[str, Any]) -> None:
        """Queue one request (``sampling`` as recorded with the output)."""

    def step(self) -> list[tuple[str, Completion]]:
        """Advance generation; return the requests that finished."""

    def has_unfinished(self) -> bool: ...


def encode_request(tokenizer, request: dict) -> list[int]:
    """Token ids of what the teacher is given: a base teacher's text as its tokenizer encodes it
    (with BOS: the teacher stage made sure of it), an instruct teacher's chat template applied
    to one user turn."""
    if request["teacher_kind"] == "instruct":
        text = tokenizer.apply_chat_template([{"role": "user", "content": request["prompt"]}],
                                             tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False).input_ids
    return tokenizer(request["prompt"]).input_ids
