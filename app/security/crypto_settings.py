"""Keys for personal data at rest (个人信息保护法): read from the environment by `crypto_settings`.

    HY_PII_KEYS            encryption keys, comma-separated `id:<base64 of 32 bytes>`; the first is
                           the current one (new writes), the others only decrypt (key rotation):
                           HY_PII_KEYS='k2:q83v...=,k1:7Hn0...='
    HY_PII_INDEX_KEY       base64 of 32 bytes: the HMAC key of the blind index (look-up by ID number)
    HY_PII_PSEUDONYM_KEY   base64 of 32 bytes: the HMAC key of the pseudonymous patient key in the
                           de-identified statistics export

Generate a key with `python -c "import base64, os; print(base64.b64encode(os.urandom(32)).decode())"`.
The index and pseudonym keys are not rotated with the encryption keys: changing the index key
needs a re-index of every row (`reencrypt_pii(..., reindex=True)`), changing the pseudonym key
breaks the link between exports made before and after.

All three or none: with none set and HY_ENV=development (the default), a random secret is kept in
`<HY_DATA_DIR>/pii.key` (created on first use, mode 0600) and the keys are derived from it, with a
warning; any other HY_ENV refuses to start without them. This module only parses: the file is read
(or created) when the key ring is built (`app.security.crypto.key_ring`).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from pathlib import Path

import msgspec

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent  # as app.settings.PROJECT_ROOT
KEY_BYTES = 32  # AES-256-GCM, HMAC-SHA256
DEV_KEY_FILE = "pii.key"
_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,16}$")


class CryptoSettings(msgspec.Struct, frozen=True):
    # (key id, key), the current (encrypting) key first. Empty: use the development key file.
    keys: tuple[tuple[str, bytes], ...] = ()
    index_key: bytes = b""
    pseudonym_key: bytes = b""
    # Set when the keys come from the development key file (no HY_PII_* in development).
    dev_key_file: Path | None = None

    def __repr__(self) -> str:  # never print the keys (settings end up in logs and tracebacks)
        ids = ",".join(k for k, _ in self.keys)
        return f"CryptoSettings(keys=[{ids}], dev_key_file={self.dev_key_file})"

    __str__ = __repr__


def _key(name: str, raw: str) -> bytes:
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{name}: not valid base64") from None
    if len(key) != KEY_BYTES:
        raise ValueError(f"{name}: a key must be {KEY_BYTES} bytes (base64 of 32 random bytes), got {len(key)}")
    return key


def parse_keys(raw: str) -> tuple[tuple[str, bytes], ...]:
    """`k2:<base64>,k1:<base64>` -> ((k2, key), (k1, key)); ValueError names what is wrong."""
    keys: list[tuple[str, bytes]] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        kid, sep, encoded = item.partition(":")
        kid = kid.strip()
        if not sep or not _KEY_ID.match(kid):
            raise ValueError("HY_PII_KEYS: expected id:<base64>, the id 1-16 of A-Z a-z 0-9 _ -")
        if any(kid == k for k, _ in keys):
            raise ValueError(f"HY_PII_KEYS: key id {kid} is listed twice")
        keys.append((kid, _key(f"HY_PII_KEYS ({kid})", encoded)))
    if not keys:
        raise ValueError("HY_PII_KEYS: no key")
    return tuple(keys)


def crypto_settings(env: Mapping[str, str]) -> CryptoSettings:
    """The PII keys from `env` (see the module docstring)."""
    names = ("HY_PII_KEYS", "HY_PII_INDEX_KEY", "HY_PII_PSEUDONYM_KEY")
    given = [n for n in names if env.get(n, "").strip()]
    if not given:
        environment = env.get("HY_ENV", "development") or "development"
        if environment != "development":
            raise ValueError(f"HY_ENV={environment} needs {', '.join(names)} (personal data encryption keys)")
        data_dir = Path(env.get("HY_DATA_DIR") or PROJECT_ROOT / ".data")
        return CryptoSettings(dev_key_file=data_dir / DEV_KEY_FILE)
    missing = [n for n in names if n not in given]
    if missing:
        raise ValueError(f"{', '.join(given)} set but not {', '.join(missing)}: set all three or none")
    keys = parse_keys(env["HY_PII_KEYS"])
    index_key = _key("HY_PII_INDEX_KEY", env["HY_PII_INDEX_KEY"])
    pseudonym_key = _key("HY_PII_PSEUDONYM_KEY", env["HY_PII_PSEUDONYM_KEY"])
    if index_key == pseudonym_key or any(k in (index_key, pseudonym_key) for _, k in keys):
        raise ValueError("HY_PII_KEYS, HY_PII_INDEX_KEY and HY_PII_PSEUDONYM_KEY must be different keys")
    return CryptoSettings(keys=keys, index_key=index_key, pseudonym_key=pseudonym_key)
