"""Field encryption, blind index, pseudonyms, key settings, masking policy and the log filter."""

from __future__ import annotations

import base64
import logging
import os
import stat
from pathlib import Path

import pytest

from app.security.actor import Actor
from app.security.crypto import (
    ID_NUMBER,
    PHONE,
    KeyRing,
    PiiDecryptError,
    PiiKeyError,
    key_id_of,
)
from app.security.crypto_settings import CryptoSettings, crypto_settings
from app.security.masking import PiiLogFilter, Visibility, scrub, shown, visibility

ID = "11010519491231002X"
PHONE_NO = "13812345678"


def b64() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def ring(*kids: str, index: bytes | None = None) -> KeyRing:
    return KeyRing([(k, os.urandom(32)) for k in kids], index or os.urandom(32), os.urandom(32))


def test_round_trip_with_key_id_prefix_and_fresh_nonces() -> None:
    keys = ring("k1")
    a, b = keys.encrypt(ID_NUMBER, ID), keys.encrypt(ID_NUMBER, ID)
    assert a != b  # a fresh nonce every time: equal numbers are not equal ciphertexts
    assert a.startswith(b"k1:") and key_id_of(a) == "k1"
    assert ID.encode() not in a and b"19491231" not in a
    assert keys.decrypt(ID_NUMBER, a) == ID == keys.decrypt(ID_NUMBER, b)
    enc, idx = keys.seal_phone(f" {PHONE_NO} ")
    assert keys.open_phone(enc) == PHONE_NO and idx == keys.phone_index("+86 138-1234-5678")
    assert keys.seal_phone("") == (None, None) and keys.seal_id_number(None) == (None, None)


def test_a_ciphertext_is_bound_to_its_field() -> None:
    keys = ring("k1")
    blob = keys.encrypt(PHONE, PHONE_NO)
    with pytest.raises(PiiDecryptError):
        keys.decrypt(ID_NUMBER, blob)


def test_rotation_new_current_key_old_ones_still_decrypt() -> None:
    k1 = os.urandom(32)
    index, pseudonym = os.urandom(32), os.urandom(32)
    old = KeyRing([("k1", k1)], index, pseudonym)
    blob = old.encrypt(ID_NUMBER, ID)
    new = KeyRing([("k2", os.urandom(32)), ("k1", k1)], index, pseudonym)
    assert new.current == "k2" and new.decrypt(ID_NUMBER, blob) == ID
    assert new.encrypt(ID_NUMBER, ID).startswith(b"k2:") and new.header() == b"k2:"
    # Same index key: the blind index does not change with the encryption keys.
    assert new.id_number_index(ID) == old.id_number_index(ID)
    # Once k1 is gone its rows fail clearly, naming the key.
    gone = KeyRing([("k2", os.urandom(32))], index, pseudonym)
    with pytest.raises(PiiKeyError, match="'k1'"):
        gone.decrypt(ID_NUMBER, blob)


def test_a_wrong_key_under_the_same_id_or_altered_data_fails_clearly() -> None:
    blob = ring("k1").encrypt(ID_NUMBER, ID)
    with pytest.raises(PiiDecryptError, match="does not decrypt with key 'k1'"):
        ring("k1").decrypt(ID_NUMBER, blob)
    keys = ring("k1")
    good = bytearray(keys.encrypt(ID_NUMBER, ID))
    good[-1] ^= 1
    with pytest.raises(PiiDecryptError):
        keys.decrypt(ID_NUMBER, bytes(good))
    for junk in (b"", b"no separator", b"k1:short"):
        with pytest.raises((PiiDecryptError, PiiKeyError)):
            keys.decrypt(ID_NUMBER, junk)


def test_blind_index_is_keyed_normalised_and_per_field() -> None:
    index = os.urandom(32)
    a, b = ring("k1", index=index), ring("k9", index=index)
    assert a.id_number_index(ID) == b.id_number_index(f" {ID.lower()} ") and len(a.id_number_index(ID)) == 32
    assert ring("k1").id_number_index(ID) != a.id_number_index(ID)  # another index key: another index
    assert a.blind_index(PHONE, ID) != a.blind_index(ID_NUMBER, ID)
    assert a.seal_id_number(ID.lower())[1] == a.id_number_index(ID)


def test_pseudonym_is_stable_keyed_and_short() -> None:
    keys = ring("k1")
    assert keys.pseudonym(42) == keys.pseudonym(42) != keys.pseudonym(43)
    assert len(keys.pseudonym(42)) == 16 and ring("k1").pseudonym(42) != keys.pseudonym(42)


def test_settings_parse_all_three_keys_first_is_current() -> None:
    env = {"HY_PII_KEYS": f"k2:{b64()}, k1:{b64()}", "HY_PII_INDEX_KEY": b64(), "HY_PII_PSEUDONYM_KEY": b64()}
    s = crypto_settings(env)
    assert [k for k, _ in s.keys] == ["k2", "k1"] and s.dev_key_file is None
    assert "k2" in repr(s) and env["HY_PII_INDEX_KEY"] not in repr(s)  # keys never printed
    assert KeyRing.from_settings(s).current == "k2"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HY_PII_KEYS": f"k1:{b64()}"}, "set all three or none"),
        ({"HY_PII_KEYS": "k1:short", "HY_PII_INDEX_KEY": b64(), "HY_PII_PSEUDONYM_KEY": b64()}, "HY_PII_KEYS"),
        ({"HY_PII_KEYS": f"k1:{b64()},k1:{b64()}", "HY_PII_INDEX_KEY": b64(), "HY_PII_PSEUDONYM_KEY": b64()}, "twice"),
        ({"HY_PII_KEYS": f"bad id:{b64()}", "HY_PII_INDEX_KEY": b64(), "HY_PII_PSEUDONYM_KEY": b64()}, "id:"),
        ({"HY_PII_KEYS": f"k1:{b64()}", "HY_PII_INDEX_KEY": "!!", "HY_PII_PSEUDONYM_KEY": b64()}, "INDEX"),
        ({"HY_ENV": "production"}, "HY_ENV=production needs"),
    ],
)
def test_settings_refuse_what_is_wrong(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        crypto_settings(env)


def test_settings_refuse_one_key_used_twice() -> None:
    key = b64()
    with pytest.raises(ValueError, match="different keys"):
        crypto_settings({"HY_PII_KEYS": f"k1:{key}", "HY_PII_INDEX_KEY": key, "HY_PII_PSEUDONYM_KEY": b64()})


def test_development_key_file_is_created_once_0600_and_stable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    s = crypto_settings({"HY_DATA_DIR": str(tmp_path / "data")})
    assert s == CryptoSettings(dev_key_file=tmp_path / "data" / "pii.key")
    with caplog.at_level(logging.WARNING, logger="app.security.crypto"):
        first = KeyRing.from_settings(s)
    assert "HY_PII_KEYS not set" in caplog.text
    path = tmp_path / "data" / "pii.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = KeyRing.from_settings(s)  # another process, same file: same keys
    blob = first.encrypt(ID_NUMBER, ID)
    assert again.decrypt(ID_NUMBER, blob) == ID and again.id_number_index(ID) == first.id_number_index(ID)
    assert [p.name for p in path.parent.iterdir()] == ["pii.key"]  # no temporary file left


def test_masking_policy_by_role() -> None:
    def actor(*roles: str) -> Actor:
        return Actor(user_id=1, username="u", roles=frozenset(roles))

    for role in ("clerk", "doctor", "nurse", "technician", "patient", "sys_admin"):
        assert shown(actor(role), "id_number", ID) == "110***********002X"
        assert shown(actor(role), "phone", PHONE_NO) == "138****5678"
    for role in ("dept_head", "dept_admin", "display"):
        assert shown(actor(role), "id_number", ID) is None and shown(actor(role), "phone", PHONE_NO) is None
    assert visibility(actor("dept_head", "clerk"), "phone") is Visibility.MASKED  # the most the roles allow
    assert all(
        visibility(actor(r), f) < Visibility.FULL for r in ("sys_admin", "clerk") for f in ("id_number", "phone")
    )
    assert shown(actor("clerk"), "id_number", None) is None and shown(actor("clerk"), "unknown", "x") is None


def test_log_lines_lose_id_and_mobile_numbers() -> None:
    assert scrub(f"patient {ID} phone {PHONE_NO} order 20261130000123456789") == (
        "patient 110***********002X phone 138****5678 order 20261130000123456789"
    )
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "id %s tel %s", (ID.lower(), PHONE_NO), None)
    assert PiiLogFilter().filter(record)
    assert record.getMessage() == "id 110***********002X tel 138****5678"
