"""Stage ``tokenizer``: train a byte-level BPE on a language-balanced sample of curated text,
save it as a transformers tokenizer folder with a chat template, and measure its efficiency
(characters per token per language on held-out text) beside reference tokenizers.

The samples are bounded and seeded (:class:`dasi.reservoir.CharReservoir`): one streaming pass over
the curated shards keeps at most the configured characters per language, whatever the corpus size."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveInt
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from dasi.atomic import atomic_path, write_json
from dasi.reservoir import CharReservoir
from dasi.strict import StrictModel

Lang = Literal["ko", "en", "code"]

BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
SPECIAL_TOKENS = [BOS, EOS, PAD, *ROLE_TOKENS]

# Assistant turns are wrapped in {% generation %} so that transformers can return the
# assistant-token mask SFT trains on.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


class TokenizerConfig(StrictModel):
    vocab_size: int = Field(ge=300, le=1_000_000)
    min_frequency: PositiveInt = 2
    sample_chars: dict[Lang, PositiveInt] = Field(description="training characters per language")
    heldout_chars: PositiveInt = Field(2_000_000, description="held-out characters per language for "
                                       "the efficiency table")
    seed: int = Field(0, description="which documents the bounded samples take")
    references: list[str] = ["cl100k_base", "o200k_base", "llama3", "qwen3"]


Sample = dict[str, list[str]]  # texts per language


def sample_curated(curated_dir: Path, cfg: TokenizerConfig) -> tuple[Sample, Sample]:
    """(training sample, held-out sample) per language, streamed from the curated shards: the
    train split up to ``sample_chars``, the held-out split up to ``heldout_chars``."""
    from data_gen.curated import iter_batches, read_manifest

    train = {lang: CharReservoir(n, cfg.seed) for lang, n in cfg.sample_chars.items()}
    heldout = {lang: CharReservoir(cfg.heldout_chars, cfg.seed) for lang in cfg.sample_chars}
    pools = {"train": train, "heldout": heldout}
    # Every shard is checked (as strongly as curate recorded it) before the first batch.
    verify = read_manifest(curated_dir)["verify"]
    for batch in iter_batches(curated_dir, ["doc_id", "lang", "split", "text"], verify=verify):
        cols = batch.select(["doc_id", "lang", "split"]).to_pydict()
        texts = batch.column("text")
        rows = zip(cols["doc_id"], cols["lang"], cols["split"], strict=True)
        for i, (doc_id, lang, split) in enumerate(rows):
            pool = pools.get(split, {}).get(lang)
            if pool is None:
                continue
            key = pool.key(doc_id)
            if pool.wants(key):
                pool.add(key, texts[i].as_py())
    empty = sorted(lang for lang, r in train.items() if not r.chars)
    if empty:
        raise ValueError(f"tokenizer.sample_chars: no curated training text in languages {empty}")
    return ({lang: r.texts() for lang, r in train.items()},
            {lang: r.texts() for lang, r in heldout.items() if r.chars})


def train_bpe(texts: list[str], cfg: TokenizerConfig) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()  # Korean typed as decomposed jamo becomes syllables
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return tok


def save_hf_tokenizer(tok: Tokenizer, out_dir: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=ROLE_TOKENS,
        clean_up_tokenization_spaces=False,
        model_max_length=1_000_000,
    )
    hf.chat_template = CHAT_TEMPLATE
    with atomic_path(out_dir) as tmp:
        hf.save_pretrained(tmp)


def reference_encoders(names: list[str]) -> dict[str, object]:
    import quicktok

    return {name: quicktok.get_encoding(name) for name in names}


def efficiency(heldout: dict[str, list[str]], ours: Tokenizer, references: list[str]) -> dict:
    """Characters and UTF-8 bytes per token, per language, for ours and each reference."""
    encoders = {"dasi": lambda t: ours.encode(t, add_special_tokens=False).ids}
    encoders |= {n: e.encode for n, e in reference_encoders(references).items()}
    chars = {lang: sum(len(t) for t in texts) for lang, texts in heldout.items()}
    table = {}
    for name, encode in encoders.items():
        row = {}
        for lang, texts in heldout.items():
            n_tok = sum(len(encode(t)) for t in texts)
            row[lang] = round(chars[lang] / max(n_tok, 1), 4)
        table[name] = row
    return {"heldout_chars": chars, "chars_per_token": table}


def run(cfg: TokenizerConfig, curated_dir: Path, out_dir: Path, metrics_file: Path, log) -> dict:
    sample, heldout = sample_curated(curated_dir, cfg)
    texts = [t for lang in sorted(sample) for t in sample[lang]]
    tok = train_bpe(texts, cfg)
    save_hf_tokenizer(tok, out_dir)
    report = {
        "format": "tokenizer-efficiency/1",
        "vocab_size": tok.get_vocab_size(),
        "vocab_size_requested": cfg.vocab_size,
        "training_chars": {lang: sum(len(t) for t in ts) for lang, ts in sample.items()},
        **efficiency(heldout, tok, cfg.references),
    }
    write_json(metrics_file, report)
    log.summary({"vocab_size": report["vocab_size"],
                 **{f"chars_per_token_{k}": v for k, v in report["chars_per_token"]["dasi"].items()}})
    return report
