from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from adapt.config import AdaptConfig
from dasi.config import ConfigError, resolve_params
from dasi.sections import validate_tree
from tests.adapt.tiny import adapt_section
from tests.conftest import REPO


def section(**changes) -> dict:
    s = adapt_section(Path("base"))
    for key, value in changes.items():
        *path, last = key.split("__")
        d = s
        for p in path:
            d = d[p]
        d[last] = value
    return s


@pytest.mark.parametrize(("changes", "message"), [
    ({"phases": {"embed_head": {"steps": 1, "learning_rate": 1e-3}}}, "missing 'odd_layers'"),
    ({"train__batch_size": 6, "train__grad_accum": 4}, "not a multiple of grad_accum"),
    ({"train__lang_weights": {"en": 1.0}}, "give ko"),
    ({"base": {"path": "x", "hub_id": "y"}}, "exactly one of path"),
    ({"base": {"hub_id": "meta-llama/Llama-3.1-8B", "revision": "main"}}, "40-hex"),
    ({"phases__embed_head__train_embeddings": True}, "embed_head.train_embeddings: embed_head trains"),
    ({"parallel": {"gpus_per_node": 3}}, r"batch_size 4 is not a multiple of grad_accum x ranks \(1 x 3\)"),
    ({"fsdp": "full_shard hybrid_shard"}, "unknown FSDP option 'hybrid_shard'"),
    ({"fsdp_wrap_layer": "LlamaDecoderLayer"}, "a wrap layer needs adapt.fsdp"),
])
def test_bad_values_stop_with_the_key(changes: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AdaptConfig.model_validate(section(**changes))


def test_an_unpinned_hub_base_stops_the_stage_not_the_profile() -> None:
    cfg = AdaptConfig.model_validate(section(base={"hub_id": "meta-llama/Llama-3.1-8B", "revision": None}))
    with pytest.raises(ConfigError, match="adapt.base.revision"):
        cfg.base.source()
    pinned = cfg.base.model_copy(update={"revision": "0" * 40})
    assert pinned.source() == ("meta-llama/Llama-3.1-8B", "0" * 40)


@pytest.mark.parametrize("profile", ["tiny", "kormo-1b", "kormo-10.8b"])
def test_every_profile_has_a_valid_adapt_section(profile: str, tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"profile": profile}))
    cfg = validate_tree(resolve_params(params, REPO / "configs"))["adapt"]
    assert cfg.total_steps == sum(p.steps for p in cfg.phases.values())
