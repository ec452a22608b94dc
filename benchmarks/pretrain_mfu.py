"""Model FLOPs utilisation (MFU) and tokens/s/GPU of the 1B proxy, training on one GPU in bf16.

    python benchmarks/pretrain_mfu.py [--steps 10] [--warmup 3] [--micro-batch-size 2] [--compile]
    python benchmarks/pretrain_mfu.py --device cpu --layers 2 --hidden-size 64 --seq-length 128 \\
        --micro-batch-size 1 --micro-batches 1 --steps 2 --warmup 1          # CPU smoke test

The model is built by ``pretrain.model.build_chunks`` and trained by the same pieces as
``pretrain.loop.train`` (megatron DDP with fp32 grad buckets, ``_optimizer``: megatron's
distributed optimizer on GPU, ``_run_schedule``: megatron's forward-backward schedule), on
random tokens: what pretraining ships is what is measured. Each timed step is
``--micro-batches`` forward+backward passes, the grad sync, the optimizer step and the LR
scheduler step (the H100 figures of 2026-11-26 were measured with the earlier hand-written
micro-batch loop, those of 2026-11-27 with megatron's schedule). ``--compile`` compiles the
transformer layers as ``pretrain.compile`` does. The last line printed is one JSON object.

FLOPs per token and the device peaks: :mod:`pretrain.flops` (the formula is documented there).
MFU is null on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

from dasi.model_config import ModelConfig
from pretrain.flops import flops_per_token, matmul_params, peak_tflops

# KORMo's 1B ablation proxy (arXiv 2510.09426) trained on 60B tokens, but its exact shape is
# neither in this repo nor known to its authors here: this is a stand-in, a LLaMA-style ~1B
# shape with KORMo-10B's tokenizer (vocab 125,184), sequence length (4,096), RoPE base (500k)
# and untied embeddings from configs/kormo-10.8b.yaml. 1.52B parameters, 0.51B of them in the
# embedding and LM head. Replace it with the paper's shape once the kormo-1b profile checks it.
KORMO_1B_STANDIN = dict(hidden_size=2048, num_layers=16, num_attention_heads=16, num_query_groups=8,
                        ffn_hidden_size=8192, vocab_size=125_184, seq_length=4096,
                        rotary_base=500_000, untie_embeddings=True)

def model_config(args: argparse.Namespace) -> ModelConfig:
    shape = dict(KORMO_1B_STANDIN, num_layers=args.layers or KORMO_1B_STANDIN["num_layers"],
                 seq_length=args.seq_length)
    if args.hidden_size:  # smaller smoke-test shapes keep the proxy's FFN ratio and head count
        shape.update(hidden_size=args.hidden_size, ffn_hidden_size=4 * args.hidden_size)
    return ModelConfig(**shape)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, allocator)")
    ap.add_argument("--micro-batch-size", type=int, default=2)
    ap.add_argument("--micro-batches", type=int, default=8,
                    help="micro-batches per step (gradient accumulation): one optimizer step per this many")
    ap.add_argument("--seq-length", type=int, default=KORMO_1B_STANDIN["seq_length"])
    ap.add_argument("--layers", type=int, help="fewer layers than the proxy's 16 (smoke tests)")
    ap.add_argument("--hidden-size", type=int, help="a smaller hidden size (smoke tests); FFN = 4x")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--core-attention", choices=["default", "sdpa", "megatron"], default="default",
                    help="local layers' core attention: what pretraining uses here (default), "
                         "SdpaAttention, or megatron's DotProductAttention")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile each transformer layer (pretrain.compile)")
    ap.add_argument("--peak-tflops", type=float, help="override the device's dense bf16 peak")
    args = ap.parse_args(argv)
    if min(args.steps, args.micro_batch_size, args.micro_batches, args.seq_length) < 1 or args.warmup < 0:
        ap.error("--steps, --micro-batch-size, --micro-batches, --seq-length must be >= 1, --warmup >= 0")
    return args


def random_batches(m: ModelConfig, micro_batch_size: int, count: int, device: str) -> list[dict[str, Any]]:
    """``count`` micro-batches of uniform random tokens in ``data.batch``'s layout."""
    import torch

    g = torch.Generator().manual_seed(0)
    shape = (micro_batch_size, m.seq_length)
    out = []
    for _ in range(count):
        tokens = torch.randint(0, m.vocab_size, shape, generator=g)
        out.append({"tokens": tokens, "labels": torch.randint(0, m.vocab_size, shape, generator=g),
                    "loss_mask": torch.ones(shape),
                    "position_ids": torch.arange(m.seq_length).expand(shape).contiguous()})
    return [{k: v.to(device) for k, v in b.items()} for b in out]


def flash_attention_runs(m: ModelConfig) -> bool:
    """Whether SDPA's flash kernel takes this shape's grouped-query attention in bf16 (CUDA)."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, m.num_attention_heads, 256, m.head_dim, device="cuda", dtype=torch.bfloat16)
    kv = torch.randn(1, m.num_query_groups, 256, m.head_dim, device="cuda", dtype=torch.bfloat16)
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            F.scaled_dot_product_attention(q, kv, kv, is_causal=True,
                                           enable_gqa=m.num_query_groups != m.num_attention_heads)
    except RuntimeError:
        return False
    return True


def run(args: argparse.Namespace) -> dict[str, Any]:
    import megatron.core
    import torch
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    from dasi.model_config import parameter_count
    from pretrain.config import PretrainConfig
    from pretrain.loop import _optimizer, _run_schedule, _wire, use_distributed_optimizer
    from pretrain.model import build_chunks, distributed, layer_spec, te_unavailable

    m = model_config(args)
    gpu = args.device == "cuda"
    if gpu and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    use_te = te_unavailable() is None
    sdpa = None if args.core_attention == "default" else args.core_attention == "sdpa"
    steps = args.warmup + args.steps
    # megatron's bf16 optimizer takes CUDA tensors only: the CPU smoke test trains in fp32, as the
    # CPU pipeline does.
    cfg = PretrainConfig(train_steps=steps + 1, micro_batch_size=args.micro_batch_size,
                         global_batch_size=args.micro_batch_size * args.micro_batches,
                         warmup_steps=1, bf16=gpu, compile=args.compile)
    with distributed(seed=cfg.seed):
        chunks = build_chunks(m, bf16=cfg.bf16, use_te=use_te, sdpa=sdpa, train=cfg)
        core = layer_spec(use_te, sdpa).submodules.self_attention.submodules.core_attention
        # As loop.train wraps and drives it: megatron DDP, the schedule's hooks, the schedule.
        model = [DistributedDataParallel(
            chunks[0].config,
            DistributedDataParallelConfig(grad_reduce_in_fp32=True,
                                          use_distributed_optimizer=use_distributed_optimizer()),
            chunks[0])]
        _wire(model, cfg)
        opt, sched = _optimizer(cfg, model)
        batches = random_batches(m, args.micro_batch_size, args.micro_batches, args.device)
        times, warmup_s, loss = [], 0.0, float("nan")
        for step in range(steps):
            if gpu:
                torch.cuda.synchronize()
            t = time.perf_counter()
            # One step of loop.train (its loss check and logging aside).
            model[0].zero_grad_buffer()
            opt.zero_grad()
            loss = _run_schedule(model, lambda: iter(batches), len(batches), m, cfg, forward_only=False)
            opt.step()
            sched.step(1)
            if gpu:
                torch.cuda.synchronize()
            if step >= args.warmup:
                times.append(time.perf_counter() - t)
            else:
                warmup_s += time.perf_counter() - t
        device_name = torch.cuda.get_device_name() if gpu else "cpu"
        max_memory = torch.cuda.max_memory_allocated() / 2**30 if gpu else None
        flash = flash_attention_runs(m) if gpu else None

    tokens_per_step = args.micro_batches * args.micro_batch_size * m.seq_length
    tokens_per_s = tokens_per_step * len(times) / sum(times)
    peak = args.peak_tflops or (peak_tflops(device_name) if gpu else None)
    achieved = flops_per_token(m) * tokens_per_s / 1e12

    def mfu(causal: bool) -> float | None:
        return None if peak is None else round(flops_per_token(m, causal) * tokens_per_s / 1e12 / peak, 4)

    return {
        "benchmark": "pretrain_mfu", "model": "kormo-1b-standin", "device": device_name,
        "dtype": "bf16" if cfg.bf16 else "fp32", "peak_bf16_tflops": peak,
        "mfu": mfu(False), "mfu_causal": mfu(True),
        "tokens_per_s_per_gpu": round(tokens_per_s, 1), "model_tflops_per_s": round(achieved, 2),
        "step_s_median": round(statistics.median(times), 4), "step_s_mean": round(sum(times) / len(times), 4),
        "steps": args.steps, "warmup": args.warmup, "warmup_s": round(warmup_s, 1),
        "micro_batch_size": args.micro_batch_size,
        "micro_batches": args.micro_batches, "tokens_per_step": tokens_per_step,
        "seq_length": m.seq_length, "layers": m.num_layers, "hidden_size": m.hidden_size,
        "parameters": parameter_count(m), "matmul_parameters": matmul_params(m),
        "flops_per_token": flops_per_token(m), "layer_spec": "transformer_engine" if use_te else "local",
        "core_attention": core.__name__, "compile": args.compile, "sdpa_flash_gqa": flash,
        "last_loss": round(loss, 4),
        "max_memory_allocated_gib": None if max_memory is None else round(max_memory, 2),
        "torch": torch.__version__, "megatron_core": megatron.core.__version__,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch loads: megatron then runs its CPU path
    print(json.dumps(run(args)), flush=True)


if __name__ == "__main__":
    main()
