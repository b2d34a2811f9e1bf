"""Outbound settings (HL7 peers, webhook delivery, retries), read from a mapping of environment
variables that app/settings.py hands over: nothing here reads os.environ.

HY_HL7_PEERS lists the HL7 receivers, comma-separated, each `name=host:port` followed by optional
`;key=value` options: app (MSH-5), facility (MSH-6), charset (UTF-8 | GB18030), timeout (seconds):

    HY_HL7_PEERS='ris=10.1.2.3:2576;app=RIS;facility=RAD,emr=10.1.2.9:6661;app=EMR;charset=GB18030'
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import msgspec

from app.envvars import env_float
from app.integrations.hl7.siu import CHARSETS, Peer

_NAME = re.compile(r"^[a-z0-9_-]{1,32}$")


class OutboundSettings(msgspec.Struct, frozen=True):
    peers: tuple[Peer, ...] = ()
    sending_facility: str = "H1"  # MSH-4 and the PID-3 assigning authority
    processing_id: str = "P"  # MSH-11: P production, T training, D debugging
    timezone: str = "Asia/Shanghai"  # times in the messages, with their offset
    batch_size: int = 20  # messages claimed per destination and round (one per order)
    max_rounds: int = 50  # rounds per destination and call
    retry_base_s: float = 5.0
    retry_cap_s: float = 900.0
    retry_jitter: float = 0.2
    max_refusals: int = 5  # AE / AR or HTTP 4xx answers before a message is parked as failed
    webhook_timeout_s: float = 10.0
    interval_s: float = 2.0  # the loop's pause between calls


def parse_peers(raw: str) -> tuple[Peer, ...]:
    """Peers from HY_HL7_PEERS (see the module docstring); ValueError says what is wrong."""
    peers: list[Peer] = []
    for item in (p.strip() for p in raw.split(",")):
        if not item:
            continue
        head, *options = [part.strip() for part in item.split(";")]
        name, sep, address = head.partition("=")
        host, _, port = address.rpartition(":")
        if not sep or not _NAME.match(name) or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"HY_HL7_PEERS: expected name=host:port (name a-z0-9_-), got {head!r}")
        opts: dict[str, str] = {}
        for option in options:
            key, eq, value = option.partition("=")
            if not eq or key not in ("app", "facility", "charset", "timeout"):
                raise ValueError(
                    f"HY_HL7_PEERS: peer {name}: unknown option {option!r} (app, facility, charset, timeout)"
                )
            opts[key] = value
        charset = opts.get("charset", "UTF-8").upper()
        if charset not in CHARSETS:
            raise ValueError(
                f"HY_HL7_PEERS: peer {name}: charset must be one of {', '.join(CHARSETS)}, got {charset!r}"
            )
        try:
            timeout = float(opts.get("timeout", "10"))
        except ValueError:
            raise ValueError(f"HY_HL7_PEERS: peer {name}: timeout must be seconds, got {opts['timeout']!r}") from None
        if any(p.name == name for p in peers):
            raise ValueError(f"HY_HL7_PEERS: peer {name} is listed twice")
        peers.append(
            Peer(name, host, int(port), opts.get("app", name.upper()), opts.get("facility", ""), charset, timeout)
        )
    return tuple(peers)


def outbound_settings(env: Mapping[str, str]) -> OutboundSettings:
    """Build and check the outbound settings; a peer list that cannot work is refused at start-up."""
    settings = OutboundSettings(
        peers=parse_peers(env.get("HY_HL7_PEERS", "")),
        sending_facility=env.get("HY_HL7_FACILITY", "") or env.get("HY_HOSPITAL_ID", "h1").upper(),
        processing_id=env.get("HY_HL7_PROCESSING_ID", "P") or "P",
        timezone=env.get("HY_TIMEZONE", "Asia/Shanghai") or "Asia/Shanghai",
        batch_size=int(env_float(env, "HY_OUTBOUND_BATCH", 20)),
        max_rounds=int(env_float(env, "HY_OUTBOUND_MAX_ROUNDS", 50)),
        retry_base_s=env_float(env, "HY_OUTBOUND_RETRY_BASE_S", 5.0),
        retry_cap_s=env_float(env, "HY_OUTBOUND_RETRY_CAP_S", 900.0),
        max_refusals=int(env_float(env, "HY_OUTBOUND_MAX_REFUSALS", 5)),
        webhook_timeout_s=env_float(env, "HY_WEBHOOK_TIMEOUT_S", 10.0),
        interval_s=env_float(env, "HY_OUTBOUND_INTERVAL_S", 2.0),
    )
    if settings.processing_id not in ("P", "T", "D"):
        raise ValueError(f"HY_HL7_PROCESSING_ID must be P, T or D, got {settings.processing_id!r}")
    if settings.batch_size < 1 or settings.max_rounds < 1 or settings.max_refusals < 1:
        raise ValueError("HY_OUTBOUND_BATCH, HY_OUTBOUND_MAX_ROUNDS, HY_OUTBOUND_MAX_REFUSALS must be >= 1")
    if not 0 < settings.retry_base_s <= settings.retry_cap_s:
        raise ValueError("HY_OUTBOUND_RETRY_BASE_S must be > 0 and at most HY_OUTBOUND_RETRY_CAP_S")
    if settings.webhook_timeout_s <= 0 or settings.interval_s <= 0:
        raise ValueError("HY_WEBHOOK_TIMEOUT_S and HY_OUTBOUND_INTERVAL_S must be > 0")
    return settings
