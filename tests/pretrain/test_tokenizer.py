import json

import pytest

from pretrain.tokenizer import ROLE_TOKENS, TokenizerConfig, run


@pytest.fixture(scope="module")
def trained(tmp_path_factory, curated_file):
    from dasi.runlog import LoggingConfig, RunLog

    root = tmp_path_factory.mktemp("tok")
    cfg = TokenizerConfig(vocab_size=600, sample_chars={"ko": 8000, "en": 8000, "code": 8000},
                          references=["cl100k_base", "qwen3"])
    logging = LoggingConfig(logs_dir=str(root / "logs"), wandb=False, tensorboard=False)
    with RunLog("tokenizer", cfg, logging=logging) as log:
        report = run(cfg, curated_file, root / "tokenizer", root / "eff.json", log)
    return root, report


def test_tokenizer_folder_loads_with_specials_and_chat_template(trained):
    from transformers import AutoTokenizer

    root, report = trained
    tok = AutoTokenizer.from_pretrained(root / "tokenizer")
    assert len(tok) == report["vocab_size"] <= 600
    assert tok.bos_token == "<|begin_of_text|>" and tok.eos_token == "<|end_of_text|>"
    assert tok.pad_token == "<|pad|>"
    for t in ROLE_TOKENS:
        assert len(tok(t, add_special_tokens=False)["input_ids"]) == 1
    text = "대한민국은 민주공화국이다. def f(x): return x"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text  # byte-level: lossless
    chat = [{"role": "user", "content": "안녕?"}, {"role": "assistant", "content": "안녕하세요!"}]
    out = tok.apply_chat_template(chat, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    mask = out["assistant_masks"]
    assistant = tok.decode([i for i, m in zip(out["input_ids"], mask, strict=True) if m])
    assert assistant == "안녕하세요!<|end|>"


def test_efficiency_report_compares_with_references(trained):
    root, report = trained
    assert json.loads((root / "eff.json").read_text()) == report
    cpt = report["chars_per_token"]
    assert set(cpt) == {"dasi", "cl100k_base", "qwen3"}
    assert set(cpt["dasi"]) == {"ko", "en", "code"}
    # Trained on Korean, even a 600-token vocabulary beats cl100k's bytes on Korean.
    assert cpt["dasi"]["ko"] > cpt["cl100k_base"]["ko"] > 0.5
