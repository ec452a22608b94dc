"""Generation engines: one interface, a CPU ``transformers`` engine and a GPU ``vllm`` engine."""

from data_gen.engines.base import Completion, Engine, SamplingConfig, TeacherConfig, make_engine

__all__ = ["Completion", "Engine", "SamplingConfig", "TeacherConfig", "make_engine"]
