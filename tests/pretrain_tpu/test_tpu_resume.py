"""MaxText through dasi on real packed data: an interrupted run resumes to the same curve, a
finished one trains nothing. Needs the MaxText venv (bash scripts/setup.sh makes it)."""

from __future__ import annotations

import json
import shutil

import pytest

from pretrain.config import PretrainConfig
from pretrain_tpu import shared_init, train, venv
from pretrain_tpu.config import PretrainTpuConfig
from tests.pretrain_tpu.tiny import MODEL

pytestmark = pytest.mark.slow

PRE = PretrainConfig(train_steps=6, micro_batch_size=2, lr=3e-3, min_lr=3e-4, warmup_steps=2, save_interval=2)
CFG = PretrainTpuConfig()


@pytest.fixture(scope="module")
def init(tmp_path_factory, packed, tokenizer_dir):
    try:
        venv.python(CFG)
    except FileNotFoundError as e:
        pytest.fail(str(e))  # CI makes the venv: its absence is a failure, not a skip
    root = tmp_path_factory.mktemp("tpu-init")
    from tests.conftest import _quiet_log

    with _quiet_log(root, "tpu-init") as log:
        report = shared_init.run(
            MODEL, PRE, CFG, packed, tokenizer_dir, root / "init", root / "init.json", log
        )
    assert report["maxtext_import"]["max_abs_logit_diff"] < 1e-4
    return root / "init"


def test_interrupted_run_resumes_to_the_same_curve(tmp_path, packed, init, runlog):
    with runlog("tpu-pretrain") as log:
        whole = train.run(MODEL, PRE, CFG, packed, init, tmp_path / "a", log)["curve"]
    assert len(whole) == 6 and whole[-1]["loss"] < whole[0]["loss"]
    assert train.checkpoint_steps(tmp_path / "a") == [0, 2, 4, 5]
    # a run cut off after its step-2 checkpoint (0-based 2 = step 3): later checkpoints and rows gone
    for step in (4, 5):
        shutil.rmtree(tmp_path / "a" / "dasi" / "checkpoints" / str(step))
    rows = (tmp_path / "a" / train.METRICS_FILE).read_text().splitlines()
    (tmp_path / "a" / train.METRICS_FILE).write_text("\n".join(rows[:4]) + "\n")
    with runlog("tpu-pretrain") as log:
        resumed = train.run(MODEL, PRE, CFG, packed, init, tmp_path / "a", log)["curve"]
        events = [json.loads(line)["event"] for line in (log.dir / "events.jsonl").read_text().splitlines()]
    assert "resume" in events
    assert resumed == whole  # bit for bit: the same batches after the checkpoint, the same weights
    # finished: nothing is trained, the curve is the stored one
    with runlog("tpu-pretrain") as log:
        again = train.run(MODEL, PRE, CFG, packed, init, tmp_path / "a", log)["curve"]
        events = [json.loads(line)["event"] for line in (log.dir / "events.jsonl").read_text().splitlines()]
    assert again == whole and "reuse_finished" in events and "maxtext_call" not in events
