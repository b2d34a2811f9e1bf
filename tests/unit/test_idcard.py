from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.security.idcard import (
    birth_date_of,
    checksum_char,
    gender_of,
    is_valid_id_number,
    mask_id_number,
    mask_name,
    mask_phone,
    normalize_id_number,
)

# The two worked examples printed in GB 11643-1999.
STANDARD_FEMALE = "11010519491231002X"
STANDARD_MALE = "440524188001010014"
# Computed for this test: 上海徐汇, born 1990-03-07, sequence 123 (odd -> male).
COMPUTED = "31010419900307123X"


def test_checksum_char_matches_standard_examples() -> None:
    assert checksum_char("11010519491231002") == "X"
    assert checksum_char("44052418800101001") == "4"
    assert checksum_char(COMPUTED[:17]) == COMPUTED[17]


@pytest.mark.parametrize(
    "bad", ["", "1101051949123100", "110105194912310021", "1101051949123100a", "１１０１０５１９４９１２３１００２"]
)
def test_checksum_char_rejects_non_17_digits(bad: str) -> None:
    with pytest.raises(ValueError):
        checksum_char(bad)


@pytest.mark.parametrize("good", [STANDARD_FEMALE, STANDARD_MALE, COMPUTED])
def test_valid_numbers(good: str) -> None:
    assert is_valid_id_number(good)


def test_lowercase_x_accepted_and_normalised() -> None:
    lower = STANDARD_FEMALE.lower()
    assert is_valid_id_number(lower)
    assert normalize_id_number(f" {lower} ") == STANDARD_FEMALE
    assert mask_id_number(lower) == "110***********002X"
    assert gender_of(lower) == "F"


def test_wrong_checksum_rejected() -> None:
    assert not is_valid_id_number(STANDARD_MALE[:17] + "5")
    assert not is_valid_id_number(STANDARD_FEMALE[:17] + "0")


@pytest.mark.parametrize(
    "first17",
    [
        "11010519490230002",  # 30 February
        "11010519491301002",  # month 13
        "11010519490000002",  # month and day 0
        "11010519000229002",  # 1900 is not a leap year
        "11010517991231002",  # before 1800
    ],
)
def test_bad_birth_date_rejected_even_with_right_checksum(first17: str) -> None:
    assert not is_valid_id_number(first17 + checksum_char(first17))


def test_leap_day_accepted() -> None:
    first17 = "11010520000229002"
    assert is_valid_id_number(first17 + checksum_char(first17))


@pytest.mark.parametrize(
    "bad",
    ["", "11010519491231002", "11010519491231002XX", "11010519491231002Y", "1101051949123100X2", " 11010519491231002X"],
)
def test_malformed_rejected(bad: str) -> None:
    assert not is_valid_id_number(bad)


def test_future_birth_date_rejected_only_when_today_given() -> None:
    first17 = "11010520990101001"
    number = first17 + checksum_char(first17)
    assert is_valid_id_number(number)
    assert not is_valid_id_number(number, today=date(2026, 1, 1))
    assert is_valid_id_number(STANDARD_MALE, today=date(2026, 1, 1))


def test_birth_date_and_gender() -> None:
    assert birth_date_of(STANDARD_FEMALE) == date(1949, 12, 31)
    assert birth_date_of(STANDARD_MALE) == date(1880, 1, 1)
    assert gender_of(STANDARD_FEMALE) == "F"
    assert gender_of(STANDARD_MALE) == "M"
    assert gender_of(COMPUTED) == "M"
    assert birth_date_of(COMPUTED) == date(1990, 3, 7)


def test_birth_date_and_gender_reject_invalid() -> None:
    with pytest.raises(ValueError):
        birth_date_of(STANDARD_MALE[:17] + "5")
    with pytest.raises(ValueError):
        gender_of("not an id")


def test_mask_id_number_keeps_length() -> None:
    masked = mask_id_number(STANDARD_MALE)
    assert masked == "440***********0014"
    assert len(masked) == 18
    assert mask_id_number("1234567") == "*******"
    assert mask_id_number("") == ""


def test_mask_phone() -> None:
    assert mask_phone("13812345678") == "138****5678"
    assert mask_phone("123") == "***"
    assert mask_phone("") == ""


@pytest.mark.parametrize(
    ("name", "masked"),
    [("张三", "张*"), ("张小三", "张*三"), ("欧阳小明", "欧**明"), ("司马相如", "司**如"), ("张", "*"), ("", "")],
)
def test_mask_name(name: str, masked: str) -> None:
    assert mask_name(name) == masked


# A 17-digit prefix whose birth date is a real date: any region and sequence digits.
prefixes = st.builds(
    lambda region, born, seq: f"{region:06d}{born:%Y%m%d}{seq:03d}",
    st.integers(0, 999_999),
    st.dates(min_value=date(1800, 1, 1), max_value=date(9999, 12, 31)),
    st.integers(0, 999),
)


@given(prefixes, st.sampled_from("0123456789X"))
def test_prefix_plus_checksum_is_valid_and_other_check_chars_are_not(prefix: str, other: str) -> None:
    good = prefix + checksum_char(prefix)
    assert is_valid_id_number(good)
    assert is_valid_id_number(good.lower())
    if other != good[17]:
        assert not is_valid_id_number(prefix + other)


@given(prefixes, st.integers(0, 16), st.integers(1, 9))
def test_any_single_digit_change_is_detected(prefix: str, position: int, delta: int) -> None:
    good = prefix + checksum_char(prefix)
    changed = good[:position] + str((int(good[position]) + delta) % 10) + good[position + 1 :]
    assert not is_valid_id_number(changed)


@given(prefixes)
def test_birth_date_and_gender_read_back(prefix: str) -> None:
    number = prefix + checksum_char(prefix)
    assert birth_date_of(number).strftime("%Y%m%d") == prefix[6:14]
    assert gender_of(number) == ("M" if int(prefix[16]) % 2 else "F")
    assert mask_id_number(number) == number[:3] + "*" * 11 + number[-4:]
