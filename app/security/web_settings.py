"""Web transport settings: TLS certificate paths, who may frame the pages, which origins CORS lets
in, HSTS. Read from a mapping of environment variables (the settings module hands them over:
nothing here reads os.environ).

    HY_TLS_CERT        PEM server certificate (chain), e.g. .data/tls/server.pem; unset: plain HTTP
    HY_TLS_KEY         its PEM private key
    HY_TLS_CA          PEM CA whose client certificates are accepted (mutual TLS); optional
    HY_FRAME_ANCESTORS who may embed the pages in a frame (CSP frame-ancestors), space or comma
                       separated: 'self' (default), 'none', or origins such as https://his.example:8443
                       (the clinic page is embedded in the HIS doctor workstation)
    HY_CORS_ORIGINS    origins allowed to call the API from their own pages (CORS), space or comma
                       separated, e.g. https://his.example; unset: CORS closed (no Access-Control-*
                       headers, preflights answered 403)
    HY_HSTS_MAX_AGE_S  Strict-Transport-Security max-age sent over TLS (default one year; 0: none)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import msgspec

# scheme://host[:port] (host: a name, *.name, an IPv4 address or a bracketed IPv6 address)
_HOST = r"(?:\*\.)?[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\]"
_ORIGIN = re.compile(rf"^(?:https?)://(?:{_HOST})(?::[0-9]{{1,5}})?$")
_KEYWORDS = {"self": "'self'", "'self'": "'self'", "none": "'none'", "'none'": "'none'"}


class WebSecuritySettings(msgspec.Struct, frozen=True):
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None  # client CA for mutual TLS
    frame_ancestors: tuple[str, ...] = ("'self'",)
    cors_origins: tuple[str, ...] = ()
    hsts_max_age_s: int = 365 * 24 * 3600

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


def _items(raw: str) -> list[str]:
    return [item for item in re.split(r"[\s,]+", raw.strip()) if item]


def _origin(name: str, item: str, *, wildcard: bool) -> str:
    origin = item.lower().rstrip("/")
    if not _ORIGIN.match(origin) or (not wildcard and "*" in origin):
        raise ValueError(f"{name}: {item!r} is not an origin like https://his.example or https://his.example:8443")
    return origin


def parse_frame_ancestors(raw: str) -> tuple[str, ...]:
    items = _items(raw)
    if not items:
        return ("'self'",)
    out = [_KEYWORDS.get(item.lower()) or _origin("HY_FRAME_ANCESTORS", item, wildcard=True) for item in items]
    if "'none'" in out and len(out) > 1:
        raise ValueError("HY_FRAME_ANCESTORS: 'none' cannot be combined with other sources")
    return tuple(dict.fromkeys(out))


def parse_cors_origins(raw: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_origin("HY_CORS_ORIGINS", item, wildcard=False) for item in _items(raw)))


def _path(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name, "").strip()
    return Path(raw).expanduser() if raw else None


def web_security_settings(env: Mapping[str, str]) -> WebSecuritySettings:
    cert, key, ca = _path(env, "HY_TLS_CERT"), _path(env, "HY_TLS_KEY"), _path(env, "HY_TLS_CA")
    if (cert is None) != (key is None):
        raise ValueError("HY_TLS_CERT and HY_TLS_KEY go together: set both (TLS) or neither (plain HTTP)")
    if ca is not None and cert is None:
        raise ValueError("HY_TLS_CA (mutual TLS) needs HY_TLS_CERT and HY_TLS_KEY")
    raw_age = env.get("HY_HSTS_MAX_AGE_S", "").strip()
    try:
        hsts = int(raw_age) if raw_age else 365 * 24 * 3600
    except ValueError:
        raise ValueError(f"HY_HSTS_MAX_AGE_S must be an integer, got {raw_age!r}") from None
    if hsts < 0:
        raise ValueError("HY_HSTS_MAX_AGE_S must not be negative")
    return WebSecuritySettings(
        tls_cert=cert,
        tls_key=key,
        tls_ca=ca,
        frame_ancestors=parse_frame_ancestors(env.get("HY_FRAME_ANCESTORS", "")),
        cors_origins=parse_cors_origins(env.get("HY_CORS_ORIGINS", "")),
        hsts_max_age_s=hsts,
    )
