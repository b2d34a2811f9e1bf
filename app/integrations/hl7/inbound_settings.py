"""The HL7 inbound listener's settings, read from a mapping of environment variables (the settings
module hands them over: nothing here reads os.environ)."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from app.integrations.hl7.charsets import CHARSETS


class Hl7InboundSettings(msgspec.Struct, frozen=True):
    host: str = "127.0.0.1"
    port: int = 2575
    # The character set of a message whose MSH-18 is empty (an MSH-18 label, e.g. UTF-8 or GB18030).
    default_charset: str = "UTF-8"
    # The ordering department of an order with neither ORC-17 nor a known PV1-3 location ("" none:
    # such an order is refused).
    default_department: str = ""
    application: str = "HUIYUE"  # our MSH-3 in the ACKs
    idle_s: float = 300.0  # a connection silent this long is closed

    @property
    def default_codec(self) -> str:
        return CHARSETS[self.default_charset.upper()]


def hl7_inbound_settings(env: Mapping[str, str]) -> Hl7InboundSettings:
    charset = env.get("HY_HL7_CHARSET") or "UTF-8"
    if charset.upper() not in CHARSETS:
        raise ValueError(f"HY_HL7_CHARSET must be one of {sorted(CHARSETS)}, got {charset!r}")
    port = env.get("HY_HL7_PORT") or "2575"
    idle = env.get("HY_HL7_IDLE_S") or "300"
    try:
        port_no, idle_s = int(port), float(idle)
    except ValueError:
        raise ValueError(f"HY_HL7_PORT must be an integer and HY_HL7_IDLE_S a number, got {port!r}, {idle!r}") from None
    return Hl7InboundSettings(
        host=env.get("HY_HL7_HOST") or "127.0.0.1",
        port=port_no,
        default_charset=charset,
        default_department=env.get("HY_HL7_DEFAULT_DEPARTMENT", ""),
        application=env.get("HY_HL7_APPLICATION") or "HUIYUE",
        idle_s=idle_s,
    )
