"""GPU generation with vLLM's offline ``LLM`` API (tensor parallel from the profile).

vLLM is CUDA-only and not installable on the CPU machines; this module imports it lazily so the
rest of the pipeline never needs it. Its test runs where ``vllm`` is importable.
"""

from __future__ import annotations

import importlib.metadata

from data_gen.engines.base import Completion, SamplingConfig, TeacherConfig


class VLLMEngine:
    name = "vllm"

    def __init__(self, teacher: TeacherConfig, tensor_parallel_size: int = 1) -> None:
        try:
            from vllm import LLM
        except ImportError as e:  # pragma: no cover - depends on the machine
            raise RuntimeError(
                "generate.engine = 'vllm' needs vLLM (pip install 'dasi[gpu]' on a CUDA machine); "
                "use engine 'transformers' on CPU"
            ) from e
        self.version = importlib.metadata.version("vllm")
        loc = teacher.location()
        model = f"{loc}/{teacher.gguf_file}" if teacher.gguf_file else loc
        kwargs = {"tokenizer": loc} if teacher.gguf_file else {}
        self.llm = LLM(
            model=model,
            tensor_parallel_size=tensor_parallel_size,
            dtype=teacher.dtype,
            seed=0,
            **kwargs,
        )

    def generate(self, prompts: list[str], sampling: SamplingConfig, seed: int) -> list[Completion]:
        from vllm import SamplingParams

        params = [
            SamplingParams(
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens,
                seed=seed + i,  # per-request seed: results do not depend on batch composition
            )
            for i in range(len(prompts))
        ]
        conversations = [[{"role": "user", "content": p}] for p in prompts]
        outputs = self.llm.chat(conversations, params, use_tqdm=False)
        results = []
        for out in outputs:
            best = out.outputs[0]
            results.append(Completion(
                text=best.text.strip(),
                prompt_tokens=len(out.prompt_token_ids),
                completion_tokens=len(best.token_ids),
                finish_reason="stop" if best.finish_reason == "stop" else "length",
            ))
        return results
