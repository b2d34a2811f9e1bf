"""All configuration, read from environment variables once. Nothing else reads os.environ.

Every area has a typed struct with defaults that run on a laptop: with no DATABASE_URL and no
REDIS_URL the platform starts embedded PostgreSQL and Valkey servers under HY_DATA_DIR.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import msgspec

from app.envvars import env_flag, env_int
from app.integrations.dicom.settings import DicomSettings, dicom_settings
from app.integrations.hl7.inbound_settings import Hl7InboundSettings, hl7_inbound_settings
from app.integrations.outbound.settings import OutboundSettings, outbound_settings
from app.notify.settings import NotifySettings, notify_settings
from app.redis_url import parse_redis_url
from app.security.crypto_settings import CryptoSettings, crypto_settings
from app.security.web_settings import WebSecuritySettings, web_security_settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class DatabaseSettings(msgspec.Struct, frozen=True):
    url: str | None  # None: start the embedded server
    pool_min: int = 2
    pool_max: int = 6  # per process; see docs/operations.md (fewer backends contend less)
    command_timeout_s: float = 10.0
    group_commit_max: int = 32  # bookings per group commit (app/db/group_commit.py); 1: off
    group_commit_in_flight: int = 2  # group commits under way at once, per process


class RedisSettings(msgspec.Struct, frozen=True):
    url: str | None  # None: start the embedded server; one server or Sentinels (app/redis_url.py)
    key_prefix: str = "hy"
    max_connections: int = 64
    pool_timeout_s: float = 5.0


class ServerSettings(msgspec.Struct, frozen=True):
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    log_level: str = "info"
    # Events a live screen may fall behind by before it is dropped as too slow (realtime/hub.py).
    live_queue: int = 256
    # Whether a web process also runs the background roles (app/background.py). On for a single
    # process (`make run`); off in production, where `python -m app worker` runs them.
    background: bool = True
    # Started as the demo (`serve` without --no-demo): the landing page names the demo password.
    demo: bool = False


class SecuritySettings(msgspec.Struct, frozen=True):
    session_ttl_s: int = 8 * 3600
    session_cache_s: int = 300
    require_totp: bool | None = None  # None: on when HY_ENV=production
    single_session: bool | None = None  # None: on when HY_ENV=production
    password_max_age_days: int = 90  # 0: never expires
    mtls_proxy_header: str = ""
    mtls_trusted_proxies: frozenset[str] = frozenset()
    rate_limits: bool = True  # HY_RATE_LIMITS=0 only for load tests on loopback


class BookingSettings(msgspec.Struct, frozen=True):
    hospital_id: str = "h1"
    timezone: str = "Asia/Shanghai"
    horizon_days: int = 14
    hold_ttl_s: int = 60  # a grab not committed by then is reaped
    # PostgreSQL refuses to commit a booking this long before the hold expires, so the reaper can
    # never free a hold whose booking is still about to commit.
    commit_margin_s: int = 10
    reaper_interval_s: float = 5.0
    # How often the background sweep compares every horizon slot's Redis counters with PostgreSQL
    # (app/booking/reconcile.py, "drift"); 0 turns the check off.
    drift_check_s: float = 60.0
    # Settle a booking whose commit was cut off as soon as the backend that ran it is gone
    # (app/booking/in_doubt.py); off behind a transaction-pooling PgBouncer, where a connection's
    # backend changes between transactions (the reaper then settles them at expiry).
    settle_in_doubt: bool = True
    # A patient may cancel or move an exam himself (kiosk, phone) until this long before it starts;
    # later only the booking centre can.
    self_change_cutoff_h: float = 2.0
    # Room queues: a waiting patient whose expected time moves later by more than this (an
    # emergency insertion, a green channel) is told; the ages that earn the elderly / child mark.
    queue_notify_threshold_min: int = 30
    queue_elderly_age: int = 70
    queue_child_age: int = 6


class Settings(msgspec.Struct, frozen=True):
    database: DatabaseSettings
    redis: RedisSettings
    server: ServerSettings
    security: SecuritySettings
    booking: BookingSettings
    data_dir: Path
    environment: str = "development"
    notify: NotifySettings = msgspec.field(default_factory=NotifySettings)
    hl7_inbound: Hl7InboundSettings = msgspec.field(default_factory=Hl7InboundSettings)
    dicom: DicomSettings = msgspec.field(default_factory=DicomSettings)
    outbound: OutboundSettings = msgspec.field(default_factory=OutboundSettings)
    web: WebSecuritySettings = msgspec.field(default_factory=WebSecuritySettings)
    crypto: CryptoSettings = msgspec.field(default_factory=CryptoSettings)

    @property
    def embedded(self) -> bool:
        return self.database.url is None or self.redis.url is None


def _in_range(value: int, name: str, lo: int, hi: int) -> int:
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from `env` (default: the process environment)."""
    env = os.environ if env is None else env
    redis_url = env.get("REDIS_URL") or None
    if redis_url is not None:
        parse_redis_url(redis_url)  # a bad URL stops the process here, in one line (RedisUrlError)
    return Settings(
        database=DatabaseSettings(
            url=env.get("DATABASE_URL") or None,
            pool_min=env_int(env, "HY_DB_POOL_MIN", 2),
            pool_max=env_int(env, "HY_DB_POOL_MAX", 6),
            group_commit_max=_in_range(env_int(env, "HY_GROUP_COMMIT_MAX", 32), "HY_GROUP_COMMIT_MAX", 1, 32),
            group_commit_in_flight=_in_range(
                env_int(env, "HY_GROUP_COMMIT_IN_FLIGHT", 2), "HY_GROUP_COMMIT_IN_FLIGHT", 1, 16
            ),
        ),
        redis=RedisSettings(
            url=redis_url,
            key_prefix=env.get("HY_REDIS_PREFIX", "hy"),
            max_connections=env_int(env, "HY_REDIS_MAX_CONNECTIONS", 64),
        ),
        server=ServerSettings(
            host=env.get("HY_HOST", "127.0.0.1"),
            port=env_int(env, "HY_PORT", 8000),
            workers=env_int(env, "HY_WORKERS", 1),
            log_level=env.get("HY_LOG_LEVEL", "info"),
            live_queue=env_int(env, "HY_LIVE_QUEUE", 256),
            background=env_flag(env, "HY_WEB_BACKGROUND") is not False,
            demo=env_flag(env, "HY_DEMO") is True,
        ),
        security=SecuritySettings(
            session_ttl_s=env_int(env, "HY_SESSION_TTL_S", 8 * 3600),
            require_totp=env_flag(env, "HY_REQUIRE_TOTP"),
            single_session=env_flag(env, "HY_SINGLE_SESSION"),
            password_max_age_days=env_int(env, "HY_PASSWORD_MAX_AGE_DAYS", 90),
            rate_limits=env_flag(env, "HY_RATE_LIMITS") is not False,
            mtls_proxy_header=env.get("HY_MTLS_PROXY_HEADER", ""),
            mtls_trusted_proxies=frozenset(
                p.strip() for p in env.get("HY_MTLS_TRUSTED_PROXIES", "").split(",") if p.strip()
            ),
        ),
        booking=BookingSettings(
            hospital_id=env.get("HY_HOSPITAL_ID", "h1"),
            timezone=env.get("HY_TIMEZONE", "Asia/Shanghai"),
            horizon_days=env_int(env, "HY_HORIZON_DAYS", 14),
            hold_ttl_s=env_int(env, "HY_HOLD_TTL_S", 60),
            drift_check_s=float(env.get("HY_DRIFT_CHECK_S", "60")),
            settle_in_doubt=env_flag(env, "HY_IN_DOUBT_SETTLE") is not False,
            self_change_cutoff_h=float(env.get("HY_SELF_CHANGE_CUTOFF_H", "2")),
            queue_notify_threshold_min=env_int(env, "HY_QUEUE_NOTIFY_MIN", 30),
            queue_elderly_age=env_int(env, "HY_QUEUE_ELDERLY_AGE", 70),
            queue_child_age=env_int(env, "HY_QUEUE_CHILD_AGE", 6),
        ),
        data_dir=Path(env.get("HY_DATA_DIR") or PROJECT_ROOT / ".data"),
        environment=env.get("HY_ENV", "development"),
        notify=notify_settings(env),
        hl7_inbound=hl7_inbound_settings(env),
        dicom=dicom_settings(env),
        outbound=outbound_settings(env),
        web=web_security_settings(env),
        crypto=crypto_settings(env),
    )
