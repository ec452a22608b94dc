"""``curate`` section: thresholds per filter, per language where the language matters."""

from __future__ import annotations

from pydantic import Field, PositiveInt

from dasi.integrity import VerifyMode
from dasi.strict import StrictModel
from data_gen.generate import GenerateSlurmConfig
from data_gen.langid import LidConfig
from data_gen.spam import SpamConfig

# Korean particles and endings kiwi splits off as words: Gopher's stop-word test for Korean.
KO_STOP_WORDS = ["이", "가", "은", "는", "을", "를", "의", "에", "다", "고"]


class GopherQualityConfig(StrictModel):
    """datatrove's GopherQualityFilter arguments (None turns one test off)."""
    min_doc_words: PositiveInt | None = 50
    max_doc_words: PositiveInt | None = 100_000
    min_avg_word_length: float | None = 3
    max_avg_word_length: float | None = 10
    max_symbol_word_ratio: float | None = 0.1
    max_bullet_lines_ratio: float | None = 0.9
    max_ellipsis_lines_ratio: float | None = 0.3
    max_non_alpha_words_ratio: float | None = 0.8
    min_stop_words: int | None = 2
    stop_words: list[str] | None = Field(None, description="None: datatrove's English list")


class GopherRepetitionConfig(StrictModel):
    """datatrove's GopherRepetitionFilter arguments (Gopher table A1 by default)."""
    dup_line_frac: float | None = 0.3
    dup_para_frac: float | None = 0.3
    dup_line_char_frac: float | None = 0.2
    dup_para_char_frac: float | None = 0.2
    top_n_grams: list[tuple[PositiveInt, float]] = [(2, 0.2), (3, 0.18), (4, 0.16)]
    dup_n_grams: list[tuple[PositiveInt, float]] = [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11),
                                                    (10, 0.10)]


class FineWebQualityConfig(StrictModel):
    """datatrove's FineWebQualityFilter arguments (FineWeb's line filters)."""
    line_punct_thr: float = 0.12
    line_punct_exclude_zero: bool = False
    short_line_thr: float = 0.67
    short_line_length: PositiveInt = 30
    char_duplicates_ratio: float = 0.01
    new_line_ratio: float = 0.3


class LangQualityConfig(StrictModel):
    """Word-level filters for one language; a section left out (null) is not run."""
    gopher_quality: GopherQualityConfig | None = GopherQualityConfig()
    gopher_repetition: GopherRepetitionConfig | None = GopherRepetitionConfig()
    fineweb_quality: FineWebQualityConfig | None = FineWebQualityConfig()


def default_quality() -> dict[str, LangQualityConfig]:
    # Kiwi splits Korean into morphemes (1-2 characters on average), so the word-length window and
    # the stop words differ from English; code has no entry: word-level filters do not apply to it.
    ko = GopherQualityConfig(min_avg_word_length=1, max_avg_word_length=6, stop_words=KO_STOP_WORDS)
    return {"ko": LangQualityConfig(gopher_quality=ko), "en": LangQualityConfig()}


class MinhashSection(StrictModel):
    """datatrove's MinhashConfig: similarity ~ (1/buckets)^(1/hashes_per_bucket) is the threshold."""
    n_grams: PositiveInt = 5
    num_buckets: PositiveInt = 14
    hashes_per_bucket: PositiveInt = 8
    seed: int = 1


class CurateConfig(StrictModel):
    min_chars: PositiveInt = 50
    max_chars: PositiveInt = 200_000
    min_hangul_ratio: float = Field(0.5, ge=0, le=1, description="for lang ko")
    quality: dict[str, LangQualityConfig] = Field(default_factory=default_quality,
                                                  description="per document language")
    langid: LidConfig = LidConfig()
    spam: SpamConfig = SpamConfig()
    minhash: MinhashSection = MinhashSection()
    heldout_fraction: float = Field(0.1, ge=0, lt=1, description="by sha256 of the document id")
    decontam_ngram: PositiveInt = Field(13, description="words shared with an eval/held-out item")
    tasks: PositiveInt = Field(1, description="datatrove tasks: one output shard each")
    workers: PositiveInt = Field(1, description="tasks at once (local) / array throttle (slurm)")
    verify: VerifyMode = Field("sha256", description="how readers check the shards (size for TB)")
    slurm: GenerateSlurmConfig | None = None
