"""Login and session tokens. PostgreSQL keeps the sessions (only a SHA-256 of each token); Redis
caches the resolved principal so the hot path does not ask PostgreSQL.

Staff authentication (等保三级, DOMAIN.md section 7):
- lockout: `max_failures` failed passwords (or second-factor codes) within `failure_window_s` lock
  the account for `lockout_s`, even for the right password (counters in ``staff_user``). A login
  name with no active account is counted and "locked" the same way (in Redis), so the answers do
  not tell which names exist;
- second factor: accounts with an enrolled TOTP secret -- and, when `require_totp` is set (on in
  production), every account holding one of `totp_roles` -- pass a code after the password: login
  answers a short-lived pending token (a session restricted to ``totp_pending``) that only
  ``verify_totp`` takes; an account that must but has not enrolled gets a session restricted to
  enrolment (``totp_enrol``);
- password age: a password older than `password_max_age_days` still logs in, into a session
  restricted to ``password_change``; changing the password ends every session of the account;
- idle timeout: each session carries its limit (`idle_kiosk_s` for patients and kiosks,
  `idle_workstation_s` otherwise); the last activity lives in the Redis cache entry, written through
  to ``staff_session.last_seen_at`` at most every `activity_write_s` -- if the cache entry is lost,
  the idle time counts from PostgreSQL's value, at most that much early;
- one live session per account (`single_session`): opening a session ends the account's others (their cache entries
  deleted); the old token then gets 401 「您的账号已在其他地方登录」. Should that delete fail
  (Redis down), the old session still dies at its next write-through (``touch_session`` finds it
  revoked) or cache reload, whichever comes first.

A restricted session is refused (403) by `resolve` unless the route declares it may serve one
(`allow_restricted`: password change, TOTP enrolment, me, logout); ``totp_pending`` never resolves.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, MutableMapping
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from app.booking.keys import KeyBuilder
from app.booking.slot_store import load_script
from app.db import auth_repo, auth_security_repo, booking_repo, notify_repo
from app.errors import AppError, Conflict, Forbidden, NotAuthenticated, ValidationFailed
from app.security import totp
from app.security.actor import Actor
from app.security.mtls import CertificateAuthenticator
from app.security.passwords import HISTORY, MAX_AGE_DAYS, hash_password, matches_any, policy_problems, verify_password
from app.security.ratelimit import RateLimited, RateLimiter

logger = logging.getLogger(__name__)

# Verifying against a real hash when the user does not exist keeps the answer time the same, so
# response timing does not reveal which usernames exist.
_DUMMY_HASH = hash_password(secrets.token_hex(16))

KIOSK_TERMINALS = frozenset({"kiosk", "h5", "sms"})  # shared or patient-held devices: the short idle limit
TOTP_ROLES = frozenset({"sys_admin", "dept_admin", "clerk"})  # system admin, department admin, booking centre

PENDING = "totp_pending"
ENROL = "totp_enrol"
PASSWORD = "password_change"  # noqa: S105 - a restriction's name, not a password  # nosec B105

SMS_KIND = notify_repo.LOGIN_CODE_KIND  # its text is redacted once sent (notify_repo.SECRET_KINDS)
SMS_CODE_TTL_S = 300
SMS_RESEND_S = 60
SMS_CODE_ATTEMPTS = 5

MSG_REPLACED = "您的账号已在其他地方登录"
MSG_IDLE = "长时间未操作，登录已超时，请重新登录"
MSG_EXPIRED = "登录已失效，请重新登录"
MSG_PASSWORD_CHANGED = "密码已修改，请使用新密码重新登录"  # noqa: S105 - a message  # nosec B105


class AccountLocked(AppError):
    code = "account_locked"
    status = 423
    title = "密码错误次数过多，账号已锁定30分钟，请稍后再试或联系系统管理员"


class PasswordChangeRequired(Forbidden):
    code = "password_expired"
    title = "密码已超过90天未修改，请先修改密码"


class TotpEnrolmentRequired(Forbidden):
    code = "totp_enrolment_required"
    title = "该账号须先绑定动态口令（二次验证）才能使用"


class WrongPassword(Forbidden):
    code = "wrong_password"
    title = "当前密码不正确"


class PasswordRejected(ValidationFailed):
    code = "password_policy"
    title = "新密码不符合密码策略"


class SecurityPolicy(msgspec.Struct, frozen=True):
    max_failures: int = 5
    failure_window_s: int = 30 * 60
    lockout_s: int = 30 * 60
    idle_workstation_s: int = 30 * 60
    idle_kiosk_s: int = 15 * 60
    activity_write_s: int = 60  # last activity written to PostgreSQL at most this often
    touch_s: int = 5  # and to the Redis cache entry at most this often
    password_max_age_days: int = MAX_AGE_DAYS  # 0: passwords never expire
    # The two below are on in production (`for_environment`), off by default elsewhere: the demo
    # accounts log in with the password alone, and the test suite holds several sessions of one
    # demo account at once (tests/helpers.py token_for).
    require_totp: bool = False
    single_session: bool = False
    totp_roles: frozenset[str] = TOTP_ROLES
    totp_pending_s: int = 300

    @classmethod
    def for_environment(
        cls,
        environment: str,
        require_totp: bool | None = None,
        single_session: bool | None = None,
        **overrides: Any,
    ) -> SecurityPolicy:
        """TOTP for its roles and one live session per account: in production unless said
        otherwise; elsewhere TOTP only for accounts that enrolled one."""
        production = environment == "production"
        return cls(
            require_totp=production if require_totp is None else require_totp,
            single_session=production if single_session is None else single_session,
            **overrides,
        )


# A session this process resolved is used again without a Redis read for this long: a session
# ended through another process (logout, a newer login) is refused there at once and here within
# this time. Bounded in size (cleared when full).
LOCAL_CACHE_S = 1.0
LOCAL_CACHE_ENTRIES = 20_000


class _CachedSession(msgspec.Struct):
    user_id: int
    username: str
    roles: list[str]
    department_id: str | None
    patient_id: int | None
    terminal: str
    expires_at: float
    last_seen: float = 0.0  # epoch s of the last request
    written_at: float = 0.0  # the last_seen PostgreSQL holds
    loaded_at: float = 0.0  # when this entry was read from PostgreSQL (0: an entry of an older version)
    idle_s: int = 30 * 60
    restriction: str = ""


class LoginResult(msgspec.Struct):
    token: str  # the session token -- or, when totp_required, the pending token for verify_totp
    expires_at: datetime
    actor: Actor
    totp_required: bool = False
    totp_enrolment_required: bool = False
    password_expired: bool = False
    display_name: str = ""


class TotpEnrolment(msgspec.Struct):
    secret: str  # base32, for typing in by hand
    uri: str  # otpauth:// for the QR code


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


class SessionManager:
    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: aioredis.Redis,
        keys: KeyBuilder,
        ttl_s: int,
        cache_s: int,
        *,
        policy: SecurityPolicy | None = None,
        clock: Callable[[], datetime] = _now,
        limits: RateLimiter | None = None,
        certificates: CertificateAuthenticator | None = None,
        local_cache_s: float = LOCAL_CACHE_S,
    ) -> None:
        self.pool = pool
        self.local_cache_s = local_cache_s
        # digest -> (the session as this process last saw it, time.monotonic() of that)
        self._local: dict[str, tuple[_CachedSession, float]] = {}
        self.redis = redis
        self.keys = keys
        self.ttl_s = ttl_s
        self.cache_s = cache_s
        self.policy = policy or SecurityPolicy()
        self.clock = clock
        self.limits = limits or RateLimiter(redis, keys)
        self.certificates = certificates or CertificateAuthenticator(pool)
        self._name_failures = redis.register_script(load_script("login_failures"))

    # -- opening sessions ---------------------------------------------------------------------

    def idle_limit(self, roles: frozenset[str], terminal: str) -> int:
        if "patient" in roles or terminal in KIOSK_TERMINALS:
            return self.policy.idle_kiosk_s
        return self.policy.idle_workstation_s

    async def _open(
        self, user_id: int, roles: frozenset[str], terminal: str, ip: str, ttl_s: int, restriction: str = ""
    ) -> tuple[str, datetime]:
        now = self.clock()
        token = secrets.token_urlsafe(32)
        digest = token_hash(token)
        expires_at = now + timedelta(seconds=ttl_s)
        async with self.pool.acquire() as conn, conn.transaction():
            # One login of an account at a time: two at once would each end the other's session.
            await conn.execute("SELECT 1 FROM staff_user WHERE id = $1 FOR UPDATE", user_id)
            await auth_security_repo.insert_session(
                conn, digest, user_id, now, expires_at, terminal, ip, self.idle_limit(roles, terminal), restriction
            )
            replaced = []
            if self.policy.single_session and restriction != PENDING:
                replaced = await auth_security_repo.replace_sessions(conn, user_id, digest, now)
        if replaced:
            logger.info("user %s: %d earlier session(s) ended by a new login", user_id, len(replaced))
            await self._forget(replaced)
        return token, expires_at

    async def _forget(self, digests: list[str]) -> None:
        if not digests:
            return
        for d in digests:
            self._local.pop(d, None)
        try:
            await self.redis.delete(*(self.keys.session(d) for d in digests))
        except (RedisError, OSError):
            logger.warning("session cache entries not removed; they die at the next write-through")

    async def patient_session(
        self, hospital_id: str, patient_id: int, name: str, terminal: str, ip: str, ttl_s: int
    ) -> LoginResult:
        """A short session for a patient who passed a self-service identity check (or an SMS code)."""
        user_id = await auth_repo.ensure_patient_user(self.pool, hospital_id, patient_id, name)
        roles = frozenset({"patient"})
        token, expires_at = await self._open(user_id, roles, terminal, ip, ttl_s)
        actor = Actor(
            user_id=user_id,
            username=f"p:{patient_id}",
            roles=roles,
            patient_id=patient_id,
            terminal=terminal,
            ip=ip,
        )
        return LoginResult(token=token, expires_at=expires_at, actor=actor, display_name=name)

    def _actor(self, user: asyncpg.Record, terminal: str, ip: str) -> Actor:
        return Actor(
            user_id=user["id"],
            username=user["username"],
            roles=frozenset(user["roles"]),
            department_id=user["department_id"],
            patient_id=user["patient_id"],
            terminal=terminal,
            ip=ip,
        )

    def _locked(self, user: asyncpg.Record, now: datetime) -> None:
        self._raise_if_locked(user["locked_until"], now)

    def _raise_if_locked(self, until: datetime | None, now: datetime) -> None:
        if until is not None and until > now:
            minutes = max(1, int((until - now).total_seconds() + 59) // 60)
            raise AccountLocked(
                f"密码错误次数过多，账号已锁定，请{minutes}分钟后再试或联系系统管理员",
                detail="account locked after repeated failures",
                locked_until=until.isoformat(),
            )

    async def _failed(self, user: asyncpg.Record, now: datetime) -> None:
        p = self.policy
        until = await auth_security_repo.record_failure(
            self.pool, user["id"], now, p.max_failures, p.failure_window_s, p.lockout_s
        )
        if until is not None:
            logger.warning("user %s locked until %s after %d failures", user["id"], until.isoformat(), p.max_failures)
            raise AccountLocked(detail="account locked after repeated failures", locked_until=until.isoformat())

    def _name_key(self, username: str) -> str:
        """The Redis key of a login name without an account (hashed: the name may be a typo of
        someone's real name, or a phone number)."""
        digest = hashlib.sha256(username.strip().lower().encode()).hexdigest()
        return f"{self.keys.prefix}:lkn:{digest}"

    async def _name_locked(self, username: str, now: datetime) -> None:
        try:
            raw = await self.redis.hget(self._name_key(username), "until")
        except (RedisError, OSError):
            return  # without Redis the name simply is not locked; real accounts still are
        if raw:
            self._raise_if_locked(datetime.fromtimestamp(float(raw), UTC), now)

    async def _name_failed(self, username: str, now: datetime) -> None:
        p = self.policy
        try:
            ends = await self._name_failures(
                keys=[self._name_key(username)],
                args=[now.timestamp(), p.failure_window_s, p.max_failures, p.lockout_s],
            )
        except (RedisError, OSError):
            return
        if ends:
            until = datetime.fromtimestamp(float(ends), UTC)
            raise AccountLocked(detail="account locked after repeated failures", locked_until=until.isoformat())

    def _password_expired(self, user: asyncpg.Record, now: datetime) -> bool:
        days = self.policy.password_max_age_days
        changed = user["password_changed_at"]
        return days > 0 and changed is not None and now - changed > timedelta(days=days)

    def _totp_needed(self, user: asyncpg.Record) -> bool:
        if user["totp_secret"]:
            return True
        return self.policy.require_totp and bool(set(user["roles"]) & self.policy.totp_roles)

    async def _finish_login(self, user: asyncpg.Record, terminal: str, ip: str, now: datetime) -> LoginResult:
        """The full session once every factor passed (restricted when the password is too old or a
        required second factor is not enrolled)."""
        expired = self._password_expired(user, now)
        enrol = self._totp_needed(user) and not user["totp_secret"]
        restriction = PASSWORD if expired else ENROL if enrol else ""
        token, expires_at = await self._open(
            user["id"], frozenset(user["roles"]), terminal, ip, self.ttl_s, restriction
        )
        return LoginResult(
            token=token,
            expires_at=expires_at,
            actor=self._actor(user, terminal, ip),
            totp_enrolment_required=enrol,
            password_expired=expired,
        )

    async def login(self, username: str, password: str, terminal: str = "", ip: str = "") -> LoginResult:
        now = self.clock()
        user = await auth_security_repo.user_for_login(self.pool, username)
        known = user is not None and user["active"]
        # Before argon2: a locked account costs no CPU. A name with no active account answers
        # exactly as an account would (its own counter), so lockouts do not reveal which exist.
        if known:
            self._locked(user, now)
        else:
            await self._name_locked(username, now)
        # argon2 takes a few hundred milliseconds of CPU on purpose: off the event loop, so one
        # login does not stall every other request of the worker.
        valid = await asyncio.to_thread(verify_password, user["password_hash"] if user else _DUMMY_HASH, password)
        if user is None or not valid or not user["active"]:
            logger.info("login refused for an account (terminal %s)", terminal or "-")
            if known:
                await self._failed(user, now)
            else:
                await self._name_failed(username, now)
            raise NotAuthenticated("用户名或密码错误", detail="bad credentials")
        if self._totp_needed(user) and user["totp_secret"]:
            token, expires_at = await self._open(
                user["id"], frozenset(user["roles"]), terminal, ip, self.policy.totp_pending_s, PENDING
            )
            return LoginResult(token, expires_at, self._actor(user, terminal, ip), totp_required=True)
        await auth_security_repo.clear_failures(self.pool, user["id"])
        return await self._finish_login(user, terminal, ip, now)

    async def verify_totp(self, pending_token: str, code: str, ip: str = "") -> LoginResult:
        """Login step 2: the pending token from `login` and the authenticator's code."""
        now = self.clock()
        digest = token_hash(pending_token)
        row = await auth_security_repo.session_row(self.pool, digest)
        if (
            row is None
            or row["restriction"] != PENDING
            or row["revoked_at"] is not None
            or row["expires_at"] <= now
            or not row["active"]
        ):
            raise NotAuthenticated("验证已超时，请重新输入用户名和密码", detail="unknown or expired pending login")
        user = await auth_security_repo.user_by_id(self.pool, row["user_id"])
        assert user is not None
        self._locked(user, now)
        secret = totp.unseal(user["totp_secret"]) if user["totp_secret"] else None
        step = totp.verify(secret, code, now.timestamp(), user["totp_last_step"]) if secret else None
        if step is None or not await auth_security_repo.use_totp_step(self.pool, user["id"], step):
            logger.info("second factor refused for user %s", user["id"])
            try:
                await self._failed(user, now)
            except AccountLocked:
                await auth_security_repo.end_session(self.pool, digest, now, "locked")
                raise
            raise NotAuthenticated("动态口令不正确或已使用，请输入验证器上的最新6位数字", detail="bad totp code")
        await auth_security_repo.end_session(self.pool, digest, now, "totp_done")
        await auth_security_repo.clear_failures(self.pool, user["id"])
        return await self._finish_login(user, row["terminal"], ip, now)

    # -- resolving tokens ---------------------------------------------------------------------

    def _refusal(self, row: asyncpg.Record | None, ts: float) -> NotAuthenticated | None:
        if row is None or not row["active"]:
            return NotAuthenticated(MSG_EXPIRED, detail="unknown, expired or revoked session")
        if row["revoked_at"] is not None:
            reason = row["revoke_reason"] or "revoked"
            message = {"replaced": MSG_REPLACED, "idle": MSG_IDLE, "password_changed": MSG_PASSWORD_CHANGED}.get(
                reason, MSG_EXPIRED
            )
            detail = {"replaced": "session_replaced", "idle": "idle_timeout"}.get(reason, reason)
            return NotAuthenticated(message, detail=f"session ended: {detail}", reason=detail)
        if row["expires_at"].timestamp() <= ts:
            return NotAuthenticated(MSG_EXPIRED, detail="session expired", reason="expired")
        return None

    async def _load(self, digest: str, cached: _CachedSession | None, ts: float) -> _CachedSession:
        row = await auth_security_repo.session_row(self.pool, digest)
        refusal = self._refusal(row, ts)
        if refusal is not None:
            await self._forget([digest])
            raise refusal
        assert row is not None
        written = row["last_seen_at"].timestamp()
        return _CachedSession(
            user_id=row["user_id"],
            username=row["username"],
            roles=list(row["roles"]),
            department_id=row["department_id"],
            patient_id=row["patient_id"],
            terminal=row["terminal"],
            expires_at=row["expires_at"].timestamp(),
            last_seen=max(written, cached.last_seen if cached is not None else 0.0),
            written_at=written,
            loaded_at=ts,
            idle_s=row["idle_timeout_s"],
            restriction=row["restriction"],
        )

    async def resolve(self, token: str, ip: str = "", *, allow_restricted: bool = False) -> Actor:
        """The principal behind a bearer token, or NotAuthenticated (unknown, expired, ended, idle
        too long, replaced by a newer login); a restricted session is refused (403) unless
        `allow_restricted`."""
        now = self.clock()
        ts = now.timestamp()
        digest = token_hash(token)
        key = self.keys.session(digest)
        cached: _CachedSession | None = None
        seen = time.monotonic()
        local = self._local.get(digest)
        if local is not None and seen - local[1] < self.local_cache_s:
            cached = local[0]  # seen by this process a moment ago: no Redis read
        else:
            try:
                raw = await self.redis.get(key)
                if raw:
                    cached = msgspec.json.decode(raw, type=_CachedSession)
            except (RedisError, OSError, msgspec.DecodeError):
                cached = None  # Redis is only a cache here: fall through to PostgreSQL
        dirty = False
        loaded = False
        if cached is None or ts - cached.loaded_at >= self.cache_s or cached.expires_at <= ts:
            cached = await self._load(digest, cached, ts)
            dirty = loaded = True
        if cached.expires_at <= ts:
            raise NotAuthenticated(MSG_EXPIRED, detail="session expired", reason="expired")
        if ts - cached.last_seen > cached.idle_s:
            await auth_security_repo.end_session(self.pool, digest, now, "idle")
            await self._forget([digest])
            raise NotAuthenticated(MSG_IDLE, detail="session ended: idle_timeout", reason="idle_timeout")
        if cached.restriction == PENDING:
            raise NotAuthenticated("请先完成动态口令验证", detail="second factor pending", reason="totp_pending")
        if cached.restriction and not allow_restricted:
            if cached.restriction == PASSWORD:
                raise PasswordChangeRequired(detail="password older than the policy allows: change it first")
            raise TotpEnrolmentRequired(detail="this role needs a second factor: enrol TOTP first")
        if ts - cached.written_at >= self.policy.activity_write_s:
            if not await auth_security_repo.touch_session(self.pool, digest, now):
                # Ended elsewhere (a newer login whose cache delete failed, a logout on another worker).
                await self._forget([digest])
                raise self._refusal(await auth_security_repo.session_row(self.pool, digest), ts) or NotAuthenticated(
                    MSG_EXPIRED
                )
            cached.written_at = ts
            dirty = True
        if ts - cached.last_seen >= self.policy.touch_s:
            cached.last_seen = ts
            dirty = True
        if dirty:
            with contextlib.suppress(RedisError, OSError):
                # Kept as long as the idle limit so the last activity survives between reloads. An
                # entry not just loaded from PostgreSQL is only refreshed (XX): one deleted meanwhile
                # by a logout or a newer login elsewhere is not brought back.
                ttl = max(self.cache_s, cached.idle_s) + self.policy.activity_write_s
                await self.redis.set(key, msgspec.json.encode(cached), ex=ttl, xx=not loaded)
        if local is None or dirty or seen - local[1] >= self.local_cache_s:
            if len(self._local) >= LOCAL_CACHE_ENTRIES:
                self._local.clear()
            self._local[digest] = (cached, seen)
        return Actor(
            user_id=cached.user_id,
            username=cached.username,
            roles=frozenset(cached.roles),
            department_id=cached.department_id,
            patient_id=cached.patient_id,
            terminal=cached.terminal,
            ip=ip,
        )

    async def certificate_actor(self, scope: MutableMapping[str, Any], ip: str = "") -> Actor | None:
        """The interface system behind the request's verified client certificate (app/security/mtls.py)."""
        return await self.certificates.resolve(scope, ip)

    async def logout(self, token: str) -> None:
        digest = token_hash(token)
        self._local.pop(digest, None)
        await auth_security_repo.end_session(self.pool, digest, self.clock(), "logout")
        try:
            await self.redis.delete(self.keys.session(digest))
        except (RedisError, OSError):
            logger.warning("session cache entry not removed; it is dropped at its next reload")

    # -- passwords and second factor ----------------------------------------------------------

    async def change_password(self, actor: Actor, current: str, new: str) -> None:
        """Check the current password, the policy and the history; set the new one and end every
        session of the account (the caller logs in again with the new password)."""
        assert actor.user_id is not None
        now = self.clock()
        user = await auth_security_repo.user_by_id(self.pool, actor.user_id)
        if user is None or not user["active"]:
            raise NotAuthenticated(MSG_EXPIRED, detail="account gone")
        self._locked(user, now)
        if not await asyncio.to_thread(verify_password, user["password_hash"], current):
            await self._failed(user, now)
            raise WrongPassword(detail="current password does not match")
        problems = policy_problems(new, user["username"])
        if problems:
            raise PasswordRejected("；".join(problems), detail="password policy", problems=problems)
        # The current password and the four before it.
        previous = await auth_security_repo.recent_password_hashes(self.pool, user["id"], HISTORY - 1)
        if await asyncio.to_thread(matches_any, new, [user["password_hash"], *previous]):
            raise PasswordRejected(
                f"新密码不能与最近{HISTORY}次使用过的密码相同",
                detail="password reused",
                problems=[f"新密码不能与最近{HISTORY}次使用过的密码相同"],
            )
        new_hash = await asyncio.to_thread(hash_password, new)
        ended = await auth_security_repo.set_password(self.pool, user["id"], new_hash, user["password_hash"], now)
        await auth_security_repo.clear_failures(self.pool, user["id"])
        await self._forget(ended)
        logger.info("user %s changed the password; %d session(s) ended", user["id"], len(ended))

    async def enrol_totp(self, actor: Actor) -> TotpEnrolment:
        """A new secret for the caller's authenticator, active once `confirm_totp` sees a code of it.
        An account with a second factor already keeps it (a reset is a system administrator's job)."""
        assert actor.user_id is not None
        user = await auth_security_repo.user_by_id(self.pool, actor.user_id)
        if user is None:
            raise NotAuthenticated(MSG_EXPIRED, detail="account gone")
        if user["totp_secret"]:
            raise Conflict("该账号已绑定动态口令，如需更换请联系系统管理员", detail="totp already enrolled")
        secret = totp.new_secret()
        await auth_security_repo.set_totp_pending(self.pool, user["id"], totp.seal(secret))
        return TotpEnrolment(secret, totp.provisioning_uri(secret, user["username"]))

    async def confirm_totp(self, actor: Actor, token: str, code: str) -> None:
        """The first code of the new secret: the secret becomes the account's second factor, and a
        session restricted to enrolment becomes a full one."""
        assert actor.user_id is not None
        now = self.clock()
        user = await auth_security_repo.user_by_id(self.pool, actor.user_id)
        if user is None:
            raise NotAuthenticated(MSG_EXPIRED, detail="account gone")
        stored = user["totp_pending_secret"]
        if not stored:
            raise Conflict("请先获取动态口令绑定信息", detail="no pending totp enrolment")
        step = totp.verify(totp.unseal(stored), code, now.timestamp())
        if step is None:
            raise ValidationFailed("动态口令不正确，请输入验证器上的最新6位数字", detail="bad totp code")
        if not await auth_security_repo.activate_totp(self.pool, user["id"], stored, step):
            raise Conflict("绑定信息已变化，请重新获取", detail="pending secret replaced meanwhile")
        digest = token_hash(token)
        await auth_security_repo.lift_restriction(self.pool, digest)
        await self._forget([digest])

    # -- patients' SMS login codes (the mobile channel) --------------------------------------

    async def issue_sms_code(
        self, hospital_id: str, phone: str, ttl_s: int = SMS_CODE_TTL_S, resend_s: int = SMS_RESEND_S
    ) -> bool:
        """A 6-digit code for the patient whose record holds `phone`, queued as a 'login_code' notice
        (the outbox relay sends it within seconds, to the number on record). False when no patient
        has that number -- the caller answers the same either way, so the answer tells nobody
        whether a number is registered."""
        now = self.clock()
        phone_hash = _phone_hash(phone)
        patients = await auth_security_repo.patients_by_phone(self.pool, hospital_id, phone)
        if not patients:
            logger.info("sms login code asked for an unknown number")
            return False
        last = await auth_security_repo.latest_sms_code_at(self.pool, phone_hash)
        if last is not None and now - last < timedelta(seconds=resend_s):
            wait = max(1, int(resend_s - (now - last).total_seconds()))
            raise RateLimited("验证码已发送，请稍后再试", detail="code sent moments ago", retry_after_s=wait)
        code = f"{secrets.randbelow(10**6):06d}"
        salt = secrets.token_hex(8)
        expires_at = now + timedelta(seconds=ttl_s)
        patient_id = int(patients[0]["id"])
        async with self.pool.acquire() as conn, conn.transaction():
            code_id = await auth_security_repo.insert_sms_code(
                conn, phone_hash, patient_id, _code_hash(salt, code), salt, now, expires_at
            )
            await booking_repo.insert_notice(
                conn,
                patient_id,
                {
                    "kind": SMS_KIND,
                    "message": f"【汇约】您的登录验证码为{code}，{ttl_s // 60}分钟内有效。请勿将验证码告诉他人。",
                    "dedupe": f"{SMS_KIND}:{code_id}",
                    "expires_at": expires_at.isoformat(),
                },
            )
        return True

    async def sms_login(
        self, hospital_id: str, phone: str, code: str, terminal: str, ip: str, ttl_s: int
    ) -> LoginResult:
        """A patient session for the holder of the phone that received the code."""
        now = self.clock()
        phone_hash = _phone_hash(phone)
        refused = NotAuthenticated("验证码错误或已过期，请重新获取", detail="bad or expired sms code")
        matched = False
        async with self.pool.acquire() as conn, conn.transaction():
            row = await auth_security_repo.live_sms_code(conn, phone_hash, now)
            if row is None:
                raise refused
            matched = hmac.compare_digest(row["code_hash"], _code_hash(row["salt"], code.strip()))
            if matched:
                await auth_security_repo.sms_code_used(conn, row["id"], now)
            else:  # counted (committed), then refused: the fifth wrong try ends the code
                await auth_security_repo.sms_code_failed(conn, row["id"], SMS_CODE_ATTEMPTS, now)
        if not matched:
            raise refused
        patients = await auth_security_repo.patients_by_phone(self.pool, hospital_id, phone)
        if len(patients) != 1:
            # One number, several patients (a family's shared phone): which one is not guessed.
            raise Conflict(
                "该手机号关联多位就诊人，请在自助机或窗口使用身份证办理",
                detail=f"{len(patients)} patients hold this number",
            )
        who = patients[0]
        return await self.patient_session(hospital_id, int(who["id"]), who["name"], terminal, ip, ttl_s)


def _phone_hash(phone: str) -> str:
    return hashlib.sha256(f"phone:{phone.strip()}".encode()).hexdigest()


def _code_hash(salt: str, code: str) -> str:
    return hashlib.sha256(f"{salt}:{code}".encode()).hexdigest()
