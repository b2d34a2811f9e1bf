"""Identity checks for self-service (自助机 / 微信 H5): a patient gives an ID number and name; the
number must pass its GB 11643 checksum, and the hospital's patient index (the HIS, or the
insurance system) must know that person. The look-up is an adapter, so a hospital plugs its own
in; `DemoHisAdapter` answers from the platform's own patient table."""

from __future__ import annotations

from typing import Protocol

import asyncpg
import msgspec

from app.db.pool import database_errors
from app.security.crypto import KeyRing, pii_keys
from app.security.idcard import is_valid_id_number, normalize_id_number


class PatientIdentity(msgspec.Struct, frozen=True):
    patient_id: int
    name: str


class IdentityAdapter(Protocol):
    async def look_up(self, id_number: str, name: str) -> PatientIdentity | None: ...


class DemoHisAdapter:
    """The demo hospital's "HIS": the patient table itself, matched on the ID number's blind index
    (the number is stored encrypted) and the name."""

    def __init__(self, pool: asyncpg.Pool, keys: KeyRing | None = None) -> None:
        self.pool = pool
        self.keys = keys if keys is not None else pii_keys()

    async def look_up(self, id_number: str, name: str) -> PatientIdentity | None:
        async with database_errors():
            row = await self.pool.fetchrow(
                "SELECT id, name FROM patient WHERE id_number_idx = $1 AND name = $2 ORDER BY id LIMIT 1",
                self.keys.id_number_index(id_number),
                name,
            )
        return PatientIdentity(int(row["id"]), row["name"]) if row else None


def checked_id_number(raw: str) -> str | None:
    """The normalised number, or None when it fails the format, date or checksum of GB 11643."""
    if not is_valid_id_number(raw):
        return None
    return normalize_id_number(raw)
