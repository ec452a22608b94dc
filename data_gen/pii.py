"""PII scrubbing for Korean and English text: each match becomes a typed placeholder and is counted.

Order matters because the patterns overlap on digit runs: emails, then resident registration
numbers, then card numbers, then IPs, then phones. A digit run taken by an earlier type is already
a placeholder when later patterns run, so an RRN- or card-shaped number is never also a phone.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.formatters.base import BaseFormatter
from datatrove.utils.typeshelper import StatHints

from data_gen.source_filter import doc_source

_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# YYMMDD-GNNNNNN, dash optional; not inside a longer digit/dash run.
_RRN = re.compile(r"(?<![\d-])\d{6}-?\d{7}(?![\d-])")
# 13-19 digits, contiguous or in 4-4-4-1..7 / 4-6-4..5 groups with one separator kind.
_CARD = re.compile(r"(?<![\d-])(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{1,4}(?:\1\d{1,3})?"
                   r"|\d{4}([ -])\d{6}\2\d{4,5})(?![\d-])")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
# Not preceded by a digit, dot or a version marker ("v1.2.3.4"); a sentence's final dot is allowed.
_IP = re.compile(rf"(?<![\d.vV]){_OCTET}(?:\.{_OCTET}){{3}}(?!\.?\d)")
# Mobile 010/011/016-019, Seoul 02, regional 031-033/041-044/051-055/061-064, VoIP 070,
# personal numbers 0502-0508; written with a leading 0, or +82 without it; never taken from the
# middle of a longer dash- or dot-separated digit run.
_AREA = r"(?:1[016789]|2|3[1-3]|4[1-4]|5[1-5]|6[1-4]|70|50[2-8])"
_PHONE = re.compile(rf"(?<![\d+])(?<!\d[-.])(?:\+82[ -]?\(?|\(?0){_AREA}\)?"
                    r"[-. ]?\d{3,4}[-. ]?\d{4}(?!\d)")

# RRN birth century from the 7th digit (gender/century); 9 and 0 (born 1800s) are not accepted.
_CENTURY = {"1": 1900, "2": 1900, "5": 1900, "6": 1900, "3": 2000, "4": 2000, "7": 2000, "8": 2000}
_RRN_WEIGHTS = (2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5)


def rrn_valid(s: str) -> bool:
    """A resident registration number with a real birth date, digit 7 in 1-8 and a valid check digit.

    Numbers issued since October 2020 have random trailing digits and no check digit, so they are
    missed: the accepted limitation, since the check is what keeps other 13-digit numbers from
    being scrubbed. Foreigners' numbers (digit 7 in 5-8) are checked with the same formula.
    """
    digits = s.replace("-", "")
    if len(digits) != 13 or not digits.isdigit() or digits[6] not in _CENTURY:
        return False
    try:
        datetime.date(_CENTURY[digits[6]] + int(digits[:2]), int(digits[2:4]), int(digits[4:6]))
    except ValueError:
        return False
    total = sum(int(d) * w for d, w in zip(digits[:12], _RRN_WEIGHTS, strict=True))
    return (11 - total % 11) % 10 == int(digits[12])


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum that every payment card number carries (separators are ignored)."""
    digits = re.sub(r"[ -]", "", digits)
    if not digits.isdigit():
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def _card_valid(s: str) -> bool:
    return 13 <= len(re.sub(r"[ -]", "", s)) <= 19 and luhn_valid(s)


# (type, pattern, validator), applied in this order.
_RULES: tuple[tuple[str, re.Pattern[str], Callable[[str], bool] | None], ...] = (
    ("email", _EMAIL, None),
    ("rrn", _RRN, rrn_valid),
    ("card", _CARD, _card_valid),
    ("ip", _IP, None),
    ("phone", _PHONE, None),
)


def placeholder(kind: str) -> str:
    return f"<{kind.upper()}>"


def scrub(text: str) -> tuple[str, dict[str, int]]:
    """``text`` with every PII match replaced by its placeholder, and the count per type found."""
    counts: dict[str, int] = {}
    for kind, pattern, valid in _RULES:
        def replace(m: re.Match[str], kind: str = kind, valid=valid) -> str:
            if valid is not None and not valid(m.group(0)):
                return m.group(0)
            counts[kind] = counts.get(kind, 0) + 1
            return placeholder(kind)

        text = pattern.sub(replace, text)
    return text, counts


class KoreanPII(BaseFormatter):
    """Scrubs ``doc.text`` and counts ``pii_<type>/<source>`` (matches) and ``pii_docs/<source>``."""

    name = "🇰🇷 Korean PII"

    def format(self, text: str) -> str:
        return scrub(text)[0]

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            self.stat_update(StatHints.total)
            with self.track_time():
                doc.text, counts = scrub(doc.text)
            source = doc_source(doc)
            for kind, n in counts.items():
                self.stat_update(f"pii_{kind}/{source}", value=n)
            if counts:
                self.stat_update(f"pii_docs/{source}")
            yield doc
