"""REDIS_URL: one Redis server, or the Sentinels that know which server is the primary.

Two forms:

* ``redis://[[user]:password@]host[:port][/db]`` (also ``rediss://`` and ``unix://``): one server,
  as redis-py reads it (its query options included).
* ``redis+sentinel://[[user]:password@]host1[:port1][,host2[:port2]...]/<master-name>[/<db>]
  [?sentinel_password=...&sentinel_username=...]``: the Sentinels (port 26379 when left out);
  the client asks them for the current primary of ``<master-name>`` and follows it through a
  failover. The user and password before ``@`` are those of the Redis servers (the primary and its
  replicas, ``requirepass`` / ``masterauth``); ``sentinel_password`` (and ``sentinel_username``)
  only when the Sentinels themselves require one. Percent-encode ``@ : , / ? # %`` in a password.
* ``rediss+sentinel://…``: the same over TLS, to the Sentinels and to the servers alike (Redis's
  ``tls-port``, ``tls-replication``; Sentinels configured with ``tls-port`` too). More options:
  ``ssl_ca_certs`` (the CA file that signed the servers' certificates; the system's store when left
  out), ``ssl_certfile`` and ``ssl_keyfile`` (this client's certificate, when the servers ask for
  one: ``tls-auth-clients``), ``ssl_cert_reqs`` (``required``, the default, or ``none``: no check
  of the servers' certificates, for a test bench only) and ``ssl_check_hostname`` (``1``, the
  default, or ``0``: the certificates must then name the addresses the Sentinels announce).

`parse_redis_url` checks either form once, at start-up (`app.settings.load_settings`), so a bad URL
stops the process with one line naming REDIS_URL — never a password, never a stack trace for a user.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from redis.asyncio.connection import parse_url

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_TLS_SCHEME = "rediss+sentinel"
SENTINEL_PORT = 26379
_SENTINEL_OPTIONS = frozenset({"sentinel_username", "sentinel_password"})
_TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
_TLS_OPTIONS = frozenset({*_TLS_FILES, "ssl_cert_reqs", "ssl_check_hostname"})
_FORMS = (
    "redis://host:6379/0, rediss://…, unix://…, "
    "or redis+sentinel://host1:26379,host2:26379/<master-name>/0 (rediss+sentinel:// over TLS)"
)


class RedisUrlError(ValueError):
    """REDIS_URL cannot be used; the message names what is wrong and never repeats a password."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"REDIS_URL: {problem}")


@dataclass(frozen=True)
class SentinelUrl:
    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # the Redis servers'
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    # rediss+sentinel://: redis-py's SSL connection arguments, for the Sentinels and the servers
    # alike (ssl=True and the ssl_* options given); None for plain TCP.
    tls: dict[str, Any] | None = None


def parse_redis_url(url: str) -> SentinelUrl | None:
    """The Sentinel form parsed, or None for a one-server URL (checked here, used by redis-py)."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme in (SENTINEL_SCHEME, SENTINEL_TLS_SCHEME):
        return _parse_sentinel(url, tls=scheme == SENTINEL_TLS_SCHEME)
    if scheme.endswith("+sentinel"):
        raise RedisUrlError(f"unknown scheme {scheme}://; expected {_FORMS}")
    if scheme not in ("redis", "rediss", "unix"):
        raise RedisUrlError(f"unknown scheme {scheme + '://' if scheme else '(none)'}; expected {_FORMS}")
    try:
        parse_url(url)
    except (ValueError, TypeError) as exc:
        # A port that is not a number may be a piece of a password with an unencoded "/" in it:
        # never repeat it. redis-py's other messages name an option, not its value.
        text = str(exc)
        why = "the port is not a number" if "port" in text.lower() else text[:120]
        raise RedisUrlError(f"not a usable {scheme}:// URL: {why} (percent-encode @ : / in a password)") from None
    return None


def _parse_sentinel(url: str, *, tls: bool) -> SentinelUrl:
    try:
        parts = urlsplit(url)
    except ValueError:
        raise RedisUrlError("not a URL (check brackets around IPv6 addresses)") from None
    if parts.fragment:
        raise RedisUrlError("no #fragment expected")
    userinfo, at, hosts = parts.netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) or None
        if not colon and username:
            # A lone word before @ is almost always a password missing its leading colon.
            raise RedisUrlError("write the password as :password@ (or user:password@)")
    sentinels = tuple(_host_port(h) for h in hosts.split(","))

    path = [unquote(p) for p in parts.path.split("/")[1:]]
    if path and path[-1] == "":
        path.pop()  # a trailing slash
    if not path or not path[0]:
        raise RedisUrlError("name the master: redis+sentinel://host1:26379,host2:26379/<master-name>[/<db>]")
    if len(path) > 2:
        raise RedisUrlError("the path is /<master-name>[/<db>]; found more segments")
    db = 0
    if len(path) == 2:
        if not path[1].isdigit():
            raise RedisUrlError(f"the database must be a number, got {path[1][:20]!r}")
        db = int(path[1])

    try:
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise RedisUrlError("the query string is malformed") from None
    known = _SENTINEL_OPTIONS | _TLS_OPTIONS if tls else _SENTINEL_OPTIONS
    options: dict[str, str] = {}
    for key, value in query:
        if key not in known:
            allowed = ", ".join(sorted(known))
            more = "" if tls else "; the ssl_* options need rediss+sentinel://"
            raise RedisUrlError(f"unknown option {key[:40]!r} (the Sentinel form takes {allowed}{more})")
        if key in options:
            raise RedisUrlError(f"option {key!r} given twice")
        options[key] = value
    return SentinelUrl(
        sentinels=sentinels,
        master=path[0],
        db=db,
        username=username,
        password=password,
        sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password") or None,
        tls=_tls_arguments(options) if tls else None,
    )


def _tls_arguments(options: dict[str, str]) -> dict[str, Any]:
    """redis-py's SSL connection arguments from the URL's ssl_* options, checked here: a file that
    is not there or a mode that does not exist stops the process at start-up, not at the first
    command."""
    out: dict[str, Any] = {"ssl": True}
    for name in _TLS_FILES:
        if name in options:
            path = options[name]
            if not path or not os.path.isfile(path):
                raise RedisUrlError(f"{name}: no file {path[:200]!r}")
            out[name] = path
    if ("ssl_certfile" in out) != ("ssl_keyfile" in out):
        raise RedisUrlError("ssl_certfile and ssl_keyfile go together (this client's certificate and its key)")
    reqs = options.get("ssl_cert_reqs", "required")
    if reqs not in ("required", "none"):
        raise RedisUrlError(f"ssl_cert_reqs is required or none, got {reqs[:20]!r}")
    out["ssl_cert_reqs"] = reqs
    check = options.get("ssl_check_hostname", "1")
    if check not in ("1", "0"):
        raise RedisUrlError(f"ssl_check_hostname is 1 or 0, got {check[:20]!r}")
    # No certificate check means no name to check either (Python's ssl refuses the pair).
    out["ssl_check_hostname"] = check == "1" and reqs == "required"
    return out


def _host_port(text: str) -> tuple[str, int]:
    if not text:
        raise RedisUrlError("list the Sentinels as host1:26379,host2:26379 (an empty entry was found)")
    if text.startswith("["):  # [IPv6]:port
        host, close, rest = text[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise RedisUrlError(f"bad Sentinel address {text[:60]!r}")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.partition(":")
        if colon and not port_text:
            raise RedisUrlError(f"bad Sentinel address {text[:60]!r}: port missing after ':'")
    host = unquote(host)
    if not host:
        raise RedisUrlError(f"bad Sentinel address {text[:60]!r}: no host")
    if not port_text:
        return host, SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise RedisUrlError(f"bad Sentinel port {port_text[:20]!r} for {host[:60]}")
    return host, int(port_text)
