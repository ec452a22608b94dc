"""Stage ``release``: a release folder with a bilingual model card, the metrics, the ``dvc.lock``
that produced it, and sha256 checksums of every artifact (``SHA256SUMS``, ``sha256sum -c`` format).

The model folders inside the release are DVC outputs (remote storage), the rest is in git.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from dasi.atomic import atomic_path
from dasi.model_config import ModelConfig, parameter_count
from dasi.nested import flatten
from dasi.provenance import sha256_file
from dasi.stage import MissingInputs
from dasi.strict import StrictModel


class ReleaseConfig(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    license: str = "Apache-2.0"
    authors: str = "dasi contributors"


def read_metrics(files: list[Path]) -> dict[str, Any]:
    """Every metrics file; a missing one stops the release (a card without it would be wrong)."""
    missing = [str(f) for f in files if not Path(f).is_file()]
    if missing:
        raise MissingInputs(f"release: missing metrics {missing} (run the earlier stages first)")
    return {Path(f).stem: json.loads(Path(f).read_text()) for f in files}


def upstream_lock(lock_file: Path) -> str:
    """``dvc.lock`` without the release stage's own entry: that entry hashes this copy, so
    keeping it would make every release differ from the last one made from the same data."""
    lock = yaml.safe_load(Path(lock_file).read_text())
    stages = lock.get("stages", {})
    stages.pop("release", None)
    # By name: DVC appends a new stage's entry at the end, so the order tells a repository's
    # history, not what made the release.
    lock["stages"] = dict(sorted(stages.items()))
    return yaml.safe_dump(lock, sort_keys=False, allow_unicode=True)


def results_table(metrics: dict[str, Any]) -> str:
    rows = ["| metric | value |", "|---|---|"]
    for name in ("pretrain", "export", "sft", "eval"):
        for key, value in flatten(metrics.get(name, {})).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            shown = f"{value:.6g}" if isinstance(value, float) else f"{value}"
            rows.append(f"| {name}.{key} | {shown} |")
    return "\n".join(rows)


def data_lines(metrics: dict[str, Any]) -> list[str]:
    curate = metrics.get("curate", {})
    lines = []
    for source, kept in curate.get("kept_by_source", {}).items():
        lines.append(f"- `{source}`: {kept['documents']} documents, {kept['bytes']:,} bytes")
    cpt = metrics.get("tokenizer", {}).get("chars_per_token", {})
    if cpt:
        lines.append("- tokenizer characters/token (held-out): " + ", ".join(
            f"{name} " + "/".join(f"{lang} {v}" for lang, v in row.items()) for name, row in cpt.items()))
    return lines


def model_card(cfg: ReleaseConfig, model: ModelConfig, profile: str, metrics: dict[str, Any]) -> str:
    n = parameter_count(model)
    shape = (f"{model.num_layers} layers, hidden {model.hidden_size}, {model.num_attention_heads} heads "
             f"/ {model.num_query_groups} KV heads, FFN {model.ffn_hidden_size} (SwiGLU), vocab "
             f"{model.vocab_size}, RMSNorm, RoPE θ={model.rotary_base:g}, untied embeddings")
    ko_failed = metrics.get("curate", {}).get("synthetic_ko_failed", "?")
    data = "\n".join(data_lines(metrics)) or "- (no curation metrics found)"
    return f"""---
license: {cfg.license}
language: [ko, en]
tags: [dasi, megatron-core, synthetic-data]
---
# {cfg.name}

## English
**What it is.** A LLaMA-style decoder ({n:,} parameters; {shape}) pretrained from scratch with
Megatron-core on Korean, English and code, then instruction-tuned on bilingual chats, by the
dasi pipeline (profile `{profile}`). `models/base` is the pretrained model, `models/sft` the
instruction-tuned one; both are Hugging Face `LlamaForCausalLM` folders.

**Data.** Natural Korean text (konlpy corpora), English prose, Python source and teacher-written
synthetic documents, filtered (language ID, quality, spam), PII-scrubbed, deduplicated (exact and
MinHash) and decontaminated against the evaluation items (see `results.json` → `curate`; the
epochs each source is repeated: `mix`). Kept per source:
{data}

Korean requests the teacher failed (dropped by curation): {ko_failed}.

**Training.** See `results.json` → `pretrain` and `sft`; the exact configs, environment and
curves are in the run logs named by `dvc.lock`.

**Results.**

{results_table(metrics)}

**Limitations.** This release is as small as its profile: the `tiny` profile trains a model
of well under a million parameters on a few hundred kilobytes for a CPU smoke test. It produces
no useful text, and its benchmark scores are at chance. Only the process is meant to be reused.

**Reproduce.** `git checkout` the commit of this release, then `dvc repro` (same profile);
`sha256sum -c SHA256SUMS` checks the files.

## 한국어
**개요.** dasi 파이프라인(프로필 `{profile}`)으로 Megatron-core에서 처음부터 사전학습한 LLaMA 구조
디코더 모델({n:,}개 매개변수)과, 이를 한국어·영어 대화 데이터로 지시 학습한 모델입니다.
`models/base`는 사전학습 모델, `models/sft`는 지시 학습 모델이며 둘 다 Hugging Face
`LlamaForCausalLM` 형식입니다.

**데이터.** konlpy 말뭉치의 한국어 자연 텍스트, 영어 문서, 파이썬 소스 코드, 교사 모델이 생성한
합성 문서를 필터링(언어 판별, 품질, 스팸)하고 개인정보를 가린 뒤 중복(완전 일치와 MinHash)과 평가
문항 오염을 제거해 사용했습니다(`results.json`의 `curate`, 출처별 반복 횟수는 `mix` 참고). 교사 모델이
한국어로 제대로 쓰지 못해 걸러진 요청 수: {ko_failed}.

**학습.** `results.json`의 `pretrain`, `sft` 항목과 `dvc.lock`이 가리키는 실행 로그에 설정,
환경, 학습 곡선이 모두 기록되어 있습니다.

**결과.** 위 영어 절의 표와 같습니다.

**한계.** `tiny` 프로필의 모델은 CPU 검증용으로 매우 작아 쓸모 있는 문장을 만들지 못하며, 벤치마크
점수는 무작위 수준입니다. 재사용할 대상은 모델이 아니라 과정입니다.

**재현.** 이 릴리스의 커밋을 체크아웃한 뒤 같은 프로필로 `dvc repro`를 실행하세요.
`sha256sum -c SHA256SUMS`로 파일을 검증할 수 있습니다.
"""


def write_checksums(release_dir: Path) -> Path:
    files = sorted(p for p in release_dir.rglob("*") if p.is_file() and p.name != "SHA256SUMS")
    lines = [f"{sha256_file(p)}  {p.relative_to(release_dir).as_posix()}" for p in files]
    out = release_dir / "SHA256SUMS"
    out.write_text("\n".join(lines) + "\n")
    return out


def run(cfg: ReleaseConfig, model: ModelConfig, profile: str, models: dict[str, Path],
        metric_files: list[Path], lock_file: Path, out_dir: Path, log: Any) -> dict[str, Any]:
    metrics = read_metrics(metric_files)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, src in models.items():
        with atomic_path(out_dir / "models" / name) as tmp:
            shutil.copytree(src, tmp)
    (out_dir / "results.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    (out_dir / "dvc.lock").write_text(upstream_lock(lock_file))
    (out_dir / "README.md").write_text(model_card(cfg, model, profile, metrics), encoding="utf-8")
    sums = write_checksums(out_dir)
    summary = {"release": cfg.name, "files": len(sums.read_text().splitlines()),
               "parameters": parameter_count(model)}
    log.summary(summary)
    return summary
