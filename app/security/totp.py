"""Time-based one-time passwords (RFC 6238 over RFC 4226 HOTP): HMAC-SHA1, 30-second steps, 6 digits,
one step of clock drift either way -- what authenticator apps (Google Authenticator, Microsoft
Authenticator, 阿里云 / 腾讯身份验证器) expect from an ``otpauth://totp/`` URI.

Standard library only. A code is accepted once: the caller records the step it matched and refuses
that step or an earlier one next time (``verify`` takes ``last_step``).

The secret is stored encrypted (``seal`` / ``unseal``: AES-GCM under the personal-data key ring of
app/security/crypto.py, field "totp"), as text in ``staff_user.totp_secret`` / ``totp_pending_secret``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
from urllib.parse import quote, urlencode

STEP_S = 30
DIGITS = 6
DRIFT_STEPS = 1
SECRET_BYTES = 20  # 160 bits, RFC 4226's recommendation for HMAC-SHA1
ISSUER = "HuiYue"


def new_secret() -> str:
    """A random secret as unpadded base32 (what authenticator apps accept)."""
    return base64.b32encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii").rstrip("=")


def _key(secret: str) -> bytes:
    text = secret.strip().replace(" ", "").upper()
    return base64.b32decode(text + "=" * (-len(text) % 8))


def hotp(secret: str, counter: int, digits: int = DIGITS) -> str:
    """RFC 4226 HOTP value of `counter`."""
    mac = hmac.new(_key(secret), struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def step_at(epoch_s: float) -> int:
    return int(epoch_s // STEP_S)


def code_at(secret: str, epoch_s: float) -> str:
    """The code an authenticator shows at `epoch_s`."""
    return hotp(secret, step_at(epoch_s))


def verify(secret: str, code: str, epoch_s: float, last_step: int | None = None) -> int | None:
    """The step `code` matches at `epoch_s` (within one step either way, and later than `last_step`,
    so a code is never accepted twice), or None."""
    code = code.strip()
    if len(code) != DIGITS or not code.isdigit():
        return None
    now = step_at(epoch_s)
    matched: int | None = None
    # Every candidate is compared (no early exit), each in constant time.
    for step in range(now - DRIFT_STEPS, now + DRIFT_STEPS + 1):
        if hmac.compare_digest(hotp(secret, step), code) and (last_step is None or step > last_step):
            matched = step if matched is None else matched
    return matched


def provisioning_uri(secret: str, account: str, issuer: str = ISSUER) -> str:
    """The ``otpauth://`` URI an authenticator app scans (as a QR code) or takes by hand."""
    label = quote(f"{issuer}:{account}", safe=":@")
    query = urlencode({"secret": secret, "issuer": issuer, "algorithm": "SHA1", "digits": DIGITS, "period": STEP_S})
    return f"otpauth://totp/{label}?{query}"


SEALED = "enc:"


def seal(secret: str) -> str:
    """The secret as stored: encrypted with the current key, as text."""
    from app.security.crypto import pii_keys

    return SEALED + base64.b64encode(pii_keys().encrypt("totp", secret)).decode()


def unseal(stored: str) -> str:
    """The secret from its stored form (a secret stored before encryption is read as it is)."""
    if not stored.startswith(SEALED):
        return stored
    from app.security.crypto import pii_keys

    return pii_keys().decrypt("totp", base64.b64decode(stored[len(SEALED) :]))
