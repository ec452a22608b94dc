"""Stage ``export``: a megatron-core checkpoint (any tensor- or pipeline-parallel layout) -> a Hugging
Face ``LlamaForCausalLM`` folder, checked for logit parity and for loading + generating.

The weights stream: the checkpoint is read one layer at a time straight from its
``torch.distributed.checkpoint`` files (no model is built for it, no process group), each layer is
renamed to LLaMA's tensors and cast to ``export.dtype``, and the tensors go into safetensors shards
of at most ``export.max_shard_size`` with the ``model.safetensors.index.json`` transformers reads.
The writing holds about one layer plus one shard; the parity check then builds one fp32 model at a
time (megatron's, freed, then the exported one)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, PositiveInt, field_validator
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

from dasi.atomic import atomic_path, write_json
from dasi.integrity import VerifyMode
from dasi.model_config import ModelConfig
from dasi.strict import StrictModel

END_TOKEN = "<|end|>"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
              "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def parse_size(size: str | int) -> int:
    """Bytes in ``size``: an int, or a number with a unit as transformers writes them ("5GB" is
    5 * 10**9 bytes, "2GiB" 2 * 2**30)."""
    if isinstance(size, int) and not isinstance(size, bool):
        n = size
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)\s*", str(size), re.IGNORECASE)
        if not match or match[2].upper() not in SIZE_UNITS:
            raise ValueError("expected a size such as 5GB, 500MB, 2GiB or a number of bytes")
        n = int(float(match[1]) * SIZE_UNITS[match[2].upper()])
    if n <= 0:
        raise ValueError("must be more than 0 bytes")
    return n


class ExportConfig(StrictModel):
    max_logit_diff: float = Field(1e-4, gt=0, description="fail when megatron and HF logits differ more")
    parity_tokens: PositiveInt = 64
    generate_tokens: PositiveInt = 8
    step: int | None = Field(None, description="checkpoint step; default: latest")
    verify_data: VerifyMode = Field("sha256", description="check packed files by sha256 or only size")
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto", description="weights' dtype; auto: the checkpoint's (bf16 when pretrain.bf16, else fp32)")
    max_shard_size: str | int = Field("5GB", description="largest safetensors file (one larger tensor "
                                                         "gets a file of its own)")

    @field_validator("max_shard_size")
    @classmethod
    def _size_parses(cls, value: str | int) -> str | int:
        parse_size(value)
        return value

    @property
    def max_shard_bytes(self) -> int:
        return parse_size(self.max_shard_size)


# A layer's norm weights under the local spec and, fused into the next linear, under Transformer
# Engine's (what build_gpt uses on a GPU with TE installed; dist_checkpointing's sharded keys use
# these names for both).
NORM_KEYS = {"input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
             "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight"}


def _norm(sd: dict[str, torch.Tensor], layer: str, local: str) -> torch.Tensor:
    for key in (layer + local, layer + NORM_KEYS[local]):
        if key in sd:
            return sd[key]
    raise KeyError(f"{layer + local} or {layer + NORM_KEYS[local]}: neither is in the state dict")


def embedding_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"model.embed_tokens.weight": sd["embedding.word_embeddings.weight"]}


def head_to_hf(sd: dict[str, torch.Tensor], m: ModelConfig) -> dict[str, torch.Tensor]:
    """The final norm, and ``lm_head`` when untied (a tied one is the embedding: transformers ties
    it on load)."""
    out = {"model.norm.weight": sd["decoder.final_layernorm.weight"]}
    if m.untie_embeddings:
        out["lm_head.weight"] = sd["output_layer.weight"]
    return out


def layer_to_hf(sd: dict[str, torch.Tensor], i: int, m: ModelConfig) -> dict[str, torch.Tensor]:
    """Layer ``i`` of a TP=1 megatron state dict as LLaMA tensors (views of ``sd``'s).

    ``linear_qkv`` rows are grouped per KV group as [q heads of the group, k, v]; ``linear_fc1``
    rows are [gate, up]; the norms are read under local-spec or Transformer Engine names."""
    hd, groups = m.head_dim, m.num_query_groups
    q_per_group = m.num_attention_heads // groups
    src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
    qkv = sd[src + "self_attention.linear_qkv.weight"].reshape(groups, (q_per_group + 2) * hd, -1)
    q, k, v = qkv.split([q_per_group * hd, hd, hd], dim=1)
    gate, up = sd[src + "mlp.linear_fc1.weight"].chunk(2, dim=0)
    return {
        dst + "self_attn.q_proj.weight": q.reshape(-1, m.hidden_size),
        dst + "self_attn.k_proj.weight": k.reshape(-1, m.hidden_size),
        dst + "self_attn.v_proj.weight": v.reshape(-1, m.hidden_size),
        dst + "self_attn.o_proj.weight": sd[src + "self_attention.linear_proj.weight"],
        dst + "mlp.gate_proj.weight": gate,
        dst + "mlp.up_proj.weight": up,
        dst + "mlp.down_proj.weight": sd[src + "mlp.linear_fc2.weight"],
        dst + "input_layernorm.weight": _norm(sd, src, "input_layernorm.weight"),
        dst + "post_attention_layernorm.weight": _norm(sd, src, "pre_mlp_layernorm.weight"),
    }


def megatron_to_hf(sd: dict[str, torch.Tensor], m: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename and split a full (TP=1) megatron GPT state dict into LLaMA tensors (fp32 copies),
    ``lm_head`` included when tied (``LlamaForCausalLM.state_dict`` lists it)."""
    out = {**embedding_to_hf(sd), **head_to_hf(sd, m)}
    if not m.untie_embeddings:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    for i in range(m.num_layers):
        out.update(layer_to_hf(sd, i, m))
    return {k: v.detach().float().contiguous().clone() for k, v in out.items()}


class CheckpointTensors:
    """The model tensors of a megatron ``dist_checkpointing`` folder as a TP=1 model holds them,
    read region by region with ``torch.distributed.checkpoint`` (no model, no process group).

    The stored keys are global, whatever tensor- or pipeline-parallel layout saved them and
    whatever its state dict's top-level names (``model``, ``model0``..); the layers are stacked
    along a first axis of ``num_layers``."""

    LAYERS = "decoder.layers."

    def __init__(self, folder: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        self.folder = Path(folder)
        backend = json.loads((self.folder / "metadata.json").read_text()).get("sharded_backend")
        if backend != "torch_dist":
            raise ValueError(f"{self.folder}: sharded_backend {backend!r}; export reads torch_dist")
        meta = dcp.FileSystemReader(str(self.folder)).read_metadata().state_dict_metadata
        self.meta = {k: v for k, v in meta.items() if isinstance(v, TensorStorageMetadata)
                     and not k.startswith("optimizer.")}

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the weights were trained in (the norms may be kept in fp32)."""
        return self.meta["embedding.word_embeddings.weight"].properties.dtype

    def layer_keys(self) -> list[str]:
        return sorted(k for k in self.meta if k.startswith(self.LAYERS))

    def check(self, m: ModelConfig) -> None:
        """One line naming what differs when the checkpoint is not of shape ``m``."""
        embedding = tuple(self.meta["embedding.word_embeddings.weight"].size)
        if embedding != (m.vocab_size, m.hidden_size):
            raise ValueError(f"{self.folder}: embedding is {embedding}, model: (vocab_size, hidden_size) is "
                             f"{(m.vocab_size, m.hidden_size)}")
        for key in self.layer_keys():
            if self.meta[key].size[0] != m.num_layers:
                raise ValueError(f"{self.folder}: {key} holds {self.meta[key].size[0]} layers, "
                                 f"model.num_layers is {m.num_layers}")

    def read(self, regions: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]) -> dict[str, torch.Tensor]:
        """``{key: (offsets, sizes)}`` -> those regions of the stored global tensors, in their
        stored dtypes."""
        import torch.distributed.checkpoint as dcp

        out = {k: torch.empty(size, dtype=self.meta[k].properties.dtype) for k, (_, size) in regions.items()}
        dcp.load(out, storage_reader=dcp.FileSystemReader(str(self.folder)),
                 planner=_RegionPlanner({k: offsets for k, (offsets, _) in regions.items()}), no_dist=True)
        return out

    def whole(self, *keys: str) -> dict[str, torch.Tensor]:
        return self.read({k: ((0,) * len(self.meta[k].size), tuple(self.meta[k].size)) for k in keys})

    def layer(self, i: int) -> dict[str, torch.Tensor]:
        """Layer ``i``'s tensors, named ``decoder.layers.<i>.<name>``."""
        regions = {k: ((i,) + (0,) * (len(self.meta[k].size) - 1), (1, *self.meta[k].size[1:]))
                   for k in self.layer_keys()}
        return {f"{self.LAYERS}{i}.{k[len(self.LAYERS):]}": t[0] for k, t in self.read(regions).items()}


class _RegionPlanner(DefaultLoadPlanner):
    """Loads each plain tensor of the state dict as the region of the stored tensor that starts at
    its offsets (the default planner loads a plain tensor only whole)."""

    def __init__(self, offsets: dict[str, tuple[int, ...]]) -> None:
        super().__init__()
        self.offsets = offsets

    def create_local_plan(self) -> Any:
        from torch.distributed.checkpoint.metadata import ChunkStorageMetadata
        from torch.distributed.checkpoint.planner import LoadPlan
        from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

        items = []
        for key, tensor in self.state_dict.items():
            chunk = ChunkStorageMetadata(offsets=torch.Size(self.offsets[key]), sizes=tensor.size())
            items += create_read_items_for_chunk_list(key, self.metadata.state_dict_metadata[key], [chunk])
        return LoadPlan(items)

    def lookup_tensor(self, index: Any) -> torch.Tensor:
        return self.state_dict[index.fqn]  # read items' offsets are relative to this region


class ShardWriter:
    """safetensors files of at most ``max_bytes`` each (a larger tensor gets one of its own), named
    as transformers names them once their number is known: ``model.safetensors`` alone, or
    ``model-0000i-of-0000n.safetensors`` with ``model.safetensors.index.json``."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder, self.max_bytes = Path(folder), max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.written: list[list[str]] = []  # tensor names per written file
        self.total_bytes = 0

    def add(self, tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
        """Copies of ``tensors`` in ``dtype`` (their own storage: views of a loaded layer would keep
        it alive, and safetensors refuses tensors that share memory)."""
        for name, tensor in tensors.items():
            size = tensor.numel() * dtype.itemsize
            if self.pending and self.pending_bytes + size > self.max_bytes:
                self._flush()
            self.pending[name] = tensor.detach().to(dtype, copy=True).contiguous()
            self.pending_bytes += size

    def _part(self, i: int) -> Path:
        return self.folder / f".part-{i:05d}.safetensors"

    def _flush(self) -> None:
        from safetensors.torch import save_file

        save_file(self.pending, str(self._part(len(self.written))), metadata={"format": "pt"})
        self.written.append(list(self.pending))
        self.total_bytes += self.pending_bytes
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> list[str]:
        """Give the files their names (and write the index when there are several); returns them."""
        if self.pending:
            self._flush()
        n = len(self.written)
        if n == 1:
            os.replace(self._part(0), self.folder / SINGLE_FILE)
            return [SINGLE_FILE]
        names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        weight_map = {}
        for i, name in enumerate(names):
            os.replace(self._part(i), self.folder / name)
            weight_map.update(dict.fromkeys(self.written[i], name))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        return names


def export_dtype(choice: str, checkpoint_dtype: torch.dtype) -> torch.dtype:
    return checkpoint_dtype if choice == "auto" else DTYPES[choice]


def write_weights(tensors: CheckpointTensors, m: ModelConfig, folder: Path, dtype: torch.dtype,
                  max_shard_bytes: int) -> list[str]:
    """Stream the checkpoint's weights into safetensors shards in ``folder``, layer by layer;
    returns the files written."""
    writer = ShardWriter(folder, max_shard_bytes)
    writer.add(embedding_to_hf(tensors.whole("embedding.word_embeddings.weight")), dtype)
    for i in range(m.num_layers):
        writer.add(layer_to_hf(tensors.layer(i), i, m), dtype)
    head = ["decoder.final_layernorm.weight"] + (["output_layer.weight"] if m.untie_embeddings else [])
    writer.add(head_to_hf(tensors.whole(*head), m), dtype)
    return writer.close()


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def llama_config(m: ModelConfig, tok: Any, dtype: str = "float32") -> Any:
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        vocab_size=m.vocab_size, hidden_size=m.hidden_size, intermediate_size=m.ffn_hidden_size,
        num_hidden_layers=m.num_layers, num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.num_query_groups, head_dim=m.head_dim, hidden_act="silu",
        max_position_embeddings=m.seq_length, rms_norm_eps=m.norm_epsilon, rope_theta=m.rotary_base,
        attention_bias=m.add_bias, mlp_bias=m.add_bias, tie_word_embeddings=not m.untie_embeddings,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        initializer_range=m.init_std, torch_dtype=dtype)
    cfg.rope_theta = m.rotary_base  # kept as a top-level key whatever transformers' rope format
    return cfg


def _load_tokenizer(tokenizer_dir: Path, m: ModelConfig) -> tuple[Any, int]:
    """The tokenizer and its end-of-turn id, checked against the model before anything is written."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if len(tok) > m.vocab_size:
        raise ValueError(f"tokenizer has {len(tok)} tokens, model vocab_size {m.vocab_size}")
    end_id = tok.convert_tokens_to_ids(END_TOKEN)
    if end_id is None or end_id == tok.unk_token_id:
        raise ValueError(f"tokenizer in {tokenizer_dir} has no {END_TOKEN} token")
    return tok, end_id


def _write_folder(folder: Path, m: ModelConfig, tokenizer_dir: Path, tok: Any, end_id: int,
                  dtype: str) -> None:
    """Everything of the HF folder but the weights: config, generation config, tokenizer."""
    from transformers import GenerationConfig

    folder.mkdir(parents=True)
    cfg = llama_config(m, tok, dtype)
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(rope_theta=m.rotary_base, tie_word_embeddings=not m.untie_embeddings)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=[tok.eos_token_id, end_id],
                     pad_token_id=tok.pad_token_id).save_pretrained(folder)
    for f in Path(tokenizer_dir).iterdir():
        if f.is_file():
            shutil.copy2(f, folder / f.name)


def _parity_ids(manifest: Path | None, m: ModelConfig, n: int, verify: VerifyMode) -> torch.Tensor:
    """Real packed tokens (checked against the manifest first) when a manifest is given, else a
    fixed random draw."""
    n = min(n, m.seq_length)
    if manifest is not None:
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        from pretrain.pack import verify_manifest

        man = verify_manifest(manifest, verify)
        d = man.split("valid")[0]
        dataset = IndexedDataset(str(Path(manifest).parent / d.prefix))
        ids = dataset[0][:n].astype("int64")  # a copy: the mmap closes with ``dataset``
        return torch.from_numpy(ids).unsqueeze(0)
    return torch.randint(0, m.vocab_size, (1, n), generator=torch.Generator().manual_seed(0))


def megatron_logits(source: Path, m: ModelConfig, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Logits of checkpoint ``source`` through megatron in fp32, its weights first rounded to the
    export ``dtype`` (so that parity checks the conversion, not the rounding); the model is freed
    on return."""
    from pretrain import checkpoint as ckpt
    from pretrain.model import build_gpt, distributed

    with distributed(tensor_parallel=1):
        gpt = build_gpt(m).float()
        ckpt.load(source, gpt, restore_rng=False)
        gpt.eval()
        device = next(gpt.parameters()).device
        with torch.no_grad():
            for p in gpt.parameters():
                p.copy_(p.to(dtype).float())
            pos = torch.arange(ids.shape[1], device=device).unsqueeze(0)
            return gpt(ids.to(device), pos, None).float().cpu()


def run(cfg: ExportConfig, model_cfg: ModelConfig, checkpoints: Path, tokenizer_dir: Path, out: Path,
        metrics: Path, log: Any, manifest: Path | None = None) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pretrain import checkpoint as ckpt

    step = cfg.step if cfg.step is not None else ckpt.latest_step(checkpoints)
    if step is None:
        raise FileNotFoundError(f"{checkpoints}: no 'latest' checkpoint (run pretrain first)")
    source = ckpt.iter_dir(checkpoints, step)
    ckpt.verify(source)
    ids = _parity_ids(manifest, model_cfg, cfg.parity_tokens, cfg.verify_data)
    tok, end_id = _load_tokenizer(tokenizer_dir, model_cfg)
    tensors = CheckpointTensors(source)
    tensors.check(model_cfg)
    dtype = export_dtype(cfg.dtype, tensors.dtype)
    with atomic_path(out) as tmp:
        _write_folder(tmp, model_cfg, tokenizer_dir, tok, end_id, dtype_name(dtype))
        files = write_weights(tensors, model_cfg, tmp, dtype, cfg.max_shard_bytes)
        mg_logits = megatron_logits(source, model_cfg, ids, dtype)
        hf = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
        with torch.no_grad():
            hf_logits = hf(ids).logits.float()
        diff = (hf_logits - mg_logits).abs().max().item()
        result = {"checkpoint_step": step, "max_abs_logit_diff": diff, "parity_tokens": ids.shape[1],
                  "parameters": sum(p.numel() for p in hf.parameters()),
                  "argmax_agreement": (hf_logits.argmax(-1) == mg_logits.argmax(-1)).float().mean().item(),
                  "dtype": dtype_name(dtype), "weight_files": len(files)}
        if not diff < cfg.max_logit_diff:
            write_json(metrics, {**result, "passed": False})
            raise ValueError(f"export parity failed: max |logit diff| {diff:.3g} >= {cfg.max_logit_diff}")
        tok = AutoTokenizer.from_pretrained(tmp)
        prompt = tok.apply_chat_template([{"role": "user", "content": "안녕하세요"}],
                                         add_generation_prompt=True, return_tensors="pt", return_dict=True)
        gen = hf.generate(**prompt, max_new_tokens=cfg.generate_tokens, do_sample=False)
        result.update(generated_tokens=int(gen.shape[1] - prompt["input_ids"].shape[1]),
                      sample=tok.decode(gen[0, prompt["input_ids"].shape[1]:]), passed=True)
    write_json(metrics, result)
    log.log({k: v for k, v in result.items() if k not in ("sample", "dtype")}, step=step)
    log.summary(result)
    return result
