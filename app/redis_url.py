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

`parse_redis_url` checks either form once, at start-up (`app.settings.load_settings`), so a bad URL
stops the process with one line naming REDIS_URL — never a password, never a stack trace for a user.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from redis.asyncio.connection import parse_url

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
_SENTINEL_OPTIONS = frozenset({"sentinel_username", "sentinel_password"})
_FORMS = "redis://host:6379/0, rediss://…, unix://…, or redis+sentinel://host1:26379,host2:26379/<master-name>/0"


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


def parse_redis_url(url: str) -> SentinelUrl | None:
    """The Sentinel form parsed, or None for a one-server URL (checked here, used by redis-py)."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme == SENTINEL_SCHEME:
        return _parse_sentinel(url)
    if scheme.endswith("+sentinel"):
        raise RedisUrlError(
            f"{scheme}:// is not supported (TLS through Sentinel is not built); use {SENTINEL_SCHEME}://"
        )
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


def _parse_sentinel(url: str) -> SentinelUrl:
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
    options: dict[str, str] = {}
    for key, value in query:
        if key not in _SENTINEL_OPTIONS:
            allowed = ", ".join(sorted(_SENTINEL_OPTIONS))
            raise RedisUrlError(f"unknown option {key[:40]!r} (the Sentinel form takes {allowed})")
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
    )


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
