"""``dasi plan pretrain``: what a profile's pretraining needs per GPU and how long it takes.

From the resolved ``model`` and ``pretrain`` sections (shape, parallel layout, recompute, dtype,
batch) it computes:

* parameters: total, embedding + LM head and the rest (exactly :func:`parameter_count`'s), and
  per GPU after the tensor- and pipeline-parallel split for the first and the last pipeline stage
  (they hold the embedding and the head);
* memory per GPU, for the first and the last pipeline stage:

  - weights: 2 bytes a parameter in bf16, 4 in fp32;
  - grads: 4 bytes a parameter (megatron DDP keeps fp32 grad buffers, ``grad_reduce_in_fp32``);
  - optimizer: megatron's distributed optimizer (what ``pretrain.loop`` uses on GPU): Adam m and v
    (4 + 4 bytes) and, in bf16, the fp32 main parameters (4), sharded over data x context parallel;
  - activations of one micro-batch by the accounting of Korthikanti et al. 2022 ("Reducing
    Activation Recomputation in Large Transformer Models"), applied to this layer (RMSNorm,
    grouped-query attention, SwiGLU, no dropout), times the micro-batches in flight on the stage;
  - the logits and loss buffers on the last stage;

  and their total, and whether it fits the GPU memory;
* throughput: tokens/s/GPU = MFU x peak / model FLOPs per token (:mod:`pretrain.flops`), at an
  assumed MFU: 0.40 by default. The 1B stand-in measured 41.6% on one H100 (bf16, SDPA, fused
  cross entropy, micro-batch 4: ``benchmarks/results/*h100-pretrain_mfu.jsonl``); a multi-node
  run adds communication, which that single-GPU figure does not contain;
* the token budget (train_steps x global batch x seq_length), the GPU count, the days and the
  GPU-hours to it.

Activations per token per layer, with e bytes an element (2 in bf16, 4 in fp32), hidden h, KV
width kv (groups x head size), FFN f, heads a, sequence s, micro-batch b, TP t:

    e * (4h / t_sp  +  (2h + 2kv + 3f) / t)  [ +  5 * a * s * (e/2) / t  unfused attention ]

4h: the two norms' inputs, the QKV and the FC1 inputs (replicated over TP ranks, split only by
sequence parallelism: t_sp = t with it, else 1); 2h + 2kv: Q, K, V and the attention output;
3f: SwiGLU's input (gate and up) and output. Counted the same way for the paper's GPT layer (MHA,
GELU's input and output of width 4h, two dropout masks of 1 byte an element) it is their
34sbh + 5as^2b.
The attention-matrix term (softmax output, dropout mask and output) exists only when megatron's
unfused ``DotProductAttention`` runs: the fused kernels the GPU path uses (SDPA's FlashAttention,
Transformer Engine) never store it, so there ``none`` costs what ``selective`` does. Selective
recompute drops that term; full recompute keeps each block's input (e*h a token per
``recompute_num_layers`` layers) and, while it recomputes, one block's activations.

Micro-batches in flight follow megatron's schedules: pipeline rank r holds min(m, p - r) with
1F1B and min(m*v, 2(p - r - 1) + (v - 1)p + 1) model chunks with the interleaved schedule (on the
first stage that is Korthikanti's p and p(1 + (p - 1)/(pv)) of L/p layers). Context parallelism
divides the sequence.

The loss buffer on the last stage is 10 bytes a logit: the bf16 logits and their fp32 copy (6, as
megatron's vocab-parallel cross entropy reads; it then works in place) and 4 that the measurements
below call for; the fused (compiled) loss the GPU path uses measured 4 more.

Approximations, and how they fare: the 1B stand-in's single-H100 runs (micro-batches 1, 2, 4,
SDPA, fused and unfused loss; ``benchmarks/results/2026-11-26-h100-pretrain_mfu.jsonl``) peak
within 1% of this plan (``max_memory_allocated``), and 8% above it with megatron's unfused
attention. Those runs fix the sum of the layer and loss terms per token, not how it splits
between them (the 4 unexplained bytes a logit may belong to the layers): with pipelining the first
and last stage may trade a few GiB. The tensor-, sequence-, context- and pipeline-parallel
divisions are the formulas' and unmeasured here; the plan leaves out the pipeline's send/receive
buffers, the keys and values ``SdpaAttention`` all-gathers under context parallelism, NCCL
buffers and the allocator's fragmentation across long runs: keep a few GiB spare. The throughput
holds the MFU constant; recompute adds work that model FLOPs do not count (full recompute: about
a third more), so expect a lower MFU with it.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from dasi.config import validate_section
from dasi.model_config import ModelConfig, parameter_count
from pretrain.config import PretrainConfig
from pretrain.flops import flops_per_token, peak_tflops

GIB = 2**30
DEFAULT_MFU = 0.40
DEFAULT_GPU_MEMORY_GIB = 80.0
DEFAULT_DEVICE = "H100"  # what the peak defaults to when pretrain.peak_tflops is unset
Attention = Literal["fused", "unfused"]


# -- parameters -----------------------------------------------------------------------------------

def parameter_split(m: ModelConfig) -> dict[str, int]:
    """The whole model's parameters: embedding + LM head, and the rest (layers and final norm)."""
    total = parameter_count(m)
    embedding_head = m.vocab_size * m.hidden_size * (2 if m.untie_embeddings else 1)
    return {"total": total, "embedding_and_head": embedding_head, "rest": total - embedding_head}


def layer_parameters(m: ModelConfig, tp: int) -> int:
    """One transformer layer's parameters on one tensor-parallel rank: the linear layers are split
    (row-parallel biases are not), the norms are replicated."""
    h, kv, f = m.hidden_size, m.num_query_groups * m.head_dim, m.ffn_hidden_size
    split = 2 * h * h + 2 * h * kv + 3 * h * f
    split_bias = (h + 2 * kv + 2 * f) if m.add_bias else 0  # column-parallel: QKV and FC1
    replicated_bias = 2 * h if m.add_bias else 0  # row-parallel: output projection and FC2
    return (split + split_bias) // tp + replicated_bias + 2 * h


def stage_parameters(m: ModelConfig, par: Any) -> dict[str, int]:
    """Parameters one GPU holds on the first and on the last pipeline stage (equal without
    pipelining). The last stage of a pipeline with tied embeddings holds a copy of them as its head."""
    tp, pp = par.tensor_parallel, par.pipeline_parallel
    vocab_shard = m.vocab_size * m.hidden_size // tp
    layers = m.num_layers // pp * layer_parameters(m, tp)
    embedding = vocab_shard
    head = vocab_shard if m.untie_embeddings or pp > 1 else 0
    final_norm = m.hidden_size
    if pp == 1:
        whole = embedding + layers + final_norm + head
        return {"first": whole, "last": whole}
    return {"first": embedding + layers, "last": layers + final_norm + head}


# -- activations ----------------------------------------------------------------------------------

def element_bytes(bf16: bool) -> int:
    return 2 if bf16 else 4


def layer_activation_bytes(m: ModelConfig, cfg: PretrainConfig, attention: Attention = "fused",
                           recompute: str | None = None) -> float:
    """Bytes one layer stores for one micro-batch (module docstring) under ``recompute`` (default:
    the config's) "none" or "selective"; :func:`chunk_activation_bytes` handles "full"."""
    par = cfg.parallel
    t, e = par.tensor_parallel, element_bytes(cfg.bf16)
    t_sp = t if par.sequence_parallel else 1
    h, kv, f, a = m.hidden_size, m.num_query_groups * m.head_dim, m.ffn_hidden_size, m.num_attention_heads
    s = m.seq_length / par.context_parallel  # tokens of the sequence on this rank
    tokens = s * cfg.micro_batch_size
    stored = tokens * e * (4 * h / t_sp + (2 * h + 2 * kv + 3 * f) / t)
    if attention == "unfused" and (recompute or cfg.recompute) == "none":
        # softmax output, dropout mask and dropout output of every head's s x s matrix (the queries
        # of this rank against the whole sequence's keys)
        stored += 5 * (e / 2) * a * s * m.seq_length * cfg.micro_batch_size / t
    return stored


def chunk_activation_bytes(m: ModelConfig, cfg: PretrainConfig, layers: int,
                           attention: Attention = "fused") -> dict[str, float]:
    """One micro-batch's stored activations of a model chunk of ``layers`` layers, and the extra
    working memory full recompute needs while it recomputes a block."""
    if cfg.recompute != "full":
        return {"stored": layers * layer_activation_bytes(m, cfg, attention), "recompute_work": 0.0}
    par = cfg.parallel
    t_sp = par.tensor_parallel if par.sequence_parallel else 1
    block = min(cfg.recompute_num_layers, layers)
    blocks = -(-layers // block)
    inputs = m.seq_length / par.context_parallel * cfg.micro_batch_size * m.hidden_size / t_sp
    return {"stored": blocks * inputs * element_bytes(cfg.bf16),
            "recompute_work": block * layer_activation_bytes(m, cfg, attention, recompute="none")}


def in_flight(cfg: PretrainConfig, rank: int) -> int:
    """Model-chunk micro-batches whose activations pipeline rank ``rank`` holds at its peak
    (megatron's warm-up count + 1)."""
    par = cfg.parallel
    p, v, m = par.pipeline_parallel, par.chunks, cfg.accumulation_steps
    if par.virtual_pipeline_parallel and p > 1:
        return min(m * v, 2 * (p - rank - 1) + (v - 1) * p + 1)
    return min(m, p - rank)


def loss_bytes(m: ModelConfig, cfg: PretrainConfig, fused_loss: bool = True) -> float:
    """The last stage's logits and loss buffers for one micro-batch at their peak: the logits in the
    training dtype, their fp32 copy and fp32 exp (megatron's vocab-parallel cross entropy), and
    with the fused (compiled) loss the GPU path uses one more fp32 copy (measured)."""
    par = cfg.parallel
    tokens = m.seq_length / par.context_parallel * cfg.micro_batch_size
    per_logit = element_bytes(cfg.bf16) + 4 + 4 + (4 if fused_loss else 0)
    return tokens * m.vocab_size / par.tensor_parallel * per_logit


# -- memory ---------------------------------------------------------------------------------------

def stage_memory(m: ModelConfig, cfg: PretrainConfig, stage: str, attention: Attention = "fused",
                 fused_loss: bool = True) -> dict:
    """Bytes per GPU on the ``first`` or ``last`` pipeline stage."""
    par = cfg.parallel
    params = stage_parameters(m, par)[stage]
    rank = 0 if stage == "first" else par.pipeline_parallel - 1
    chunk_layers = m.num_layers // (par.pipeline_parallel * par.chunks)
    chunk = chunk_activation_bytes(m, cfg, chunk_layers, attention)
    optimizer_bytes = (4 if cfg.bf16 else 0) + 8  # fp32 main params (bf16 only), Adam m and v
    out = {
        "parameters": params,
        "weights": params * element_bytes(cfg.bf16),
        "grads": params * 4,
        "optimizer": params * optimizer_bytes / (par.data_parallel * par.context_parallel),
        "micro_batches_in_flight": in_flight(cfg, rank),
        "activations": in_flight(cfg, rank) * chunk["stored"] + chunk["recompute_work"],
        "loss": loss_bytes(m, cfg, fused_loss) if rank == par.pipeline_parallel - 1 else 0.0,
    }
    out["total"] = sum(out[k] for k in ("weights", "grads", "optimizer", "activations", "loss"))
    return out


# -- the plan -------------------------------------------------------------------------------------

def make_plan(tree: dict, mfu: float = DEFAULT_MFU, peak: float | None = None,
              gpu_memory_gib: float = DEFAULT_GPU_MEMORY_GIB, attention: Attention = "fused",
              fused_loss: bool = True) -> dict:
    """The plan of a resolved parameter tree (``dasi.config.resolve_params``) as one JSON-able dict.
    ``attention`` and ``fused_loss`` describe the kernels: the GPU path's defaults are fused."""
    m = validate_section("model", tree["model"], ModelConfig)
    cfg = validate_section("pretrain", tree["pretrain"], PretrainConfig)
    par = cfg.parallel
    if peak is None:
        peak = cfg.peak_tflops or peak_tflops(DEFAULT_DEVICE)
    stages = {s: stage_memory(m, cfg, s, attention, fused_loss) for s in ("first", "last")}
    peak_stage = max(stages, key=lambda s: stages[s]["total"])
    tokens = cfg.train_steps * cfg.global_batch * m.seq_length
    tokens_per_s_gpu = mfu * peak * 1e12 / flops_per_token(m)
    gpus = par.world_size
    gib = {s: {k: (v / GIB if k not in ("parameters", "micro_batches_in_flight") else v)
               for k, v in mem.items()} for s, mem in stages.items()}
    return {
        "profile": tree["profile"],
        "model": m.model_dump(),
        "parameters": parameter_split(m),
        "layout": {"tensor_parallel": par.tensor_parallel, "pipeline_parallel": par.pipeline_parallel,
                   "virtual_pipeline_parallel": par.virtual_pipeline_parallel,
                   "context_parallel": par.context_parallel, "sequence_parallel": par.sequence_parallel,
                   "data_parallel": par.data_parallel, "nodes": par.nodes, "gpus": gpus,
                   "micro_batch_size": cfg.micro_batch_size, "global_batch_size": cfg.global_batch,
                   "micro_batches_per_step": cfg.accumulation_steps, "recompute": cfg.recompute,
                   "recompute_num_layers": cfg.recompute_num_layers, "bf16": cfg.bf16,
                   "attention": attention},
        "memory_gib": gib,
        "peak_stage": peak_stage,
        "gpu_memory_gib": gpu_memory_gib,
        "fits": stages[peak_stage]["total"] / GIB <= gpu_memory_gib,
        "throughput": {"mfu": mfu, "peak_tflops": peak, "flops_per_token": flops_per_token(m),
                       "tokens_per_s_per_gpu": tokens_per_s_gpu,
                       "tokens_per_s": tokens_per_s_gpu * gpus},
        "budget": {"train_steps": cfg.train_steps, "tokens_per_step": cfg.global_batch * m.seq_length,
                   "tokens": tokens, "gpus": gpus, "days": tokens / (tokens_per_s_gpu * gpus) / 86400,
                   "gpu_hours": tokens / tokens_per_s_gpu / 3600},
    }


def _count(n: float) -> str:
    return f"{n / 1e9:.3f} B" if n >= 1e8 else f"{n / 1e6:.3f} M"


def render(p: dict) -> str:
    """The plan as a text table."""
    lay, par, mem, thr, bud = p["layout"], p["parameters"], p["memory_gib"], p["throughput"], p["budget"]
    vpp = f" x VPP {lay['virtual_pipeline_parallel']}" if lay["virtual_pipeline_parallel"] else ""
    sp = " + SP" if lay["sequence_parallel"] else ""
    one = lay["pipeline_parallel"] == 1  # the first stage is the last
    rec = lay["recompute"] + (f" ({lay['recompute_num_layers']} layers a block)"
                              if lay["recompute"] == "full" else "")
    rows = [
        f"pretraining plan for profile {p['profile']}",
        f"  layout      TP {lay['tensor_parallel']}{sp} x PP {lay['pipeline_parallel']}{vpp} x "
        f"CP {lay['context_parallel']} x DP {lay['data_parallel']} = {lay['gpus']} GPUs "
        f"on {lay['nodes']} node(s); {'bf16' if lay['bf16'] else 'fp32'}; recompute {rec}; "
        f"{lay['attention']} attention",
        f"  batch       {lay['global_batch_size']} sequences x {p['model']['seq_length']} tokens a step; "
        f"micro-batches of {lay['micro_batch_size']}, {lay['micro_batches_per_step']} a step per DP rank",
        f"  parameters  {_count(par['total'])} total: {_count(par['embedding_and_head'])} embedding + "
        f"head, {_count(par['rest'])} the rest",
        "",
        "  memory per GPU (GiB)" + ("" if one else f"   {'first stage':>12} {'last stage':>12}"),
    ]
    stages = [mem["first"]] if one else [mem["first"], mem["last"]]
    rows.append(f"    {'parameters':<20}" + "".join(f" {_count(st['parameters']):>12}" for st in stages))
    for key in ("weights", "grads", "optimizer", "activations", "loss", "total"):
        rows.append(f"    {key:<20}" + "".join(f" {st[key]:>12.2f}" for st in stages))
    rows.append(f"    {'micro-batches held':<20}" + "".join(f" {st['micro_batches_in_flight']:>12}"
                                                         for st in stages))
    peak = mem[p["peak_stage"]]["total"]
    verdict = "fits" if p["fits"] else "does NOT fit"
    where = "" if one else f" ({p['peak_stage']} stage)"
    rows += [
        f"  peak        {peak:.1f} GiB{where}: {verdict} in {p['gpu_memory_gib']:g} GiB "
        f"({p['gpu_memory_gib'] - peak:+.1f} GiB)",
        "",
        f"  throughput  {thr['tokens_per_s_per_gpu']:,.0f} tokens/s/GPU at MFU {thr['mfu']:.2f} of "
        f"{thr['peak_tflops']:g} TFLOP/s ({thr['flops_per_token']:.4g} FLOP a token); "
        f"{thr['tokens_per_s'] / 1e6:,.2f} M tokens/s on {bud['gpus']} GPUs",
        f"  budget      {bud['train_steps']:,} steps x {bud['tokens_per_step']:,} tokens = "
        f"{_count(bud['tokens'])} tokens: {bud['days']:,.1f} days, {bud['gpu_hours']:,.0f} GPU-hours",
    ]
    return "\n".join(rows)


def to_json(p: dict) -> str:
    return json.dumps(p)
