"""Reading typed values from a mapping of environment variables, with a clear error naming the
variable. No imports from the app: every settings module (app/settings.py and the ones it gathers
from the packages) can use it."""

from __future__ import annotations

from collections.abc import Mapping


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


def env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


def env_flag(env: Mapping[str, str], name: str) -> bool | None:
    """1/true/yes/on or 0/false/no/off; None when unset (the caller's default applies)."""
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return None
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be 1 or 0, got {raw!r}")
