"""Chinese resident identity numbers (GB 11643-1999) and masking of personal data for display.

All functions are pure: no I/O, no clock. Lowercase 'x' as check character is accepted on input and
normalised to upper case.
"""

from __future__ import annotations

from datetime import date

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK_CHARS = "10X98765432"
# Birth years before this are rejected: no living person holds such a number.
_MIN_BIRTH_YEAR = 1800


def checksum_char(first17: str) -> str:
    """Return the check character ('0'-'9' or 'X') for the first 17 digits of an ID number."""
    if len(first17) != 17 or not first17.isascii() or not first17.isdigit():
        raise ValueError("expected exactly 17 ASCII digits")
    total = sum(int(c) * w for c, w in zip(first17, _WEIGHTS, strict=True))
    return _CHECK_CHARS[total % 11]


def normalize_id_number(s: str) -> str:
    """Strip surrounding whitespace and upper-case a trailing 'x'."""
    return s.strip().upper()


def _birth_date_or_none(id_number: str) -> date | None:
    try:
        born = date(int(id_number[6:10]), int(id_number[10:12]), int(id_number[12:14]))
    except ValueError:
        return None
    return born if born.year >= _MIN_BIRTH_YEAR else None


def is_valid_id_number(s: str, *, today: date | None = None) -> bool:
    """True for an 18-character number with a valid birth date and check character.

    With `today`, a birth date after it is also rejected (the function itself never reads the clock).
    """
    if len(s) != 18 or not s.isascii():
        return False
    body, check = s[:17], s[17].upper()
    if not body.isdigit() or not (check.isdigit() or check == "X"):
        return False
    born = _birth_date_or_none(s)
    if born is None or (today is not None and born > today):
        return False
    return checksum_char(body) == check


def _require_valid(id_number: str) -> None:
    if not is_valid_id_number(id_number):
        raise ValueError("invalid resident ID number")


def birth_date_of(id_number: str) -> date:
    """Birth date encoded in positions 7-14; ValueError if the number is invalid."""
    _require_valid(id_number)
    born = _birth_date_or_none(id_number)
    assert born is not None  # guaranteed by _require_valid
    return born


def gender_of(id_number: str) -> str:
    """'M' if the 17th digit (sequence code) is odd, else 'F'; ValueError if the number is invalid."""
    _require_valid(id_number)
    return "M" if int(id_number[16]) % 2 == 1 else "F"


def _mask_middle(s: str, keep_head: int, keep_tail: int) -> str:
    # Too short to keep anything without revealing most of it: mask it all.
    if len(s) <= keep_head + keep_tail:
        return "*" * len(s)
    return s[:keep_head] + "*" * (len(s) - keep_head - keep_tail) + s[len(s) - keep_tail :]


def mask_id_number(s: str) -> str:
    """Keep the first 3 and last 4 characters: '110***********123X' (length preserved)."""
    return _mask_middle(normalize_id_number(s), 3, 4)


def mask_phone(s: str) -> str:
    """Keep the first 3 and last 4 digits: '138****5678'."""
    return _mask_middle(s.strip(), 3, 4)


def mask_name(name: str) -> str:
    """Call-screen form of a name: 张三 -> 张*, 张小三 -> 张*三, 欧阳小明 -> 欧**明, 张 -> *."""
    name = name.strip()
    if len(name) <= 1:
        return "*" * len(name)
    if len(name) == 2:
        return name[0] + "*"
    return name[0] + "*" * (len(name) - 2) + name[-1]
