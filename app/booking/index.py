"""What one hospital-day of the Redis availability index should hold, computed from PostgreSQL rows.

Pure: reconcile reads the rows (app/db/booking_repo.py), builds a DayIndex here, and hands it to
the slot store, which writes it in one atomic script.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import date

import msgspec

from app.booking.keys import DayKeys


class SlotRow(msgspec.Struct, frozen=True):
    slot_id: int
    resource_id: str
    starts_at: int  # epoch seconds
    ends_at: int
    capacity: int
    quotas: dict[str, int]
    booked: int
    status: str
    department_id: str = ""  # for the live grids: events are published per department-day


class BookedRow(msgspec.Struct, frozen=True):
    slot_id: int
    patient_id: int
    exam_code: str
    order_id: int
    pool: str  # "open" or a channel
    hold_id: str


class LockRow(msgspec.Struct, frozen=True):
    slot_id: int
    channels: list[str] | None  # None: all channels


def pool_field(pool: str) -> str:
    """The slot-hash counter a pool is kept in."""
    return "o" if pool == "open" else f"q:{pool}"


def pool_name(field: str) -> str:
    return "open" if field == "o" else field.removeprefix("q:")


class DayIndex(msgspec.Struct, frozen=True):
    day: date
    slots: list[SlotRow]
    booked: list[BookedRow]
    locks: list[LockRow]

    def slot_fields(self) -> dict[int, dict[str, str]]:
        """Per slot, the hash fields the Lua scripts read."""
        used: Counter[tuple[int, str]] = Counter((b.slot_id, b.pool) for b in self.booked)
        locks: Counter[tuple[int, str]] = Counter()
        for lock in self.locks:
            for channel in lock.channels or ["*"]:
                locks[(lock.slot_id, channel)] += 1
        out: dict[int, dict[str, str]] = {}
        for s in self.slots:
            reserved = sum(s.quotas.values())
            fields = {
                "s": str(s.starts_at),
                "e": str(s.ends_at),
                "r": s.resource_id,
                "st": s.status,
                "d": s.department_id,
                "cap": str(s.capacity),
                "b": str(s.booked),
                "o": str(max(0, s.capacity - reserved - used[(s.slot_id, "open")])),
            }
            for channel, quota in sorted(s.quotas.items()):
                fields[f"q:{channel}"] = str(max(0, quota - used[(s.slot_id, channel)]))
            out[s.slot_id] = fields
        for (slot_id, channel), count in locks.items():
            if slot_id in out:
                out[slot_id][f"lk:{channel}"] = str(count)
        return out

    def to_payload(self, keys: DayKeys) -> tuple[list[str], list[list[str | int]]]:
        """The keys to write and the reconcile script's payload ([key_index, kind, values...])."""
        new_keys: list[str] = []
        payload: list[list[str | int]] = []

        def key_index(key: str) -> int:
            new_keys.append(key)
            return len(new_keys)

        for slot_id, fields in self.slot_fields().items():
            op: list[str | int] = [key_index(keys.slot(slot_id)), "h"]
            for name, value in fields.items():
                op += [name, value]
            payload.append(op)
        by_resource: dict[str, list[SlotRow]] = defaultdict(list)
        for s in self.slots:
            by_resource[s.resource_id].append(s)
        for resource_id, rows in sorted(by_resource.items()):
            op = [key_index(keys.resource_index(resource_id)), "z"]
            for s in rows:
                op += [str(s.starts_at), str(s.slot_id)]
            payload.append(op)
        starts = {s.slot_id: (s.starts_at, s.ends_at) for s in self.slots}
        by_patient: dict[int, list[BookedRow]] = defaultdict(list)
        for b in self.booked:
            by_patient[b.patient_id].append(b)
        for patient_id, entries in sorted(by_patient.items()):
            op = [key_index(keys.patient(patient_id)), "h"]
            for b in entries:
                start, end = starts[b.slot_id]
                op += [str(b.slot_id), f"{start}|{end}|{b.exam_code}|{b.hold_id}|b|{b.order_id}"]
            payload.append(op)
        return new_keys, payload
