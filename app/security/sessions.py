"""Login and session tokens. PostgreSQL keeps the sessions (only a SHA-256 of each token); Redis
caches the resolved principal for a few minutes so the hot path does not ask PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from app.booking.keys import KeyBuilder
from app.db import auth_repo
from app.errors import NotAuthenticated
from app.security.actor import Actor
from app.security.passwords import hash_password, verify_password

logger = logging.getLogger(__name__)

# Verifying against a real hash when the user does not exist keeps the answer time the same, so
# response timing does not reveal which usernames exist.
_DUMMY_HASH = hash_password(secrets.token_hex(16))


class _CachedSession(msgspec.Struct):
    user_id: int
    username: str
    roles: list[str]
    department_id: str | None
    patient_id: int | None
    terminal: str
    expires_at: float


class LoginResult(msgspec.Struct):
    token: str
    expires_at: datetime
    actor: Actor


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionManager:
    def __init__(self, pool: asyncpg.Pool, redis: aioredis.Redis, keys: KeyBuilder, ttl_s: int, cache_s: int) -> None:
        self.pool = pool
        self.redis = redis
        self.keys = keys
        self.ttl_s = ttl_s
        self.cache_s = cache_s

    async def patient_session(
        self, hospital_id: str, patient_id: int, name: str, terminal: str, ip: str, ttl_s: int
    ) -> LoginResult:
        """A short session for a patient who passed a self-service identity check."""
        user_id = await auth_repo.ensure_patient_user(self.pool, hospital_id, patient_id, name)
        token = secrets.token_urlsafe(32)
        expires_at = datetime.now(UTC) + timedelta(seconds=ttl_s)
        await auth_repo.insert_session(self.pool, token_hash(token), user_id, expires_at, terminal, ip)
        actor = Actor(
            user_id=user_id,
            username=f"p:{patient_id}",
            roles=frozenset({"patient"}),
            patient_id=patient_id,
            terminal=terminal,
            ip=ip,
        )
        return LoginResult(token=token, expires_at=expires_at, actor=actor)

    async def login(self, username: str, password: str, terminal: str = "", ip: str = "") -> LoginResult:
        user = await auth_repo.user_by_username(self.pool, username)
        # argon2 takes a few hundred milliseconds of CPU on purpose: off the event loop, so one
        # login does not stall every other request of the worker.
        valid = await asyncio.to_thread(verify_password, user["password_hash"] if user else _DUMMY_HASH, password)
        if user is None or not valid or not user["active"]:
            logger.info("login refused for an account (terminal %s)", terminal or "-")
            raise NotAuthenticated("用户名或密码错误", detail="bad credentials")
        token = secrets.token_urlsafe(32)
        expires_at = datetime.now(UTC) + timedelta(seconds=self.ttl_s)
        await auth_repo.insert_session(self.pool, token_hash(token), user["id"], expires_at, terminal, ip)
        actor = Actor(
            user_id=user["id"],
            username=user["username"],
            roles=frozenset(user["roles"]),
            department_id=user["department_id"],
            patient_id=user["patient_id"],
            terminal=terminal,
            ip=ip,
        )
        return LoginResult(token=token, expires_at=expires_at, actor=actor)

    async def resolve(self, token: str, ip: str = "") -> Actor:
        """The principal behind a bearer token, or NotAuthenticated."""
        digest = token_hash(token)
        key = self.keys.session(digest)
        cached: _CachedSession | None = None
        try:
            raw = await self.redis.get(key)
            if raw:
                cached = msgspec.json.decode(raw, type=_CachedSession)
        except (RedisError, OSError):
            cached = None  # Redis is only a cache here: fall through to PostgreSQL
        if cached is None or cached.expires_at <= datetime.now(UTC).timestamp():
            row = await auth_repo.live_session(self.pool, digest)
            if row is None:
                raise NotAuthenticated("登录已失效，请重新登录", detail="unknown, expired or revoked session")
            cached = _CachedSession(
                user_id=row["user_id"],
                username=row["username"],
                roles=list(row["roles"]),
                department_id=row["department_id"],
                patient_id=row["patient_id"],
                terminal=row["terminal"],
                expires_at=row["expires_at"].timestamp(),
            )
            with contextlib.suppress(RedisError, OSError):
                await self.redis.set(key, msgspec.json.encode(cached), ex=self.cache_s)
        return Actor(
            user_id=cached.user_id,
            username=cached.username,
            roles=frozenset(cached.roles),
            department_id=cached.department_id,
            patient_id=cached.patient_id,
            terminal=cached.terminal,
            ip=ip,
        )

    async def logout(self, token: str) -> None:
        digest = token_hash(token)
        await auth_repo.revoke_session(self.pool, digest)
        try:
            await self.redis.delete(self.keys.session(digest))
        except (RedisError, OSError):
            logger.warning("session cache entry not removed; it expires within %ss", self.cache_s)
