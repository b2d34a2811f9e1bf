"""Who sees which personal data, and how much of it: one table for the API, the exports, the pages
(which only show what the API gives them) and the logs.

| field     | patient (himself) | clerk, doctor, nurse, technician, sys_admin | anyone else |
|-----------|-------------------|---------------------------------------------|-------------|
| id_number | masked 110***********123X | masked                              | hidden      |
| phone     | masked 138****5678        | masked                              | hidden      |
| name      | masked 张*三               | masked                              | hidden      |

Nobody gets a full ID number or phone number over the API, the system administrator included: the
desk confirms an identity by typing or scanning the number into the look-up (matched through the
blind index), never by reading it back; the only full phone number that leaves the platform goes
to the SMS gateway. A role needing more (e.g. an insurance clerk) would get a row here with FULL,
and every such read is audited by the route. The statistics export carries none of these fields
(app/api/stats.py). Log lines pass through `PiiLogFilter`, which masks anything shaped like an ID
or mobile number whatever the message.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Callable

from app.security.actor import Actor
from app.security.idcard import mask_id_number, mask_name, mask_phone


class Visibility(enum.IntEnum):
    HIDDEN = 0
    MASKED = 1
    FULL = 2


_MASKED_FOR = frozenset({"patient", "clerk", "doctor", "nurse", "technician", "sys_admin"})

POLICY: dict[str, dict[str, Visibility]] = {
    field: dict.fromkeys(_MASKED_FOR, Visibility.MASKED) for field in ("id_number", "phone", "name")
}

_MASKERS: dict[str, Callable[[str], str]] = {"id_number": mask_id_number, "phone": mask_phone, "name": mask_name}


def visibility(actor: Actor, field: str) -> Visibility:
    """The most the actor's roles allow for `field` (unknown fields and roles: hidden)."""
    allowed = POLICY.get(field, {})
    return max((allowed.get(role, Visibility.HIDDEN) for role in actor.roles), default=Visibility.HIDDEN)


def shown(actor: Actor, field: str, value: str | None) -> str | None:
    """`value` as the actor may see it: in full, masked, or None (hidden, or no value)."""
    if value is None:
        return None
    seen = visibility(actor, field)
    if seen is Visibility.FULL:
        return value
    if seen is Visibility.MASKED:
        return _MASKERS[field](value)
    return None


# -- log lines -------------------------------------------------------------------------------------

# An 18-character resident ID number (or 15-digit old-style) and a mainland mobile number, not part
# of a longer run of digits (order numbers, timestamps, ids).
_ID_NUMBER = re.compile(r"(?<![0-9A-Za-z])(\d{17}[\dXx]|\d{15})(?![0-9A-Za-z])")
_MOBILE = re.compile(r"(?<!\d)(1[3-9]\d{9})(?!\d)")


def scrub(text: str) -> str:
    """`text` with ID and mobile numbers masked."""
    text = _ID_NUMBER.sub(lambda m: mask_id_number(m.group(1)), text)
    return _MOBILE.sub(lambda m: mask_phone(m.group(1)), text)


class PiiLogFilter(logging.Filter):
    """Masks ID and mobile numbers in every record's message (installed on the root handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError, KeyError):  # a malformed record: logging reports it as usual
            return True
        cleaned = scrub(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = scrub(record.exc_text)
        return True


def install_log_filter(logger: logging.Logger | None = None) -> None:
    """Add `PiiLogFilter` to every handler of `logger` (default: the root logger), once."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, PiiLogFilter) for f in handler.filters):
            handler.addFilter(PiiLogFilter())
