"""Password hashing with argon2id (argon2-cffi's defaults follow RFC 9106's recommendation)."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


# The staff password policy (等保三级 / DOMAIN.md section 7).
MIN_LENGTH = 8
MAX_LENGTH = 128
MIN_CLASSES = 3  # of: lower case, upper case, digits, other characters
HISTORY = 5  # a new password may not be any of the last five
MAX_AGE_DAYS = 90


def character_classes(password: str) -> int:
    return sum(
        (
            any(c.islower() for c in password),
            any(c.isupper() for c in password),
            any(c.isdigit() for c in password),
            any(not c.isalnum() for c in password),
        )
    )


def policy_problems(password: str, username: str = "") -> list[str]:
    """What is wrong with `password` under the policy, in Chinese (empty: acceptable)."""
    problems = []
    if len(password) < MIN_LENGTH:
        problems.append(f"密码长度至少{MIN_LENGTH}位")
    if len(password) > MAX_LENGTH:
        problems.append(f"密码长度不能超过{MAX_LENGTH}位")
    if character_classes(password) < MIN_CLASSES:
        problems.append("密码须包含大写字母、小写字母、数字、特殊字符中的至少三类")
    if password != password.strip():
        problems.append("密码首尾不能是空格")
    if username and username.lower() in password.lower():
        problems.append("密码不能包含用户名")
    return problems


def matches_any(password: str, hashes: list[str]) -> bool:
    """Whether `password` is the one behind any of `hashes` (all are checked: argon2 is slow on
    purpose, so run this off the event loop)."""
    found = False
    for h in hashes:
        found = verify_password(h, password) or found
    return found
