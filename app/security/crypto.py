"""Field encryption of personal data at rest: AES-256-GCM with a key ring, a keyed blind index for
look-ups, and keyed pseudonyms for de-identified exports.

Ciphertext layout (stored as bytea): ``<key id> ":" <12-byte nonce> <ciphertext + 16-byte tag>``.
The key id in clear says which key of the ring opens it, so keys rotate without a flag day: a new
key goes first in HY_PII_KEYS (it encrypts from then on), the old ones stay for decryption until
`patient_repo.reencrypt_pii` has moved every row to the new key, then they can be removed. The
associated data binds a ciphertext to its field (``patient.id_number`` / ``patient.phone``) and its
key id, so a phone's ciphertext copied into the ID-number column does not decrypt.

The blind index is HMAC-SHA256 of the normalised value under a key of its own (never an encryption
key), per field: equal ID numbers give equal indexes, so `WHERE id_number_idx = $1` finds a patient
without decrypting anything (and `phone_idx` by phone, for the SMS login), and the index says
nothing without the key.

Pure apart from `key_ring` (which may read or create the development key file): no database here.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from app.security.crypto_settings import KEY_BYTES, CryptoSettings, crypto_settings
from app.security.idcard import normalize_id_number

logger = logging.getLogger(__name__)

NONCE_BYTES = 12
TAG_BYTES = 16
SEPARATOR = b":"
ID_NUMBER = "patient.id_number"
PHONE = "patient.phone"
DEV_KEY_ID = "dev1"


class PiiKeyError(Exception):
    """A ciphertext names a key the ring does not hold (a key removed too early, or another
    installation's data)."""


class PiiDecryptError(Exception):
    """A ciphertext does not open with the key its id names: a wrong key under that id, or altered
    data. Never retried, never "fixed": the row needs a person to look at it."""


class KeyRing:
    """The encryption keys (one current, any number for decryption), the index and pseudonym keys."""

    def __init__(
        self, keys: Mapping[str, bytes] | list[tuple[str, bytes]], index_key: bytes, pseudonym_key: bytes
    ) -> None:
        pairs = list(keys.items()) if isinstance(keys, Mapping) else list(keys)
        if not pairs:
            raise ValueError("a key ring needs at least one encryption key")
        for kid, key in pairs:
            if not kid or SEPARATOR in kid.encode() or len(key) != KEY_BYTES:
                raise ValueError(f"key {kid!r}: an id without ':' and a {KEY_BYTES}-byte key are needed")
        if len(index_key) != KEY_BYTES or len(pseudonym_key) != KEY_BYTES:
            raise ValueError(f"the index and pseudonym keys must be {KEY_BYTES} bytes")
        self.current = pairs[0][0]
        self._aead = {kid: AESGCM(key) for kid, key in pairs}
        self._index_key = index_key
        self._pseudonym_key = pseudonym_key

    def __repr__(self) -> str:
        return f"KeyRing(current={self.current}, keys={sorted(self._aead)})"

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._aead)

    @classmethod
    def from_settings(cls, settings: CryptoSettings) -> KeyRing:
        if settings.keys:
            return cls(list(settings.keys), settings.index_key, settings.pseudonym_key)
        if settings.dev_key_file is None:
            raise ValueError("no personal-data keys configured (HY_PII_KEYS)")
        secret = _dev_secret(settings.dev_key_file)
        logger.warning(
            "HY_PII_KEYS not set: personal data is encrypted with the development key in %s "
            "(losing that file loses the data; never use it in production)",
            settings.dev_key_file,
        )
        return cls(
            [(DEV_KEY_ID, _derive(secret, b"huiyue pii encryption " + DEV_KEY_ID.encode()))],
            _derive(secret, b"huiyue pii blind index"),
            _derive(secret, b"huiyue pii pseudonym"),
        )

    # -- encryption ------------------------------------------------------------------------------

    def header(self, kid: str | None = None) -> bytes:
        """The prefix of every ciphertext made with key `kid` (default: the current key)."""
        return (kid or self.current).encode() + SEPARATOR

    def encrypt(self, field: str, plaintext: str) -> bytes:
        kid = self.current
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead[kid].encrypt(nonce, plaintext.encode(), _aad(field, kid))
        return self.header(kid) + nonce + sealed

    def decrypt(self, field: str, blob: bytes) -> str:
        kid = key_id_of(blob)
        aead = self._aead.get(kid)
        if aead is None:
            raise PiiKeyError(f"{field}: encrypted with key {kid!r}, which is not in the key ring {sorted(self._aead)}")
        body = bytes(blob[len(kid) + 1 :])
        if len(body) < NONCE_BYTES + TAG_BYTES:
            raise PiiDecryptError(f"{field}: ciphertext too short")
        try:
            plain = aead.decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], _aad(field, kid))
        except InvalidTag:
            raise PiiDecryptError(
                f"{field}: does not decrypt with key {kid!r} (a different key under that id, or altered data)"
            ) from None
        return plain.decode()

    # -- the patient's two fields ----------------------------------------------------------------

    def id_number_index(self, id_number: str) -> bytes:
        """The blind index of an ID number (normalised first: ' 11...x ' and '11...X' match)."""
        return self.blind_index(ID_NUMBER, normalize_id_number(id_number))

    def seal_id_number(self, id_number: str | None) -> tuple[bytes | None, bytes | None]:
        """(ciphertext, blind index) of the normalised number; (None, None) for none or ''."""
        if not id_number or not id_number.strip():
            return None, None
        value = normalize_id_number(id_number)
        return self.encrypt(ID_NUMBER, value), self.blind_index(ID_NUMBER, value)

    def phone_index(self, phone: str) -> bytes:
        """The blind index of a phone number (normalised first: '+86 138-1234-5678' = '13812345678')."""
        return self.blind_index(PHONE, normalize_phone(phone))

    def seal_phone(self, phone: str | None) -> tuple[bytes | None, bytes | None]:
        """(ciphertext, blind index) of the phone as given (stripped); (None, None) for none or ''."""
        if not phone or not phone.strip():
            return None, None
        return self.encrypt(PHONE, phone.strip()), self.phone_index(phone)

    def open_id_number(self, blob: bytes | None) -> str | None:
        return None if blob is None else self.decrypt(ID_NUMBER, blob)

    def open_phone(self, blob: bytes | None) -> str | None:
        return None if blob is None else self.decrypt(PHONE, blob)

    # -- keyed digests ---------------------------------------------------------------------------

    def blind_index(self, field: str, value: str) -> bytes:
        return hmac.digest(self._index_key, field.encode() + b"\x00" + value.encode(), hashlib.sha256)

    def pseudonym(self, patient_id: int) -> str:
        """A stable pseudonymous patient key for exports (16 hex characters): the same patient gets
        the same key in every export, and nobody without HY_PII_PSEUDONYM_KEY can link it back."""
        return hmac.new(self._pseudonym_key, b"patient:%d" % patient_id, hashlib.sha256).hexdigest()[:16]


def normalize_phone(phone: str) -> str:
    """Digits only, without a +86 / 0086 country prefix before an 11-digit mobile number."""
    digits = "".join(c for c in phone if c.isdigit())
    for prefix in ("0086", "86"):
        if digits.startswith(prefix) and len(digits) == len(prefix) + 11 and digits[len(prefix)] == "1":
            return digits[len(prefix) :]
    return digits


def key_id_of(blob: bytes) -> str:
    """The key id a ciphertext names; PiiDecryptError when it names none."""
    kid, sep, _ = bytes(blob[:32]).partition(SEPARATOR)
    if not sep or not kid:
        raise PiiDecryptError("not a ciphertext of this platform (no key id)")
    try:
        return kid.decode("ascii")
    except UnicodeDecodeError:
        raise PiiDecryptError("not a ciphertext of this platform (bad key id)") from None


def _aad(field: str, kid: str) -> bytes:
    return b"huiyue/" + field.encode() + b"/" + kid.encode()


def _derive(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(secret)


def _dev_secret(path: Path) -> bytes:
    """The development secret in `path`, created (0600) on first use; safe when two processes
    start at once (the file appears complete or not at all)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, base64.b64encode(os.urandom(KEY_BYTES)) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process won the race: its key is used
            logger.warning("created the development personal-data key %s", path)
        except FileExistsError:
            pass
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        logger.warning("%s is readable by others (mode %o): chmod 600 it", path, mode)
    secret = base64.b64decode(path.read_bytes().strip(), validate=True)
    if len(secret) != KEY_BYTES:
        raise ValueError(f"{path}: expected base64 of {KEY_BYTES} bytes")
    return secret


@functools.lru_cache(maxsize=8)
def key_ring(settings: CryptoSettings | None = None) -> KeyRing:
    """The key ring of `settings` (built once per process and settings), or of the process
    environment when None (for callers not handed the settings: the demo seeder, the CLI)."""
    return KeyRing.from_settings(settings if settings is not None else crypto_settings(os.environ))


def pii_keys(settings: object = None) -> KeyRing:
    """The key ring of the app's settings (`settings.crypto`), falling back to the environment
    while `Settings` has no `crypto` field."""
    crypto = getattr(settings, "crypto", None)
    return key_ring(crypto if isinstance(crypto, CryptoSettings) else None)
