from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dasi.runlog import LoggingConfig, RunLog, read_jsonl
from instruct.chats import SEED_FILE, read_chats, split_heldout, write_chats
from instruct.config import SFTConfig
from instruct.sft import build_trainer, heldout_loss, model_device
from instruct.stage import run

TINY = SFTConfig(epochs=4, batch_size=8, learning_rate=3e-3, max_length=160)


def _log(tmp_path: Path, cfg: SFTConfig) -> RunLog:
    return RunLog("sft", cfg, logging=LoggingConfig(logs_dir=str(tmp_path / "logs"), wandb=False,
                                                    tensorboard=False))


def test_labels_are_masked_exactly_on_non_assistant_tokens(tiny_model: Path, tmp_path: Path) -> None:
    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    chats = read_chats(SEED_FILE)
    train, held = split_heldout(chats, 0.2)
    trainer = build_trainer(TINY, model, tok, train, held, tmp_path / "w")
    by_id = {c.id: c for c in chats}
    examples = list(trainer.train_dataset)
    assert len(examples) == len(train)
    batch = trainer.data_collator([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples])
    end = tok.convert_tokens_to_ids("<|end|>")
    for row, ex in enumerate(examples):
        chat = by_id[ex["id"]]
        ref = tok.apply_chat_template(chat.as_messages(), tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)
        assert len(ref["input_ids"]) <= TINY.max_length  # no chat is truncated at this length
        n = len(ref["input_ids"])
        assert batch["input_ids"][row, :n].tolist() == ref["input_ids"]
        expected = [t if m else -100 for t, m in zip(ref["input_ids"], ref["assistant_masks"], strict=True)]
        labels = batch["labels"][row].tolist()
        assert labels[:n] == expected
        assert all(x == -100 for x in labels[n:])  # padding
        kept = [t for t in labels if t != -100]
        answer = [m.content for m in chat.messages if m.role == "assistant"][-1]
        assert tok.decode(kept) == answer + "<|end|>"
        assert kept[-1] == end


def test_sft_run_lowers_heldout_loss_saves_a_loadable_model_and_is_deterministic(
        tiny_model: Path, tmp_path: Path) -> None:
    outs = []
    for i in range(2):
        out, metrics_path = tmp_path / f"sft{i}", tmp_path / f"metrics{i}.json"
        with _log(tmp_path / str(i), TINY) as log:
            metrics = run(TINY, tiny_model, None, [], out, metrics_path, log)
        outs.append((out, metrics, log.dir))
    (out, metrics, logdir), (out2, metrics2, _) = outs

    assert json.loads((tmp_path / "metrics0.json").read_text()) == metrics
    assert metrics["heldout_loss_after"] < metrics["heldout_loss_before"] - 0.3
    assert metrics["heldout_loss_after_ko"] < metrics["heldout_loss_before_ko"]
    assert metrics["heldout_loss_after_en"] < metrics["heldout_loss_before_en"]
    assert metrics["train_chats"] == 32 and metrics["heldout_chats"] == 8
    assert metrics["steps"] == 16  # 32 chats / batch 8 * 4 epochs

    # deterministic: same weights, same losses
    def digests(folder: Path) -> dict[str, str]:
        return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())}

    assert digests(out) == digests(out2)  # every file of the model folder is byte-identical
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "chat_template.jinja", "dasi_sft.json"} == set(digests(out))
    # HF_HUB_OFFLINE=1 in the tests: how the tokenizer was loaded is not saved with it
    assert "local_files_only" not in json.loads((out / "tokenizer_config.json").read_text())
    assert metrics == metrics2  # no timings in the metrics file: it is hashed into dvc.lock

    # the run log mirrors trainer logs and the held-out losses
    records = read_jsonl(logdir / "metrics.jsonl")
    assert any("train/loss" in r for r in records)
    held = [r for r in records if "heldout_loss/all" in r]
    assert [r["heldout_loss/all"] for r in held] == [metrics["heldout_loss_before"],
                                                     metrics["heldout_loss_after"]]
    assert not list(tmp_path.glob(".sft0.trainer-*"))  # trainer scratch removed
    events = {e["event"]: e for e in read_jsonl(logdir / "events.jsonl")}
    assert (events["trainer_setup"]["world_size"], events["trainer_setup"]["engine"],
            events["trainer_setup"]["global_batch"]) == (1, "single", 8)
    assert "launch" not in events and "fsdp_not_applied" not in events  # in-process, as configured

    # the folder is a complete HF model: weights, tokenizer, chat template, generation config
    assert (out / "model.safetensors").exists() and (out / "generation_config.json").exists()
    tok = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.config.use_cache
    end = tok.convert_tokens_to_ids("<|end|>")
    assert end in model.generation_config.eos_token_id
    assert "{% generation %}" in tok.chat_template
    prompt = tok.apply_chat_template([{"role": "user", "content": "한국의 수도는 어디인가요?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    gen = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert gen.shape[1] > prompt["input_ids"].shape[1]

    # the reloaded model reproduces the reported held-out loss
    trainer = build_trainer(TINY, model, tok, *split_heldout(read_chats(SEED_FILE), 0.2), tmp_path / "w")
    again = heldout_loss(model, list(trainer.eval_dataset), trainer.data_collator, 8)
    assert again["all"] == pytest.approx(metrics["heldout_loss_after"], rel=1e-5)


def test_extra_chats_and_separate_tokenizer(tiny_model: Path, tmp_path: Path) -> None:
    # an export-like folder: weights only, tokenizer given separately
    bare = tmp_path / "bare"
    AutoModelForCausalLM.from_pretrained(str(tiny_model)).save_pretrained(str(bare))
    extra = tmp_path / "extra.parquet"
    chats = read_chats(SEED_FILE)
    write_chats(extra, [c.model_copy(update={"id": "extra-" + c.id}) for c in chats[:4]])
    cfg = SFTConfig(use_seed_chats=False, max_steps=2, batch_size=2, heldout_fraction=0.25)
    with _log(tmp_path, cfg) as log:
        m = run(cfg, bare, tiny_model, [extra], tmp_path / "out", tmp_path / "m.json", log)
    assert m["train_chats"] == 3 and m["heldout_chats"] == 1 and m["steps"] == 2
    with pytest.raises(ValueError, match="repeat"):
        with _log(tmp_path, cfg) as log:
            run(SFTConfig(), bare, tiny_model, [SEED_FILE], tmp_path / "o2", tmp_path / "m2.json", log)
    assert not (tmp_path / "o2").exists()


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError):
        SFTConfig.model_validate({"epochs": 1, "lr": 0.1})
    assert torch.get_num_threads() >= 1


class _Stop(Exception):
    pass


def test_heldout_loss_feeds_the_model_on_its_own_device(tiny_model: Path, tmp_path: Path) -> None:
    """The Trainer moves the model (to the GPU, or FSDP's shards) after we load it on the CPU; the
    collator builds CPU tensors. A CPU host has no second real device, so the model here lives on
    ``meta``: a guard on its forward records where the inputs arrive and stops there (meta
    tensors hold no values). What this shows: inputs follow ``next(model.parameters()).device``;
    what it cannot: a CUDA run (the GPU check of the cluster profiles)."""
    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    cpu_model = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    trainer = build_trainer(TINY, cpu_model, tok, *split_heldout(read_chats(SEED_FILE), 0.2), tmp_path / "w")
    examples = list(trainer.eval_dataset)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cpu_model.config)
    assert model_device(model) == torch.device("meta")
    seen: list[set[str]] = []

    def guard(module, args, kwargs):  # noqa: ANN001
        seen.append({str(v.device) for v in kwargs.values() if isinstance(v, torch.Tensor)})
        raise _Stop

    model.register_forward_pre_hook(guard, with_kwargs=True)
    model.train()
    with pytest.raises(_Stop):
        heldout_loss(model, examples, trainer.data_collator, 8)
    assert seen == [{"meta"}]  # input_ids and attention_mask, both moved to the model's device
    # on the CPU the same function gives real figures (the after-training check in the test above)
    cpu = heldout_loss(cpu_model.train(), examples, trainer.data_collator, 3)
    assert set(cpu) == {"all", "en", "ko"} and all(v > 0 for v in cpu.values())
    assert cpu_model.training  # the Trainer's mode is left as it was
    assert cpu == pytest.approx(heldout_loss(cpu_model, examples, trainer.data_collator, 8), rel=1e-6)
