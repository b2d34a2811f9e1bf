"""Every Redis key name, built in one place.

All keys of one hospital-day share the hash tag ``{hospital:YYYY-MM-DD}``, so every script that
works on one day (a same-day bundle grab, a lock, the day's reconcile) touches a single Redis
Cluster hash slot. The prefix (default ``hy``) lets tests and several deployments share a server.
"""

from __future__ import annotations

from datetime import date

import msgspec


class DayKeys(msgspec.Struct, frozen=True):
    """Key builder for one hospital-day."""

    prefix: str
    hospital_id: str
    day: date

    @property
    def tag(self) -> str:
        return f"{self.prefix}:{{{self.hospital_id}:{self.day.isoformat()}}}"

    def slot(self, slot_id: int) -> str:
        """Hash: s, e (epoch s), r (resource), d (department), st (open|closed), cap, b (booked), o (open pool left),
        q:<channel> (reserved places left), lk:* and lk:<channel> (lock counts)."""
        return f"{self.tag}:slot:{slot_id}"

    def resource_index(self, resource_id: str) -> str:
        """Sorted set of the resource's slot ids that day, scored by start (epoch s)."""
        return f"{self.tag}:res:{resource_id}"

    def patient(self, patient_id: int) -> str:
        """Hash: slot id -> "start|end|exam|hold_id|state" (state h = held, b = booked)."""
        return f"{self.tag}:pt:{patient_id}"

    def hold(self, hold_id: str) -> str:
        """Hash: patient, channel, exp (epoch ms), items ("slot_id:pool_field,...")."""
        return f"{self.tag}:hold:{hold_id}"

    @property
    def holds(self) -> str:
        """Sorted set of the day's live holds, scored by expiry (epoch ms)."""
        return f"{self.tag}:holds"

    @property
    def members(self) -> str:
        """Set of every key of the day, so reconcile can replace the day whole."""
        return f"{self.tag}:keys"

    def grid_seq(self, department_id: str) -> str:
        """Counter numbering the live-grid events of one department that day."""
        return f"{self.tag}:gseq:{department_id}"

    @property
    def rebuilding(self) -> tuple[str, str]:
        """A day's rebuild window (app/booking/lua/reconcile.lua): the counter of rebuilds under
        way, and the list of changes made meanwhile that follow a PostgreSQL commit (confirms,
        cancels), which each rebuild replays onto its snapshot. Not among the `members`."""
        return f"{self.tag}:rb", f"{self.tag}:rblog"

    @property
    def version(self) -> str:
        """Counter bumped by every reconcile of the day."""
        return f"{self.tag}:ver"

    def queue(self, resource_id: str) -> tuple[str, str, str, str]:
        """A room's queue that day (app/booking/lua/queue.lua): the waiting line (list), the entries
        (hash), the event counter, the loaded marker. Not among the day's `members`: rebuilding the
        slot index leaves the queues alone."""
        base = f"{self.tag}:q:{resource_id}"
        return (f"{base}:line", f"{base}:ent", f"{base}:seq", f"{base}:ok")


class KeyBuilder(msgspec.Struct, frozen=True):
    prefix: str
    hospital_id: str

    def day(self, day: date) -> DayKeys:
        return DayKeys(self.prefix, self.hospital_id, day)

    @property
    def index_server(self) -> str:
        """The run id of the Redis server the hospital's index was last rebuilt on, whole
        (app/booking/reconcile.py, `Reconciler.reconcile_new_server`)."""
        return f"{self.prefix}:index-server:{self.hospital_id}"

    def session(self, token_hash: str) -> str:
        return f"{self.prefix}:sess:{token_hash}"

    @property
    def events_prefix(self) -> str:
        """What every pub/sub channel of the hospital starts with (the hub subscribes to it)."""
        return f"{self.prefix}:ev:{self.hospital_id}:"

    def events_channel(self, topic: str) -> str:
        """Pub/sub channel for live screens, e.g. topic 'slots:2026-12-01'."""
        return f"{self.prefix}:ev:{self.hospital_id}:{topic}"
