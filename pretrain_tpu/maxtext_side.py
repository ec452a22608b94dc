"""The MaxText side of the TPU path: run by the MaxText venv's Python (3.12), never by dasi's.

MaxText needs Python >= 3.12 and dasi runs on 3.11, so dasi (``pretrain_tpu.stage``) calls this file
as a subprocess. It imports only numpy, safetensors, jax, orbax and maxtext, never dasi, and talks
to dasi through files: HF safetensors folders, Orbax checkpoints, npz arrays.

Sub-commands:
  train <run.yml> [key=value ...]   MaxText pretraining, with the blend margin dasi's data uses
  import-hf <hf> <out>              HF Llama weights -> MaxText parameter checkpoint <out>/0/items
  export-hf <items> <out>           MaxText checkpoint params -> <out>/model.safetensors (HF names)
  logits <run.yml> <items> <npz>    MaxText's own forward pass on the npz's ``tokens`` -> ``logits``

The weight mapping (checked by the parity tests, ~5e-6 in fp32):
- every HF Linear is transposed; q/k/v kernels are (E, heads, D), the output kernel (H, D, E);
- MaxText's llama2 attention does not scale q.k: the 1/sqrt(D) lives in the query kernel;
- ``rope_type=default`` rotates halves, as HF and Megatron do: no permutation of q/k;
- with ``scan_layers`` the layers are stacked on axis 1 (MaxText's ``param_scan_axis``).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

LAYER = {  # MaxText path under a decoder layer -> HF name under model.layers.<i>.
    ("self_attention", "query", "kernel"): "self_attn.q_proj.weight",
    ("self_attention", "key", "kernel"): "self_attn.k_proj.weight",
    ("self_attention", "value", "kernel"): "self_attn.v_proj.weight",
    ("self_attention", "out", "kernel"): "self_attn.o_proj.weight",
    ("mlp", "wi_0", "kernel"): "mlp.gate_proj.weight",
    ("mlp", "wi_1", "kernel"): "mlp.up_proj.weight",
    ("mlp", "wo", "kernel"): "mlp.down_proj.weight",
    ("pre_self_attention_layer_norm", "scale"): "input_layernorm.weight",
    ("post_self_attention_layer_norm", "scale"): "post_attention_layernorm.weight",
}


def _shape(config: dict) -> tuple[int, int, int, int]:
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return config["hidden_size"], heads, config["num_key_value_heads"], head_dim


def layer_to_maxtext(name: str, w: np.ndarray, config: dict) -> np.ndarray:
    """One HF layer weight -> its MaxText kernel or scale."""
    e, h, k, d = _shape(config)
    if name.endswith("layernorm.weight"):
        return w
    t = w.T
    if name.endswith("q_proj.weight"):
        return t.reshape(e, h, d) / np.float32(math.sqrt(d))
    if name.endswith(("k_proj.weight", "v_proj.weight")):
        return t.reshape(e, k, d)
    if name.endswith("o_proj.weight"):
        return t.reshape(h, d, e)
    return t


def layer_to_hf(name: str, w: np.ndarray, config: dict) -> np.ndarray:
    """The inverse of :func:`layer_to_maxtext`."""
    e, h, k, d = _shape(config)
    if name.endswith("layernorm.weight"):
        return w
    if name.endswith("q_proj.weight"):
        return (w * np.float32(math.sqrt(d))).reshape(e, h * d).T
    if name.endswith(("k_proj.weight", "v_proj.weight")):
        return w.reshape(e, k * d).T
    if name.endswith("o_proj.weight"):
        return w.reshape(h * d, e).T
    return w.T


def _put(tree: dict, path: tuple[str, ...], value: np.ndarray) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: dict, path: tuple[str, ...]) -> np.ndarray:
    for key in path:
        tree = tree[key]
    return np.asarray(tree)


def hf_to_maxtext(hf: dict[str, np.ndarray], config: dict, scan_layers: bool) -> dict:
    """HF Llama state dict (numpy) -> MaxText ``params`` tree."""
    tree: dict = {
        "token_embedder": {"embedding": hf["model.embed_tokens.weight"]},
        "decoder": {"decoder_norm": {"scale": hf["model.norm.weight"]}},
    }
    if not config.get("tie_word_embeddings", False):
        tree["decoder"]["logits_dense"] = {"kernel": hf["lm_head.weight"].T}
    n = config["num_hidden_layers"]
    for path, hf_name in LAYER.items():
        per_layer = [layer_to_maxtext(hf_name, hf[f"model.layers.{i}.{hf_name}"], config) for i in range(n)]
        if scan_layers:
            _put(tree["decoder"], ("layers", *path), np.stack(per_layer, axis=1))
        else:
            for i, w in enumerate(per_layer):
                _put(tree["decoder"], (f"layers_{i}", *path), w)
    return tree


def maxtext_to_hf(params: dict, config: dict) -> dict[str, np.ndarray]:
    """MaxText ``params`` tree -> HF Llama state dict (numpy, contiguous)."""
    dec = params["decoder"]
    hf = {
        "model.embed_tokens.weight": _get(params, ("token_embedder", "embedding")),
        "model.norm.weight": _get(dec, ("decoder_norm", "scale")),
    }
    if not config.get("tie_word_embeddings", False):
        hf["lm_head.weight"] = _get(dec, ("logits_dense", "kernel")).T
    scanned = "layers" in dec
    for i in range(config["num_hidden_layers"]):
        for path, hf_name in LAYER.items():
            w = np.take(_get(dec["layers"], path), i, axis=1) if scanned else _get(dec[f"layers_{i}"], path)
            hf[f"model.layers.{i}.{hf_name}"] = layer_to_hf(hf_name, w, config)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in hf.items()}


def read_hf(folder: Path) -> tuple[dict[str, np.ndarray], dict]:
    from safetensors.numpy import load_file

    config = json.loads((folder / "config.json").read_text())
    weights: dict[str, np.ndarray] = {}
    for f in sorted(folder.glob("*.safetensors")):
        weights.update({k: v.astype(np.float32) for k, v in load_file(f).items()})
    return weights, config


def cmd_import_hf(args: argparse.Namespace) -> None:
    from maxtext.checkpoint_conversion.utils.utils import save_weights_to_checkpoint

    weights, config = read_hf(Path(args.hf))
    tree = hf_to_maxtext(weights, config, args.scan_layers)
    save_weights_to_checkpoint(
        str(Path(args.out).resolve()), {"params": tree}, 1, use_ocdbt=True, use_zarr3=True
    )


def restore_params(items: Path) -> dict:
    """The ``params`` collection of a MaxText checkpoint (training or imported), as numpy."""
    import orbax.checkpoint as ocp

    items = Path(items).resolve()
    meta = ocp.PyTreeCheckpointHandler().metadata(items)
    meta = getattr(meta, "tree", meta)
    wanted = {"params": meta["params"]}
    restore_args = _restore_args(wanted, ocp)
    state = ocp.PyTreeCheckpointer().restore(
        items, args=ocp.args.PyTreeRestore(item=wanted, restore_args=restore_args, partial_restore=True)
    )
    return state["params"]["params"]


def _restore_args(tree, ocp):
    if isinstance(tree, dict):
        return {k: _restore_args(v, ocp) for k, v in tree.items()}
    return ocp.RestoreArgs(restore_type=np.ndarray)


def cmd_export_hf(args: argparse.Namespace) -> None:
    from safetensors.numpy import save_file

    config = json.loads(Path(args.config).read_text())
    hf = maxtext_to_hf(restore_params(Path(args.items)), config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(hf, str(out / "model.safetensors"), metadata={"format": "pt"})


def cmd_logits(args: argparse.Namespace) -> None:
    import jax.numpy as jnp
    from maxtext.configs import pyconfig
    from maxtext.utils import model_creation_utils

    tokens = np.load(args.npz)["tokens"].astype(np.int32)
    config = pyconfig.initialize(
        [
            "logits",
            args.yml,
            *args.overrides,
            f"load_parameters_path={args.items}",
            "enable_checkpointing=false",
            "dataset_type=synthetic",
            f"per_device_batch_size={tokens.shape[0]}",
            f"max_target_length={tokens.shape[1]}",
        ]
    )
    model = model_creation_utils.from_pretrained(config)
    model = model[0] if isinstance(model, tuple) else model
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    logits = model(jnp.asarray(tokens), positions, jnp.ones_like(positions), enable_dropout=False)
    np.savez(args.out, logits=np.asarray(logits, dtype=np.float32))


def cmd_train(args: argparse.Namespace) -> None:
    """MaxText's trainer, with Megatron's per-dataset surplus as the blend margin: MaxText hard-codes
    0.5% and never passes its ``blend_margin`` on, so the same data gives another sample order
    unless it is set here (a private name: the e2e test of the TPU path checks that the first steps'
    losses are Megatron's, which they are only on the same batches)."""
    from maxtext.input_pipeline import grain_data_processing as gdp
    from maxtext.trainers.pre_train import train

    gdp.get_mmap_npy_dataset = functools.partial(gdp.get_mmap_npy_dataset, blend_margin=args.blend_margin)
    train.main(["train", args.yml, *args.overrides])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="maxtext_side", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("yml")
    t.add_argument("overrides", nargs="*")
    t.add_argument("--blend-margin", type=float, required=True, help="percent, per dataset")
    i = sub.add_parser("import-hf")
    i.add_argument("hf")
    i.add_argument("out")
    i.add_argument("--scan-layers", action="store_true")
    e = sub.add_parser("export-hf")
    e.add_argument("items")
    e.add_argument("out")
    e.add_argument("--config", required=True, help="the HF config.json the export is for")
    g = sub.add_parser("logits")
    g.add_argument("yml")
    g.add_argument("items")
    g.add_argument("npz")
    g.add_argument("out")
    g.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    if os.environ.get("JAX_PLATFORMS") is None:
        print("maxtext_side: JAX_PLATFORMS is unset (dasi sets it)", file=sys.stderr)
    {"train": cmd_train, "import-hf": cmd_import_hf, "export-hf": cmd_export_hf, "logits": cmd_logits}[
        args.cmd
    ](args)


if __name__ == "__main__":
    main()
