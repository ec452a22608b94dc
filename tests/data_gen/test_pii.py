import pytest
from datatrove.data import Document

from data_gen.pii import KoreanPII, luhn_valid, rrn_valid, scrub

WEIGHTS = (2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5)


def make_rrn(birth: str, gender: str, serial: str = "12345") -> str:
    """An RRN with the right check digit, built from the published algorithm."""
    body = birth + gender + serial
    check = (11 - sum(int(d) * w for d, w in zip(body, WEIGHTS, strict=True)) % 11) % 10
    return f"{body[:6]}-{body[6:]}{check}"


def wrong_check(rrn: str) -> str:
    return rrn[:-1] + str((int(rrn[-1]) + 1) % 10)


@pytest.mark.parametrize("birth,gender", [("900101", "1"), ("851231", "2"), ("040229", "3"),
                                          ("120615", "4"), ("770707", "5"), ("150310", "8")])
def test_rrn_with_valid_check_digit_is_valid_and_scrubbed(birth, gender):
    rrn = make_rrn(birth, gender)
    assert rrn_valid(rrn) and rrn_valid(rrn.replace("-", ""))
    assert scrub(f"주민등록번호 {rrn} 입니다") == ("주민등록번호 <RRN> 입니다", {"rrn": 1})
    assert scrub(f"번호:{rrn.replace('-', '')}.") == ("번호:<RRN>.", {"rrn": 1})


def test_rrn_negatives_are_left_alone():
    good = make_rrn("900101", "1")
    assert not rrn_valid(wrong_check(good))
    assert not rrn_valid(make_rrn("900230", "1"))  # 30 February
    assert not rrn_valid(make_rrn("011301", "3"))  # month 13
    assert not rrn_valid(make_rrn("050229", "3"))  # 2005 is not a leap year
    assert not rrn_valid(make_rrn("900101", "9"))  # born in the 1800s: not accepted
    assert not rrn_valid(make_rrn("900101", "0"))
    assert not rrn_valid("900101-123456")  # too short
    text = f"주문번호 {wrong_check(good)} 확인"
    assert scrub(text) == (text, {})


def test_luhn():
    assert luhn_valid("4111111111111111") and luhn_valid("4111 1111 1111 1111")
    assert luhn_valid("378282246310005")  # Amex test number
    assert not luhn_valid("4111111111111112")
    assert not luhn_valid("4111-1111-x111-1111")


def test_cards_valid_scrubbed_invalid_kept():
    assert scrub("카드 4111-1111-1111-1111 결제") == ("카드 <CARD> 결제", {"card": 1})
    assert scrub("card 4111 1111 1111 1111.") == ("card <CARD>.", {"card": 1})
    assert scrub("amex 3782 822463 10005") == ("amex <CARD>", {"card": 1})
    assert scrub("5555555555554444") == ("<CARD>", {"card": 1})
    bad = "4111-1111-1111-1112"
    assert scrub(f"카드 {bad}") == (f"카드 {bad}", {})


@pytest.mark.parametrize("phone", [
    "010-1234-5678", "010.1234.5678", "010 1234 5678", "01012345678", "011-123-4567", "019-987-6543",
    "+82 10-1234-5678", "+82-10-1234-5678", "+821012345678", "02-123-4567", "02-1234-5678",
    "(02) 123-4567", "031-1234-5678", "051-123-4567", "064-712-3456", "070-1234-5678",
    "0505-123-4567", "+82 2-123-4567",
])
def test_korean_phone_formats(phone):
    assert scrub(f"연락처: {phone}로 전화") == ("연락처: <PHONE>로 전화", {"phone": 1})


@pytest.mark.parametrize("not_phone", ["2024-1234-5678", "080-1234", "099-123-4567", "12010-1234-5678",
                                       "1234-010-1234-5678"])
def test_not_phones(not_phone):
    assert scrub(f"값 {not_phone} 끝")[1].get("phone", 0) == 0


def test_emails_and_ips():
    text = "문의는 hong.gildong+ko@example.co.kr 또는 서버 203.0.113.7 로."
    assert scrub(text) == ("문의는 <EMAIL> 또는 서버 <IP> 로.", {"email": 1, "ip": 1})
    assert scrub("접속 IP는 192.168.0.1.") == ("접속 IP는 <IP>.", {"ip": 1})
    for keep in ("256.1.1.1", "v1.2.3.4", "1.2.3.4.5", "3.14"):
        assert scrub(keep) == (keep, {})


def test_digit_runs_are_counted_once_rrn_and_card_before_phone():
    # A valid RRN whose digits start like a mobile number (born 2001-01-01) is an RRN only.
    for rrn in (make_rrn("010101", "3"), make_rrn("010101", "3").replace("-", "")):
        assert scrub(f"a {rrn} b") == ("a <RRN> b", {"rrn": 1})
    # Cards whose digits contain phone-shaped runs are cards only.
    for card in ("0101-2345-6789-0127", "0101 2345 6789 0127", "0101234567890127"):
        assert luhn_valid(card)
        assert scrub(f"x {card} y") == ("x <CARD> y", {"card": 1})
    # A Luhn-invalid card-shaped run does not turn into a phone either.
    assert scrub("x 5555-0101-2345-6780 y")[1] == {}


def test_counts_several_of_each():
    text = "010-1111-2222, 010-3333-4444, a@b.com"
    assert scrub(text) == ("<PHONE>, <PHONE>, <EMAIL>", {"phone": 2, "email": 1})


def test_datatrove_step_rewrites_and_counts_per_source():
    docs = [
        Document(text="전화 010-1234-5678, 02-123-4567", id="a", metadata={"source": "kolaw"}),
        Document(text="mail a@b.com", id="b", metadata={"source": "synthetic_ko"}),
        Document(text="깨끗한 문서", id="c", metadata={"source": "kolaw"}),
    ]
    step = KoreanPII()
    out = list(step.run(iter(docs)))
    assert [d.text for d in out] == ["전화 <PHONE>, <PHONE>", "mail <EMAIL>", "깨끗한 문서"]
    stats = step.stats.stats
    assert stats["pii_phone/kolaw"].total == 2
    assert stats["pii_email/synthetic_ko"].total == 1
    assert stats["pii_docs/kolaw"].total == 1
    assert "pii_email/kolaw" not in stats
