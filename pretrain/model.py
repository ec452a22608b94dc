"""Build the LLaMA-style megatron-core GPTModel from a :class:`ModelConfig`, and set up the process
groups it runs in (gloo on CPU, nccl on GPU; in-process for one rank, torchrun for more)."""

from __future__ import annotations

import importlib.util
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.nn.functional as F

from dasi.model_config import ModelConfig, parameter_count
from pretrain import cpu_shims


def on_gpu() -> bool:
    return torch.cuda.is_available()


def te_unavailable() -> str | None:
    """Why Transformer Engine layers cannot be used here, or None when they can."""
    if not on_gpu():
        return "no CUDA device"
    try:
        import transformer_engine  # noqa: F401
    except ImportError as e:
        return f"transformer_engine does not import ({e})"
    return None


def have_transformer_engine() -> bool:
    return te_unavailable() is None


def _fused_softmax_kernels() -> bool:
    """Whether megatron's fused masked-softmax CUDA kernels (built by Apex) import here."""
    return all(importlib.util.find_spec(name) is not None
               for name in ("scaled_masked_softmax_cuda", "scaled_upper_triang_masked_softmax_cuda"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def distributed(tensor_parallel: int = 1, seed: int = 1234, pipeline_parallel: int = 1,
                virtual_pipeline_parallel: int | None = None, context_parallel: int = 1) -> Iterator[None]:
    """Process group + megatron model-parallel state for this process, torn down on exit.

    Under torchrun the rank and world come from the environment; otherwise a one-rank group is
    started in-process on a free port.
    """
    import megatron.core.parallel_state as mpu
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    shimmed = not cpu_shims.installed() and cpu_shims.install()
    own_group = not torch.distributed.is_initialized()
    if own_group:
        if "RANK" not in os.environ:
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
                              RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
            started_env = True
        else:
            started_env = False
        if on_gpu():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group("nccl" if on_gpu() else "gloo",
                                             timeout=timedelta(minutes=10))
    world = torch.distributed.get_world_size()
    model_parallel = tensor_parallel * pipeline_parallel * context_parallel
    if world % model_parallel:
        raise ValueError(f"world size {world} is not divisible by tensor x pipeline x context parallel "
                         f"{model_parallel}")
    mpu.initialize_model_parallel(
        tensor_model_parallel_size=tensor_parallel, pipeline_model_parallel_size=pipeline_parallel,
        virtual_pipeline_model_parallel_size=virtual_pipeline_parallel if pipeline_parallel > 1 else None,
        context_parallel_size=context_parallel)
    model_parallel_cuda_manual_seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        mpu.destroy_model_parallel()
        if own_group:
            torch.distributed.destroy_process_group()
            if started_env:
                for var in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
                    os.environ.pop(var, None)
        if shimmed:
            cpu_shims.uninstall()


def _layout(train: Any | None) -> dict[str, Any]:
    """TransformerConfig's parallelism and recompute settings from a PretrainConfig (None: the
    process groups' sizes, no recompute)."""
    import megatron.core.parallel_state as mpu

    pp = mpu.get_pipeline_model_parallel_world_size()
    out: dict[str, Any] = {
        "tensor_model_parallel_size": mpu.get_tensor_model_parallel_world_size(),
        "pipeline_model_parallel_size": pp,
        "virtual_pipeline_model_parallel_size": mpu.get_virtual_pipeline_model_parallel_world_size(),
        "context_parallel_size": mpu.get_context_parallel_world_size(),
    }
    if train is None:
        return out
    out["sequence_parallel"] = train.parallel.sequence_parallel
    if pp > 1:
        out["pipeline_dtype"] = torch.bfloat16 if train.bf16 else torch.float32
        # gloo has no batched (coalesced) point-to-point: single isend/irecv pairs instead.
        out["batch_p2p_comm"] = on_gpu()
    if train.recompute == "selective":
        out.update(recompute_granularity="selective", recompute_modules=["core_attn"])
    elif train.recompute == "full":
        out.update(recompute_granularity="full", recompute_method="uniform",
                   recompute_num_layers=train.recompute_num_layers)
    return out


def transformer_config(m: ModelConfig, bf16: bool = False, initialize: bool = True, train: Any | None = None):
    """megatron TransformerConfig for ``m``: RMSNorm, SwiGLU, GQA, no biases, no dropout; the
    parallel layout and recompute of ``train`` (a PretrainConfig) when given."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    gpu = on_gpu()
    return TransformerConfig(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_query_groups=m.num_query_groups,
        ffn_hidden_size=m.ffn_hidden_size,
        kv_channels=m.head_dim,
        normalization=m.normalization,
        layernorm_epsilon=m.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=m.add_bias,
        add_qkv_bias=m.add_bias,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=m.init_std,
        **_layout(train),
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        bf16=bf16,
        use_cpu_initialization=not gpu,
        perform_initialization=initialize,
        gradient_accumulation_fusion=False,
        bias_activation_fusion=gpu,
        # DotProductAttention imports the fused softmax kernels when asked to fuse: only where
        # they exist. persist_layer_norm is Apex's LayerNorm option; our RMSNorm is torch's
        # (local spec), which refuses it, or TE's, which ignores it.
        masked_softmax_fusion=gpu and _fused_softmax_kernels(),
        persist_layer_norm=False,
        bias_dropout_fusion=gpu,
        apply_rope_fusion=False,
        # megatron's own fused vocab-parallel cross entropy (jit, no TE/Apex): one pass over the logits
        cross_entropy_loss_fusion=gpu,
        cross_entropy_fusion_impl="native",
    )


def layer_spec(use_te: bool | None = None, sdpa: bool | None = None):
    """Transformer Engine layers when ``use_te`` (default: when available), else the local ones;
    training records which one it used (``layer_spec`` in its summary and checkpoints).

    The local layers' core attention is :class:`~pretrain.sdpa_attention.SdpaAttention` when
    ``sdpa`` (default: on GPU), else megatron's ``DotProductAttention``. The CPU default stays
    ``DotProductAttention``: the CPU pipeline's released checksums were computed with it."""
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )

    if have_transformer_engine() if use_te is None else use_te:
        return get_gpt_layer_with_transformer_engine_spec()
    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    if on_gpu() if sdpa is None else sdpa:
        from pretrain.sdpa_attention import SdpaAttention

        # get_gpt_layer_local_spec builds a new spec on every call: changing it here is private.
        spec.submodules.self_attention.submodules.core_attention = SdpaAttention
    return spec


class SequenceParallelRMSNorm:
    """torch's RMSNorm, as megatron's local ``WrappedTorchNorm`` builds it, allowed under sequence
    parallelism (which that wrapper refuses): the norm is per token, so it runs on a sequence
    shard as on the whole; its weight is marked ``sequence_parallel`` so that megatron's
    ``finalize_model_grads`` sums its gradient over the tensor-parallel ranks."""

    def __new__(cls, config: Any, hidden_size: int, eps: float = 1e-5) -> torch.nn.Module:
        norm = torch.nn.RMSNorm(normalized_shape=hidden_size, eps=eps)
        for p in norm.parameters():
            p.sequence_parallel = config.sequence_parallel
        return norm


def _sequence_parallel_block(spec: Any, config: Any, vp_stage: int | None) -> Any:
    """The local layer spec as a whole-block spec whose norms take sequence parallelism."""
    import copy

    from megatron.core.transformer.spec_utils import ModuleSpec
    from megatron.core.transformer.transformer_block import (
        TransformerBlock,
        TransformerBlockSubmodules,
        get_num_layers_to_build,
    )

    layer = copy.deepcopy(spec)
    layer.submodules.input_layernorm = SequenceParallelRMSNorm
    layer.submodules.pre_mlp_layernorm = SequenceParallelRMSNorm
    layers = [layer] * get_num_layers_to_build(config, vp_stage=vp_stage)
    return ModuleSpec(module=TransformerBlock, submodules=TransformerBlockSubmodules(
        layer_specs=layers, layer_norm=SequenceParallelRMSNorm))


def tp_numel(model: torch.nn.Module | list[torch.nn.Module]) -> int:
    """Parameters of the whole (un-split) model: this rank's chunks, summed over the tensor- and
    pipeline-parallel groups (context- and data-parallel ranks hold copies)."""
    import megatron.core.parallel_state as mpu
    from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate

    chunks = model if isinstance(model, list) else [model]
    local = sum(p.numel() for c in chunks for p in c.parameters()
                if param_is_not_tensor_parallel_duplicate(p) and not _pipeline_copy(c, p))
    total = None
    for group in (mpu.get_tensor_model_parallel_group(), mpu.get_pipeline_model_parallel_group()):
        # NCCL reduces only CUDA tensors, gloo only CPU ones.
        device = "cuda" if torch.distributed.get_backend(group) == "nccl" else "cpu"
        total = torch.tensor([local if total is None else total.item()], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(total, group=group)
    return int(total.item())


def _pipeline_copy(chunk: torch.nn.Module, param: torch.nn.Parameter) -> bool:
    """The last pipeline stage's copy of tied word embeddings (the first stage holds the original)."""
    return bool(getattr(chunk, "share_embeddings_and_output_weights", False)) and not chunk.pre_process \
        and param is getattr(getattr(chunk, "output_layer", None), "weight", None)


def _check_shape(m: ModelConfig, tokenizer_vocab: int | None) -> None:
    import megatron.core.parallel_state as mpu

    if tokenizer_vocab is not None and tokenizer_vocab > m.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer_vocab} tokens but model.vocab_size is "
                         f"{m.vocab_size}: raise model.vocab_size")
    tp = mpu.get_tensor_model_parallel_world_size()
    if m.vocab_size % tp or m.num_query_groups % tp or m.ffn_hidden_size % tp:
        raise ValueError(f"vocab_size, num_query_groups and ffn_hidden_size must divide by TP={tp}")
    vpp = mpu.get_virtual_pipeline_model_parallel_world_size() or 1
    stages = mpu.get_pipeline_model_parallel_world_size() * vpp
    if m.num_layers % stages:
        raise ValueError(f"num_layers {m.num_layers} must divide by pipeline_parallel x "
                         f"virtual_pipeline_parallel = {stages}")
    cp = mpu.get_context_parallel_world_size()
    if m.seq_length % (2 * cp):
        raise ValueError(f"seq_length {m.seq_length} must divide by 2 x context_parallel = {2 * cp}")


def _gpt(m: ModelConfig, config: Any, spec: Any, vp_stage: int | None):
    import megatron.core.parallel_state as mpu
    from megatron.core.models.gpt import GPTModel

    virtual = mpu.get_virtual_pipeline_model_parallel_world_size() is not None
    if config.sequence_parallel and not have_transformer_engine():
        spec = _sequence_parallel_block(spec, config, vp_stage)
    return GPTModel(
        config=config,
        transformer_layer_spec=spec,
        vocab_size=m.vocab_size,
        max_sequence_length=m.seq_length,
        pre_process=mpu.is_pipeline_first_stage(ignore_virtual=not virtual, vp_stage=vp_stage),
        post_process=mpu.is_pipeline_last_stage(ignore_virtual=not virtual, vp_stage=vp_stage),
        share_embeddings_and_output_weights=not m.untie_embeddings,
        position_embedding_type="rope",
        rotary_base=int(m.rotary_base),
        parallel_output=True,
        vp_stage=vp_stage,
    )


def build_chunks(m: ModelConfig, bf16: bool = False, use_te: bool | None = None,
                 tokenizer_vocab: int | None = None, meta: bool = False, sdpa: bool | None = None,
                 train: Any | None = None) -> list[Any]:
    """This rank's model chunks for ``m``: one, or ``virtual_pipeline_parallel`` with interleaved
    pipelining; the whole model (over TP and PP ranks) must have ``parameter_count(m)`` parameters.

    ``meta=True`` builds without initialising (the untouched CPU pages are never committed) and
    moves the model to the meta device: a 10.8B shape can be checked on a laptop. ``sdpa`` picks
    the local layers' core attention (see :func:`layer_spec`); context parallelism needs it
    without Transformer Engine. ``train`` (a PretrainConfig) gives the layout and recompute."""
    import megatron.core.parallel_state as mpu

    _check_shape(m, tokenizer_vocab)
    config = transformer_config(m, bf16, initialize=not meta, train=train)
    if mpu.get_context_parallel_world_size() > 1 and sdpa is None:
        sdpa = True  # megatron's DotProductAttention refuses context parallelism
    spec = layer_spec(use_te, sdpa)
    vpp = mpu.get_virtual_pipeline_model_parallel_world_size()
    chunks = [_gpt(m, config, spec, i if vpp else None) for i in range(vpp or 1)]
    for chunk in chunks:
        # Transformer Engine layers bring their own fused kernels: compile is for the local ones.
        if train is not None and train.compile and not meta \
                and not (have_transformer_engine() if use_te is None else use_te):
            compile_layers(chunk)
        if meta:
            chunk.to("meta")
        elif on_gpu():
            chunk.cuda(torch.cuda.current_device())
    n, want = tp_numel(chunks), parameter_count(m)
    if n != want:
        raise AssertionError(f"built model has {n:,} parameters, parameter_count says {want:,}")
    return chunks


def compile_layers(chunk: torch.nn.Module) -> None:
    """``torch.compile`` every transformer layer of ``chunk`` in place (``Module.compile``: the
    state-dict keys stay as they are, so checkpoints do not change). The layers share one class,
    so they share the compiled code; the first step pays the compilation.

    megatron's row-parallel linear issues a DeprecationWarning (hidden by default) on every
    forward; dynamo would break the layer's graph there, so it skips ``warnings.warn`` in traced
    code (``ignore_logging_functions``; ``ignore_logger_methods`` before torch 2.10)."""
    import warnings

    dynamo = torch._dynamo.config
    ignored = dynamo.ignore_logging_functions if hasattr(dynamo, "ignore_logging_functions") \
        else dynamo.ignore_logger_methods
    ignored.add(warnings.warn)
    for layer in chunk.decoder.layers:
        layer.compile()


def build_gpt(m: ModelConfig, bf16: bool = False, use_te: bool | None = None,
              tokenizer_vocab: int | None = None, meta: bool = False, sdpa: bool | None = None):
    """The GPTModel for ``m`` on this rank, without pipeline parallelism (export, benchmarks):
    :func:`build_chunks`' only chunk."""
    (model,) = build_chunks(m, bf16, use_te, tokenizer_vocab, meta, sdpa)
    return model
