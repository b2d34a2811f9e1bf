"""Abuse limits: how often one account, one address or one device may try a sensitive operation
(log in, ask for or use an SMS code, a self-service identity check, a booking), counted in Redis.

Each rule is a sliding-window log (app/booking/lua/ratelimit.lua: exact, no burst at a window's
edge) under ``<prefix>:rl:<policy>:<dimension>:<digest>`` -- the identifier (a user name, a phone
number, an ID number, an address) is hashed, so no personal data sits in key names. A request is
refused (429 ``rate_limited``, problem+json with ``retry_after_s`` and a Retry-After header) when any
of its policy's rules is exhausted.

Rules of one request are separate keys, each checked and recorded atomically on its own (one key
per script call keeps every script on one Redis Cluster slot); so a request refused by one rule may
still have been counted by another. The limits are generous enough for that not to matter.

Dimensions:
- ``account``: the logged-in user; before login, the body field the policy names (user name, phone,
  ID number);
- ``ip``: the TCP peer. Behind a proxy every request has the proxy's address, so the per-address
  limits are sized for a whole hospital behind one NAT (and the other dimensions do the fine work);
- ``device``: the ``X-Device-Id`` header a kiosk or app sends -- asserted by the client, so it only
  splits traffic further (it never replaces the address limit); without the header it is skipped.

Redis down: the limits fail open (logged). The defences that matter most do not live here: the
account lockout and the SMS code's attempt limit and resend interval are in PostgreSQL.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable, Mapping

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from app.booking.keys import KeyBuilder
from app.booking.slot_store import load_script
from app.errors import AppError

logger = logging.getLogger(__name__)

DEVICE_HEADER = "x-device-id"


class RateLimited(AppError):
    code = "rate_limited"
    status = 429
    title = "操作过于频繁，请稍后再试"

    @property
    def retry_after_s(self) -> int:
        return int(self.extra.get("retry_after_s", 1))


class Rule(msgspec.Struct, frozen=True):
    dimension: str  # account | ip | device
    limit: int
    window_s: int


class Policy(msgspec.Struct, frozen=True):
    name: str
    rules: tuple[Rule, ...]
    account_field: str = ""  # before login: the body field that names the account
    message: str = ""  # the Chinese answer when refused (default: RateLimited.title)


def _rules(*rules: tuple[str, int, int]) -> tuple[Rule, ...]:
    return tuple(Rule(d, n, w) for d, n, w in rules)


DEFAULT_POLICIES: dict[str, Policy] = {
    p.name: p
    for p in (
        # The lockout (5 failures, 30 min) guards each account's password; these stop one address
        # or a script from spending the server's argon2 CPU on a flood of attempts.
        Policy(
            "login",
            _rules(("account", 10, 300), ("ip", 300, 300), ("device", 30, 300)),
            "username",
            "登录尝试过于频繁，请稍后再试",
        ),
        Policy("totp", _rules(("ip", 100, 300), ("device", 20, 300)), "", "验证尝试过于频繁，请稍后再试"),
        Policy(
            "sms_code",
            _rules(("account", 1, 60), ("account", 5, 3600), ("ip", 100, 3600), ("device", 10, 3600)),
            "phone",
            "验证码发送过于频繁，请稍后再试",
        ),
        Policy(
            "sms_login",
            _rules(("account", 10, 900), ("ip", 300, 900), ("device", 30, 900)),
            "phone",
            "验证码尝试过于频繁，请稍后再试",
        ),
        Policy(
            "identify",
            _rules(("account", 10, 900), ("ip", 300, 900), ("device", 30, 900)),
            "id_number",
            "身份核验尝试过于频繁，请稍后再试",
        ),
        Policy(
            "booking",
            _rules(("account", 60, 60), ("ip", 600, 60), ("device", 60, 60)),
            "",
            "预约操作过于频繁，请稍后再试",
        ),
    )
}


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:32]


class RateLimiter:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: KeyBuilder,
        policies: Mapping[str, Policy] | None = None,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.policies = dict(DEFAULT_POLICIES if policies is None else policies)
        self.clock_ms = clock_ms  # None: the Redis server's clock
        self.enabled = True
        self._script = redis.register_script(load_script("ratelimit"))

    def key(self, policy: str, dimension: str, identity: str) -> str:
        return f"{self.keys.prefix}:rl:{policy}:{dimension}:{_digest(identity)}"

    async def hit(self, name: str, *, account: str = "", ip: str = "", device: str = "") -> None:
        """Count one attempt under policy `name`, or raise RateLimited when a rule is exhausted."""
        policy = self.policies.get(name)
        if policy is None:
            raise ValueError(f"no rate-limit policy {name!r}")
        if not self.enabled:
            return
        identities = {"account": account, "ip": ip, "device": device}
        now = self.clock_ms() if self.clock_ms is not None else 0
        checks = [(rule, identities[rule.dimension]) for rule in policy.rules if identities.get(rule.dimension)]
        if not checks:
            return
        member = f"{now}:{secrets.token_hex(6)}"
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for rule, identity in checks:
                    # The window is part of the key: two rules on one dimension keep separate logs.
                    key = self.key(policy.name, f"{rule.dimension}{rule.window_s}", identity)
                    await self._script(keys=[key], args=[now, rule.limit, rule.window_s * 1000, member], client=pipe)
                results = await pipe.execute()
        except (RedisError, OSError) as exc:
            logger.warning("rate limit %s not checked, redis unavailable: %s", name, type(exc).__name__)
            return
        refused = [(rule, int(wait)) for (rule, _), (ok, wait) in zip(checks, results, strict=True) if not int(ok)]
        if refused:
            rule, wait_ms = max(refused, key=lambda r: r[1])
            retry = max(1, -(-wait_ms // 1000))
            logger.info(
                "rate limit %s: %s rule %d/%ds refused an attempt", name, rule.dimension, rule.limit, rule.window_s
            )
            raise RateLimited(
                policy.message or None,
                detail=f"policy {name}: {rule.dimension} limit {rule.limit} per {rule.window_s}s",
                retry_after_s=retry,
                policy=name,
                limit_by=rule.dimension,
            )
