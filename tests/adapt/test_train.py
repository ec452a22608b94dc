from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from adapt.phases import layer_index
from adapt.stream import CURSOR_FILE, range_summary
from adapt.train import BASELINE, _usable_cursor, block_range, train_arm
from dasi.resume import FingerprintMismatch
from dasi.runlog import LoggingConfig, RunLog, read_jsonl
from tests.adapt.tiny import adapt_config, curated_dir, english_llama


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("adapt-train")
    return english_llama(root / "base"), curated_dir(root / "curated")


def run(cfg, arm: str, base: Path, curated: Path, root: Path, tag: str) -> tuple[Path, dict, Path]:
    out = root / f"{tag}-{arm}"
    with RunLog(f"adapt-{arm}", cfg.model_dump(mode="json"),
                logging=LoggingConfig(logs_dir=str(root / "logs" / tag), wandb=False,
                                      tensorboard=False)) as log:
        metrics = train_arm(cfg, arm, base, curated, out, root / f"{tag}-work-{arm}", log)
    return out, metrics, log.dir


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    assert before.keys() == after.keys()
    return {k for k in before if not torch.equal(before[k], after[k])}


def killed_at_third_step(cfg, arm: str, base: Path, curated: Path, root: Path, monkeypatch) -> None:
    """Run ``arm`` as tag "killed" and interrupt it in its third training step (as a kill would)."""
    from transformers import Trainer

    real_step, calls = Trainer.training_step, {"n": 0}

    def dies_at_third(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real_step(self, *a, **kw)

    monkeypatch.setattr(Trainer, "training_step", dies_at_third)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, arm, base, curated, root, "killed")
    monkeypatch.setattr(Trainer, "training_step", real_step)


def test_phases_in_sequence_change_only_what_they_train(inputs, tmp_path: Path) -> None:
    base, curated = inputs
    cfg = adapt_config(base)
    prev, start = base, 0
    expect = {
        "embed_head": lambda k: k in {"model.embed_tokens.weight", "lm_head.weight"},
        "odd_layers": lambda k: layer_index(k) is not None and layer_index(k) % 2 == 1,
        "even_layers": lambda k: layer_index(k) is not None and layer_index(k) % 2 == 0,
        "lora": lambda k: k.endswith(("q_proj.weight", "v_proj.weight")),  # merged adapters
    }
    for phase, trains in expect.items():
        out, metrics, logdir = run(cfg, phase, prev, curated, tmp_path, "seq")
        before, after = weights(prev), weights(out)
        assert changed(before, after) == {k for k in before if trains(k)}, phase
        assert metrics["start_block"] == start and metrics["blocks"] == 2 * 4
        assert not list((tmp_path / f"seq-work-{phase}").glob("checkpoint-*"))  # removed once saved
        assert json.loads((out / "dasi_adapt.json").read_text())["phase"] == phase
        # each phase reads on from where the previous one's stream stopped, the blocks a read from
        # block 0 gives
        started = [e for e in read_jsonl(logdir / "events.jsonl") if e["event"] == "stream_start"][0]
        assert started["source"] == (str(prev / CURSOR_FILE) if start else "block 0")
        tok = AutoTokenizer.from_pretrained(str(out))
        fresh = range_summary(curated, tok, 32, cfg.train.lang_weights, start, 8)
        assert metrics["blocks_sha256"] == fresh["blocks_sha256"]
        assert json.loads((out / CURSOR_FILE).read_text()) == fresh["cursor"]
        setup = [e for e in read_jsonl(logdir / "events.jsonl") if e["event"] == "phase_setup"][0]
        assert setup["trainable_params"] < setup["total_params"]
        assert [r["step"] for r in read_jsonl(logdir / "metrics.jsonl") if "train/loss" in r] == [1, 2]
        prev, start = out, start + 8
    assert not any(k.startswith("base_model") or "lora" in k for k in weights(prev))  # plain HF weights


def test_lora_phase_is_deterministic(inputs, tmp_path: Path) -> None:
    """peft draws its matrices when the model is wrapped: seeded, two runs give the same weights."""
    base, curated = inputs
    cfg = adapt_config(base)
    first, _, _ = run(cfg, "lora", base, curated, tmp_path, "a")
    torch.manual_seed(12345)  # whatever the global generator holds before the phase starts
    second, _, _ = run(cfg, "lora", base, curated, tmp_path, "b")
    assert changed(weights(first), weights(second)) == set()


def test_baseline_trains_every_weight_on_as_many_tokens(inputs, tmp_path: Path) -> None:
    base, curated = inputs
    cfg = adapt_config(base)
    assert block_range(cfg, BASELINE) == (0, 8 * 4, 8)
    phase_tokens = sum(block_range(cfg, p)[1] for p in cfg.phases)
    assert block_range(cfg, BASELINE)[1] == phase_tokens


def test_an_interrupted_phase_resumes_to_the_same_weights(inputs, tmp_path: Path, monkeypatch) -> None:
    base, curated = inputs
    cfg = adapt_config(base, {"embed_head": {"steps": 4}})  # checkpoints at 2 and 4
    straight, _, _ = run(cfg, "embed_head", base, curated, tmp_path, "straight")

    killed_at_third_step(cfg, "embed_head", base, curated, tmp_path, monkeypatch)
    work = tmp_path / "killed-work-embed_head"
    assert [p.name for p in work.glob("checkpoint-*")] == ["checkpoint-2"]

    # other settings with a checkpoint present: stop, delete nothing
    other = adapt_config(base, {"embed_head": {"steps": 4, "learning_rate": 0.5}})
    with pytest.raises(FingerprintMismatch, match="changed: settings"):
        run(other, "embed_head", base, curated, tmp_path, "killed")
    assert (work / "checkpoint-2").is_dir()

    out, metrics, logdir = run(cfg, "embed_head", base, curated, tmp_path, "killed")
    resumed = [e for e in read_jsonl(logdir / "events.jsonl") if e["event"] == "resume"]
    assert resumed and resumed[0]["step"] == 2
    assert [r["step"] for r in read_jsonl(logdir / "metrics.jsonl") if "train/loss" in r] == [3, 4]
    assert changed(weights(straight), weights(out)) == set()  # bit-identical to the uninterrupted run
    assert metrics["steps"] == 4


def test_phases_with_embeddings_also_change_them(inputs, tmp_path: Path) -> None:
    base, curated = inputs
    cfg = adapt_config(base, {"odd_layers": {"train_embeddings": True}, "lora": {"train_embeddings": True}})
    embeddings = {"model.embed_tokens.weight", "lm_head.weight"}
    out, _, logdir = run(cfg, "odd_layers", base, curated, tmp_path, "emb")
    odd = {k for k in weights(base) if layer_index(k) is not None and layer_index(k) % 2 == 1}
    assert changed(weights(base), weights(out)) == odd | embeddings
    setup = [e for e in read_jsonl(logdir / "events.jsonl") if e["event"] == "phase_setup"][0]
    assert setup["train_embeddings"] is True
    merged, _, _ = run(cfg, "lora", out, curated, tmp_path, "emb")
    lora = {k for k in weights(out) if k.endswith(("q_proj.weight", "v_proj.weight"))}
    assert changed(weights(out), weights(merged)) == lora | embeddings
    assert not any("lora" in k or "modules_to_save" in k for k in weights(merged))  # plain HF weights


def test_lora_with_tied_embeddings_resumes_to_the_same_weights(tmp_path: Path, monkeypatch) -> None:
    """The trained embedding copy lives in peft's checkpoint: a resume must not lose it."""
    from transformers import AutoModelForCausalLM

    base, curated = english_llama(tmp_path / "tied", tied=True), curated_dir(tmp_path / "curated")
    cfg = adapt_config(base, {"lora": {"steps": 4, "train_embeddings": True}})  # checkpoints at 2 and 4
    straight, _, _ = run(cfg, "lora", base, curated, tmp_path, "straight")
    assert "model.embed_tokens.weight" in changed(weights(base), weights(straight))
    model = AutoModelForCausalLM.from_pretrained(str(straight))
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # still tied

    killed_at_third_step(cfg, "lora", base, curated, tmp_path, monkeypatch)
    out, _, logdir = run(cfg, "lora", base, curated, tmp_path, "killed")
    assert [e["step"] for e in read_jsonl(logdir / "events.jsonl") if e["event"] == "resume"] == [2]
    assert changed(weights(straight), weights(out)) == set()


class Events:
    def __init__(self) -> None:
        self.seen: list[dict] = []

    def event(self, name: str, **data) -> None:
        self.seen.append({"event": name, **data})


def test_a_cursor_that_does_not_fit_is_said_and_the_stream_read_from_block_0(inputs, tmp_path: Path) -> None:
    base, curated = inputs
    cfg = adapt_config(base)
    out, _, _ = run(cfg, "embed_head", base, curated, tmp_path, "c")  # its cursor stands at block 8
    tok = AutoTokenizer.from_pretrained(str(out))
    args = (curated, tok, 32, cfg.train.lang_weights)
    log = Events()
    assert _usable_cursor(out, 8, args, log) is not None
    assert _usable_cursor(out, 12, args, log) is None
    assert _usable_cursor(out, 8, (curated, tok, 16, cfg.train.lang_weights), log) is None
    assert _usable_cursor(base, 0, args, log) is None
    reasons = [e.get("reason", "") for e in log.seen]
    assert [e["source"] for e in log.seen] == [str(out / CURSOR_FILE), "block 0", "block 0", "block 0"]
    assert reasons[1].endswith("unused: it stands at block 8, not 12")
    assert reasons[2].endswith("unused: it was made from other data, tokenizer or settings")
    assert reasons[3] == f"no {CURSOR_FILE} in {base}"
