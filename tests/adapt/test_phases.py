from __future__ import annotations

from pathlib import Path

import pytest

from adapt.config import LoraConfig
from adapt.phases import apply_phase, layer_index, trainable_names
from tests.adapt.tiny import english_llama


def load(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder))


@pytest.fixture(scope="module")
def untied(tmp_path_factory) -> Path:
    return english_llama(tmp_path_factory.mktemp("untied") / "m", tied=False)


@pytest.fixture(scope="module")
def tied(tmp_path_factory) -> Path:
    return english_llama(tmp_path_factory.mktemp("tied") / "m", tied=True)


def layer_params(model, parity: int) -> set[str]:
    return {n for n, _ in model.named_parameters() if (i := layer_index(n)) is not None and i % 2 == parity}


def test_each_phase_trains_exactly_what_it_names(untied: Path) -> None:
    lora = LoraConfig()
    m = apply_phase(load(untied), "embed_head", lora)
    assert trainable_names(m) == {"model.embed_tokens.weight", "lm_head.weight"}

    m = load(untied)
    odd, even = layer_params(m, 1), layer_params(m, 0)
    assert trainable_names(apply_phase(m, "odd_layers", lora)) == odd
    assert {layer_index(n) for n in odd} == {1, 3} and len(odd) == 2 * 9  # 9 tensors per Llama layer
    assert trainable_names(apply_phase(load(untied), "even_layers", lora)) == even
    assert {layer_index(n) for n in even} == {0, 2}


def test_tied_embeddings_are_one_trainable_matrix(tied: Path) -> None:
    m = apply_phase(load(tied), "embed_head", LoraConfig())
    assert m.get_output_embeddings().weight is m.get_input_embeddings().weight
    assert trainable_names(m) == {"model.embed_tokens.weight"}


def test_lora_trains_only_its_adapters_on_the_named_projections(untied: Path) -> None:
    m = apply_phase(load(untied), "lora", LoraConfig(r=2, alpha=4, target_modules=["q_proj", "down_proj"]))
    names = trainable_names(m)
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    assert {n.split(".lora_")[0].rsplit(".", 1)[1] for n in names} == {"q_proj", "down_proj"}
    assert len(names) == 4 * 2 * 2  # 4 layers x 2 projections x (A, B)


def test_a_layer_phase_with_embeddings_adds_exactly_them(untied: Path, tied: Path) -> None:
    m = load(untied)
    odd = layer_params(m, 1)
    assert trainable_names(apply_phase(m, "odd_layers", LoraConfig(), train_embeddings=True)) == (
        odd | {"model.embed_tokens.weight", "lm_head.weight"})
    m = apply_phase(load(tied), "even_layers", LoraConfig(), train_embeddings=True)
    assert trainable_names(m) == layer_params(m, 0) | {"model.embed_tokens.weight"}


@pytest.mark.parametrize("tie", [False, True])
def test_lora_with_embeddings_trains_copies_the_head_follows(untied: Path, tied: Path, tie: bool) -> None:
    lora = LoraConfig(r=2, alpha=4, target_modules=["q_proj"])
    m = apply_phase(load(tied if tie else untied), "lora", lora, train_embeddings=True)
    names = trainable_names(m)
    copies = {n for n in names if ".lora_" not in n}
    assert len(names - copies) == 4 * 2  # 4 layers x (A, B) on q_proj
    expected = {"base_model.model.model.embed_tokens.modules_to_save.default.weight"}
    if not tie:
        expected.add("base_model.model.lm_head.modules_to_save.default.weight")
    assert copies == expected
    # the head computes with the trained copy when they are tied
    assert (m.get_output_embeddings().weight is m.get_input_embeddings().weight) == tie
