"""REDIS_URL: the one-server forms pass through to redis-py, the Sentinel form is parsed here, and
a bad URL is one clear line at start-up that never repeats a password. And the Sentinel client
(app/services.py) without a server: its pool, and its master discovery under concurrency."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection
from redis.asyncio.sentinel import Sentinel, SentinelManagedSSLConnection

from app.__main__ import main
from app.redis_url import RedisUrlError, SentinelUrl, parse_redis_url
from app.services import BlockingSentinelPool, Sentinels, create_redis
from app.settings import load_settings


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://:secret@redis.example:6380/2",
        "redis://user:secret@redis.example",  # secret-scan: allow - a made-up password in a URL-parsing test
        "rediss://redis.example:6380/0?ssl_cert_reqs=required",
        "unix:///run/redis.sock?db=1",
        "REDIS://localhost",
    ],
)
def test_one_server_urls_are_left_to_redis_py(url: str) -> None:
    assert parse_redis_url(url) is None


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis+sentinel://s1:26379,s2:26380,s3:26381/huiyue/0",
            SentinelUrl((("s1", 26379), ("s2", 26380), ("s3", 26381)), "huiyue", 0),
        ),
        # the port defaults to Sentinel's, the database to 0; a trailing slash is fine
        ("redis+sentinel://s1,s2:26390/huiyue", SentinelUrl((("s1", 26379), ("s2", 26390)), "huiyue")),
        ("redis+sentinel://s1/huiyue/", SentinelUrl((("s1", 26379),), "huiyue")),
        ("redis+sentinel://10.0.0.1:5000/m/15", SentinelUrl((("10.0.0.1", 5000),), "m", 15)),
        ("redis+sentinel://[::1]:26379,[fe80::2]/m", SentinelUrl((("::1", 26379), ("fe80::2", 26379)), "m")),
        # credentials before @ are the Redis servers', percent-decoded
        (
            "redis+sentinel://:p%40ss%3Aw%2Frd@s1:26379/huiyue/1",
            SentinelUrl((("s1", 26379),), "huiyue", 1, password="p@ss:w/rd"),
        ),
        (
            "redis+sentinel://app:pw@s1/huiyue",
            SentinelUrl((("s1", 26379),), "huiyue", username="app", password="pw"),
        ),
        # the Sentinels' own credentials, when they have some
        (
            "redis+sentinel://:pw@s1,s2/huiyue/0?sentinel_password=sp%26x&sentinel_username=watch",
            SentinelUrl(
                (("s1", 26379), ("s2", 26379)),
                "huiyue",
                password="pw",
                sentinel_username="watch",
                sentinel_password="sp&x",
            ),
        ),
        ("redis+sentinel://s1/my%20master", SentinelUrl((("s1", 26379),), "my master")),
    ],
)
def test_sentinel_urls(url: str, expected: SentinelUrl) -> None:
    assert parse_redis_url(url) == expected


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("127.0.0.1:6379", "unknown scheme (none)"),
        ("http://redis.example/0", "unknown scheme http://"),
        ("sentinel://s1:26379/huiyue", "unknown scheme sentinel://"),
        ("valkey+sentinel://s1/huiyue", "unknown scheme valkey+sentinel://"),
        ("rediss+sentinel://s1/huiyue?ssl_ca_certs=/no/such/ca.pem", "ssl_ca_certs: no file"),
        ("rediss+sentinel://s1/huiyue?ssl_cert_reqs=optional", "required or none"),
        ("rediss+sentinel://s1/huiyue?ssl_check_hostname=yes", "1 or 0"),
        ("rediss+sentinel://s1/huiyue?ssl_certfile=" + __file__, "go together"),
        ("redis+sentinel://s1/huiyue?ssl_cert_reqs=none", "need rediss+sentinel"),
        ("redis://:secret@redis.example:port/0", "port is not a number"),
        ("redis://redis.example/0?socket_timeout=soon", "socket_timeout"),
        ("redis+sentinel://s1:26379", "name the master"),
        ("redis+sentinel://s1:26379/", "name the master"),
        ("redis+sentinel:///huiyue", "empty entry"),
        ("redis+sentinel://s1,,s2/huiyue", "empty entry"),
        ("redis+sentinel://s1:/huiyue", "port missing"),
        ("redis+sentinel://s1:26x79/huiyue", "bad Sentinel port"),
        ("redis+sentinel://s1:70000/huiyue", "bad Sentinel port"),
        ("redis+sentinel://s1:0/huiyue", "bad Sentinel port"),
        ("redis+sentinel://:26379/huiyue", "no host"),
        ("redis+sentinel://[::1/huiyue", "not a URL"),
        ("redis+sentinel://s1/huiyue/zero", "database must be a number"),
        ("redis+sentinel://s1/huiyue/0/extra", "more segments"),
        ("redis+sentinel://s1/huiyue/0?password=x", "unknown option 'password'"),
        ("redis+sentinel://s1/huiyue/0?sentinel_password=a&sentinel_password=b", "given twice"),
        ("redis+sentinel://s1/huiyue/0?sentinel_password", "malformed"),
        ("redis+sentinel://s1/huiyue#frag", "fragment"),
        ("redis+sentinel://secret@s1/huiyue", ":password@"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, complaint: str) -> None:
    with pytest.raises(RedisUrlError) as caught:
        parse_redis_url(url)
    message = str(caught.value)
    assert message.startswith("REDIS_URL: ") and complaint in message, message
    assert "secret" not in message


def test_a_bad_url_stops_the_settings_and_the_cli_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(RedisUrlError, match="name the master"):
        load_settings({"REDIS_URL": "redis+sentinel://:secret@s1:26379"})
    assert load_settings({"REDIS_URL": "redis+sentinel://s1/huiyue"}).redis.url == "redis+sentinel://s1/huiyue"
    monkeypatch.setenv("REDIS_URL", "redis+sentinel://:secret@s1:26379,s2:26379")
    with pytest.raises(SystemExit) as exited:
        main(["migrate"])  # before any server is started or any connection made
    text = str(exited.value.code)
    assert text.startswith("configuration: REDIS_URL: name the master") and "secret" not in text
    assert "\n" not in text


async def test_create_redis_builds_a_blocking_pool_on_the_sentinels_primary() -> None:
    url = "redis+sentinel://:pw@127.0.0.1:1,127.0.0.1:2/huiyue/3?sentinel_password=sp"
    client = create_redis(url, 7, 1.5)  # connects to nothing until the first command
    try:
        pool = client.connection_pool
        assert isinstance(pool, BlockingSentinelPool)
        assert isinstance(pool, aioredis.BlockingConnectionPool)  # waits for a free connection
        assert pool.max_connections == 7 and pool.timeout == 1.5
        assert pool.service_name == "huiyue" and pool.is_master
        kw = pool.connection_kwargs
        assert (kw["db"], kw["password"], kw["socket_timeout"], kw["socket_connect_timeout"]) == (3, "pw", 1.5, 1.5)
        sentinels = pool.sentinel_manager.sentinels
        assert [(s.connection_pool.connection_kwargs["port"]) for s in sentinels] == [1, 2]
        assert all(s.connection_pool.connection_kwargs["password"] == "sp" for s in sentinels)
        assert "pw" not in repr(parse_redis_url(url)) and "sp" not in repr(parse_redis_url(url))
    finally:
        await client.aclose()  # closes the Sentinel clients too


def test_tls_sentinel_urls() -> None:
    """rediss+sentinel://: the same Sentinels, with TLS for them and the servers (app/redis_url.py)."""
    here = __file__  # any existing file stands for a certificate here; the TLS test uses real ones
    url = parse_redis_url(f"rediss+sentinel://:pw@s1,s2:26390/huiyue/2?ssl_ca_certs={here}&sentinel_password=sp")
    assert url == SentinelUrl(
        (("s1", 26379), ("s2", 26390)),
        "huiyue",
        2,
        password="pw",
        sentinel_password="sp",
        tls={"ssl": True, "ssl_ca_certs": here, "ssl_cert_reqs": "required", "ssl_check_hostname": True},
    )
    bare = parse_redis_url("rediss+sentinel://s1/m?ssl_cert_reqs=none")
    assert bare is not None and bare.tls == {"ssl": True, "ssl_cert_reqs": "none", "ssl_check_hostname": False}
    mutual = parse_redis_url(f"rediss+sentinel://s1/m?ssl_certfile={here}&ssl_keyfile={here}&ssl_check_hostname=0")
    assert mutual is not None and mutual.tls is not None
    tls = mutual.tls
    assert (tls["ssl_certfile"], tls["ssl_keyfile"], tls["ssl_check_hostname"]) == (here, here, False)
    plain = parse_redis_url("redis+sentinel://s1/m")
    assert plain is not None and plain.tls is None


async def test_create_redis_speaks_tls_to_the_sentinels_and_the_primary() -> None:
    client = create_redis(f"rediss+sentinel://:pw@127.0.0.1:1/huiyue?ssl_ca_certs={__file__}", 3, 1.0)
    try:
        pool = client.connection_pool
        assert issubclass(pool.connection_class, SentinelManagedSSLConnection)
        assert pool.connection_kwargs["ssl_ca_certs"] == __file__
        (sentinel,) = pool.sentinel_manager.sentinels
        assert issubclass(sentinel.connection_pool.connection_class, SSLConnection)
        assert sentinel.connection_pool.connection_kwargs["ssl_ca_certs"] == __file__
    finally:
        await client.aclose()


def _master_state(ip: str, down: bool) -> dict[str, Any]:
    return {"ip": ip, "port": 6379, "is_master": True, "is_sdown": down, "is_odown": down, "num-other-sentinels": 2}


async def _discover_concurrently(cls: type[Sentinel]) -> tuple[list[object], list[object], set[tuple[str, int]]]:
    """Ten discoveries at once while the first Sentinel still sees the old primary down and the
    others answer with the new one at different speeds (a failover under load)."""
    sentinels = cls([("127.0.0.1", 1), ("127.0.0.1", 2), ("127.0.0.1", 3)])  # type: ignore[no-untyped-call]
    before = list(sentinels.sentinels)
    answers = iter([0.01, 0.03, 0.02, 0.05, 0.04] * 10)

    def answering(state: dict[str, Any], slow: bool) -> Any:
        async def sentinel_masters() -> dict[str, Any]:
            await asyncio.sleep(next(answers) if slow else 0)
            return {"huiyue": state}

        return sentinel_masters

    first, second, third = before
    first.sentinel_masters = answering(_master_state("10.0.0.1", down=True), slow=False)  # type: ignore[attr-defined]
    for s in (second, third):
        s.sentinel_masters = answering(_master_state("10.0.0.2", down=False), slow=True)  # type: ignore[attr-defined]
    found = await asyncio.gather(*(sentinels.discover_master("huiyue") for _ in range(10)))
    after = list(sentinels.sentinels)
    await sentinels.aclose()
    return before, after, set(found)


async def test_concurrent_discoveries_keep_every_sentinel() -> None:
    before, after, found = await _discover_concurrently(Sentinels)
    assert found == {("10.0.0.2", 6379)}
    assert sorted(map(id, after)) == sorted(map(id, before))  # reordered, none lost or doubled
    assert after[0] is not before[0]  # one that answered is asked first next time


async def test_redis_pys_own_discovery_loses_sentinels_under_concurrency() -> None:
    """Why `Sentinels` exists: if this starts failing, redis-py fixed its swap and the override
    can go."""
    before, after, _ = await _discover_concurrently(Sentinel)
    assert sorted(map(id, after)) != sorted(map(id, before))
