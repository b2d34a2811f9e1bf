"""Who is calling: the authenticated principal every service function receives."""

from __future__ import annotations

import msgspec


class Actor(msgspec.Struct, frozen=True):
    user_id: int | None
    username: str
    roles: frozenset[str]
    department_id: str | None = None
    patient_id: int | None = None  # set when the caller is a patient acting for himself
    terminal: str = ""
    ip: str = ""
    device_id: int | None = None  # set for a display device (role "display" with a token of its own)
    scopes: frozenset[str] = frozenset()  # what a device may show: "grid:<department>", "queue:<room>"

    @property
    def role(self) -> str:
        """The role recorded on events: the most specific one the account holds."""
        for role in ROLE_ORDER:
            if role in self.roles:
                return role
        return "system"


SYSTEM = Actor(user_id=None, username="system", roles=frozenset({"system"}))

ROLES = (
    "doctor",
    "nurse",
    "clerk",
    "technician",
    "dept_admin",
    "dept_head",
    "sys_admin",
    "auditor",
    "interface",
    "patient",
    "display",
)
ROLE_ORDER = (
    "sys_admin",
    "auditor",
    "dept_admin",
    "dept_head",
    "clerk",
    "doctor",
    "nurse",
    "technician",
    "interface",
    "patient",
    "display",
)
