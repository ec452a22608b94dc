"""Parallel layouts on CPU (gloo): every layout starts from the same initial weights
(``pretrain.init_from``) and must give the one-process losses."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dasi.model_config import ModelConfig
from pretrain import checkpoint as ckpt
from pretrain.stage import run
from pretrain.worker import RecordLog
from tests.pretrain.conftest import ROOT, small_cfg


@pytest.fixture(scope="module")
def four_layers() -> ModelConfig:
    """The tiny shape with 4 layers: 2 pipeline stages x 2 virtual chunks of one layer each."""
    tiny = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())["model"]
    return ModelConfig.model_validate({**tiny, "num_layers": 4})


@pytest.fixture(scope="module")
def init_weights(four_layers, tmp_path_factory) -> Path:
    """A weights-only checkpoint of a one-process build: the start of every layout."""
    from pretrain.model import build_gpt, distributed

    root = tmp_path_factory.mktemp("init")
    with distributed(1):
        ckpt.save(root, 0, [build_gpt(four_layers)], None, None, {"weights_only": True}, None)
    return root


def _cfg(init: Path, parallel: dict | None = None, **kw):
    base = dict(train_steps=2, warmup_steps=1, save_interval=2, eval_interval=2, eval_iters=2,
                init_from=str(init))
    return small_cfg(**{**base, **kw}, parallel=parallel or {})


@pytest.fixture(scope="module")
def reference(four_layers, packed, init_weights, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("one")
    return {masking: run(four_layers, _cfg(init_weights, document_masking=masking), packed,
                         out / f"ck{masking}", RecordLog(out / f"{masking}.jsonl"))
            for masking in (False, True)}


LAYOUTS = {
    "pp2": {"pipeline_parallel": 2},
    "pp2-interleaved": {"pipeline_parallel": 2, "virtual_pipeline_parallel": 2},
    "tp2-pp2": {"tensor_parallel": 2, "pipeline_parallel": 2},
    "cp2": {"context_parallel": 2},
    "tp2-sequence-parallel": {"tensor_parallel": 2, "sequence_parallel": True},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_layout_gives_the_one_process_losses(four_layers, packed, init_weights, reference, tmp_path, name):
    cfg = _cfg(init_weights, LAYOUTS[name])
    got = run(four_layers, cfg, packed, tmp_path / "ck", RecordLog(tmp_path / "r.jsonl"))
    ref = reference[False]
    assert got["world_size"] == cfg.parallel.world_size > 1
    assert got["first_train_loss"] == pytest.approx(ref["first_train_loss"], abs=1e-6)
    assert got["final_train_loss"] == pytest.approx(ref["final_train_loss"], abs=1e-5)
    assert got["final_valid_loss"] == pytest.approx(ref["final_valid_loss"], abs=1e-5)
    # its checkpoint holds the same model: it loads into the one-process layout
    assert ckpt.latest_step(tmp_path / "ck") == 2


@pytest.mark.slow
def test_context_parallel_with_document_masking(four_layers, packed, init_weights, reference, tmp_path):
    cfg = _cfg(init_weights, {"context_parallel": 2}, document_masking=True)
    got = run(four_layers, cfg, packed, tmp_path / "ck", RecordLog(tmp_path / "r.jsonl"))
    ref = reference[True]
    assert ref["first_train_loss"] != pytest.approx(reference[False]["first_train_loss"], abs=1e-4)
    assert got["first_train_loss"] == pytest.approx(ref["first_train_loss"], abs=1e-6)
    assert got["final_valid_loss"] == pytest.approx(ref["final_valid_loss"], abs=1e-5)


@pytest.mark.slow
def test_overlapped_grad_reduce_gives_the_same_step(four_layers, packed, init_weights, tmp_path):
    two = [run(four_layers, _cfg(init_weights, {"data_parallel": 2}, overlap_grad_reduce=overlap), packed,
               tmp_path / f"ck{overlap}", RecordLog(tmp_path / f"{overlap}.jsonl"))
           for overlap in (False, True)]
    assert two[0]["final_train_loss"] == pytest.approx(two[1]["final_train_loss"], abs=1e-6)


@pytest.mark.parametrize("recompute", ["selective", "full"])
def test_recompute_is_configured_and_changes_no_loss(four_layers, packed, init_weights, reference, tmp_path,
                                                      recompute):
    from pretrain.model import distributed, transformer_config

    cfg = _cfg(init_weights, recompute=recompute)
    with distributed(1):
        config = transformer_config(four_layers, train=cfg)
    assert config.recompute_granularity == recompute
    got = run(four_layers, cfg, packed, tmp_path / "ck", RecordLog(tmp_path / "r.jsonl"))
    assert got["final_train_loss"] == pytest.approx(reference[False]["final_train_loss"], abs=1e-6)


def test_layouts_megatron_cannot_run_stop_at_the_config(init_weights):
    with pytest.raises(ValueError, match="sequence_parallel needs tensor_parallel > 1"):
        _cfg(init_weights, {"sequence_parallel": True})
    with pytest.raises(ValueError, match="virtual_pipeline_parallel needs pipeline_parallel > 1"):
        _cfg(init_weights, {"virtual_pipeline_parallel": 2})
    with pytest.raises(ValueError, match="eval_iters \\(3\\) divisible by pipeline_parallel 2"):
        _cfg(init_weights, {"pipeline_parallel": 2, "virtual_pipeline_parallel": 2}, eval_iters=3)
