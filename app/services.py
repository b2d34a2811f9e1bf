"""The composition root: builds the pool, the Redis client and every service once, and hands
them to the HTTP app, the CLI and the background roles. No module globals hold resources."""

from __future__ import annotations

import logging
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.booking.keys import KeyBuilder
from app.booking.pools import PoolAdmin
from app.booking.reconcile import Reconciler
from app.booking.relocate import Relocator
from app.booking.service import BookingService
from app.booking.slot_store import SlotStore
from app.db import catalogue_repo
from app.db.group_commit import ContextReads, GroupCommit
from app.db.pool import create_pool
from app.integrations.webhooks import WebhookRegistry
from app.notify.factory import build_sender
from app.orders.credit import CreditService
from app.orders.service import OrderService
from app.planning.catalogue import Catalogue
from app.planning.clinic import ClinicDesk
from app.planning.plan_service import PlanService
from app.planning.rule_service import RuleService
from app.planning.ward import WardStation
from app.queue.service import QueueService
from app.queue.store import QueueStore
from app.redis_url import SentinelUrl, parse_redis_url
from app.security.crypto import pii_keys
from app.security.devices import DeviceRegistry
from app.security.identity import DemoHisAdapter, IdentityAdapter
from app.security.mtls import CertificateAuthenticator, MtlsSettings
from app.security.ratelimit import RateLimiter
from app.security.sessions import SecurityPolicy, SessionManager
from app.settings import Settings
from app.slips.service import SlipService
from dashboards.metrics import compute as compute_metrics
from realtime.live import Live
from realtime.publisher import EventPublisher

logger = logging.getLogger(__name__)


def create_redis(url: str, max_connections: int, timeout_s: float) -> aioredis.Redis:
    """The process's one Redis client: on one server (redis://, rediss://, unix://), or on the
    primary the Sentinels name (redis+sentinel://, app/redis_url.py), followed through failovers.
    Either way at most `max_connections` connections, and a command waits up to `timeout_s` for a
    free one rather than failing with "Too many connections"."""
    sentinel = parse_redis_url(url)
    if sentinel is not None:
        return _sentinel_client(sentinel, max_connections, timeout_s)
    # A blocking pool waits for a free connection instead of failing with "Too many connections".
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool and closes it with itself


class Sentinels(Sentinel):
    """redis-py's Sentinel client, with a master discovery safe under concurrency.

    redis-py 8.1 moves the Sentinel that answered to the head of its list by swapping
    `sentinels[0]` with `sentinels[i]`, `i` taken before an await: when several connections are
    opened at once (a failover under load), another discovery may have reordered the list
    meanwhile, and the swap then puts one Sentinel in the list twice and drops another — whose
    connections are never closed, and the list shrinks towards a single Sentinel. Here the list is
    read from a snapshot and the answering Sentinel moved by identity, with no await in between."""

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        errors = []
        for sentinel in list(self.sentinels):
            try:
                masters = await sentinel.sentinel_masters()
            except (RedisConnectionError, RedisTimeoutError) as exc:
                errors.append(f"{sentinel} - {exc!r}")
                continue
            state = masters.get(service_name) if isinstance(masters, dict) else None
            if state and self.check_master_state(state, service_name):
                self.sentinels.remove(sentinel)
                self.sentinels.insert(0, sentinel)
                return str(state["ip"]), int(state["port"])
        detail = f": {', '.join(errors)}" if errors else ""
        raise MasterNotFoundError(f"No master found for {service_name!r}{detail}")


class BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """redis-py's Sentinel pool (each new connection asks the Sentinels for the primary's address;
    a primary demoted to a replica answers READONLY and the connection is dropped) with the
    blocking pool's wait for a free connection. It owns its Sentinel clients and closes them."""

    sentinel_manager: Sentinels

    async def get_master_address(self) -> Any:
        before = self.master_address
        address = await super().get_master_address()  # type: ignore[no-untyped-call]
        if before is not None and address != before:
            # Idle connections to the old primary were just dropped; busy ones fail on their next
            # command. The background sweep sees the new server and rebuilds the index.
            logger.warning("redis primary of %r moved from %s:%s to %s:%s", self.service_name, *before, *address)
        return address

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            await self.sentinel_manager.aclose()


def _sentinel_client(url: SentinelUrl, max_connections: int, timeout_s: float) -> aioredis.Redis:
    logger.info(
        "redis: the primary of %r, as %d Sentinel(s) name it%s: %s",
        url.master,
        len(url.sentinels),
        " over TLS" if url.tls else "",
        ", ".join(f"{host}:{port}" for host, port in url.sentinels),
    )
    tls = url.tls or {}  # rediss+sentinel://: TLS to the Sentinels and to the servers alike
    sentinel = Sentinels(  # type: ignore[no-untyped-call]
        list(url.sentinels),
        # No retries on a Sentinel: the next one in the list is asked instead.
        sentinel_kwargs={
            "username": url.sentinel_username,
            "password": url.sentinel_password,
            "socket_connect_timeout": timeout_s,
            "socket_timeout": timeout_s,
            "retry": Retry(NoBackoff(), 0),
            "max_connections": max_connections,
            **tls,
        },
    )
    client: aioredis.Redis = sentinel.master_for(
        url.master,
        connection_pool_class=BlockingSentinelPool,
        max_connections=max_connections,
        timeout=timeout_s,
        db=url.db,
        username=url.username,
        password=url.password,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        **tls,
    )
    return client


class Services:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, redis: aioredis.Redis, catalogue: Catalogue) -> None:
        b = settings.booking
        self.settings = settings
        self.pool = pool
        self.redis = redis
        self.catalogue = catalogue
        self.keys = KeyBuilder(settings.redis.key_prefix, b.hospital_id)
        self.store = SlotStore(redis, self.keys)
        self.publisher = EventPublisher(redis, self.keys)
        self.reconciler = Reconciler(
            pool,
            self.store,
            hospital_id=b.hospital_id,
            timezone=b.timezone,
            horizon_days=b.horizon_days,
            publisher=self.publisher,
            drift_check_s=b.drift_check_s,
        )
        self.rules = RuleService(
            pool,
            lambda: self.catalogue,
            hospital_id=b.hospital_id,
            tz=ZoneInfo(b.timezone),
            refresh_catalogue=self.reload_catalogue,
        )
        self.credit = CreditService(pool, b.hospital_id, ZoneInfo(b.timezone))
        db = settings.database
        self.booking = BookingService(
            pool,
            self.store,
            self.reconciler,
            self.publisher,
            hospital_id=b.hospital_id,
            hold_ttl_s=b.hold_ttl_s,
            commit_margin_s=b.commit_margin_s,
            self_change_cutoff_s=b.self_change_cutoff_h * 3600,
            settle_in_doubt=b.settle_in_doubt,
            rules=self.rules,
            credit=self.credit,
            group_commit=GroupCommit(pool, max_batch=db.group_commit_max, in_flight=db.group_commit_in_flight),
            context_reads=ContextReads(pool, max_batch=db.group_commit_max, in_flight=db.group_commit_in_flight),
        )
        self.plans = PlanService(pool, self.store, self.rules, self.booking, self.reconciler)
        self.clinic = ClinicDesk(self.plans, self.rules)
        self.ward = WardStation(pool, self.plans)
        self.slips = SlipService(pool, ZoneInfo(b.timezone))
        self.relocator = Relocator(pool, self.store, self.booking, self.reconciler)
        self.pool_admin = PoolAdmin(pool, self.store, self.reconciler, self.publisher, b.hospital_id)
        self.queues = QueueService(pool, QueueStore(redis, self.keys), lambda: self.catalogue, b)
        self.orders = OrderService(pool, self.booking, self.credit, hospital_id=b.hospital_id, tz=ZoneInfo(b.timezone))
        self.notifier = build_sender(settings.notify, pool)  # SMS / WeChat gateway, or the development log
        sec = settings.security
        self.limits = RateLimiter(redis, self.keys)
        self.limits.enabled = sec.rate_limits
        self.sessions = SessionManager(
            pool,
            redis,
            self.keys,
            sec.session_ttl_s,
            sec.session_cache_s,
            policy=SecurityPolicy.for_environment(
                settings.environment,
                sec.require_totp,
                sec.single_session,
                password_max_age_days=sec.password_max_age_days,
            ),
            limits=self.limits,
            certificates=CertificateAuthenticator(
                pool, MtlsSettings(proxy_header=sec.mtls_proxy_header, trusted_proxies=sec.mtls_trusted_proxies)
            ),
        )
        self.devices = DeviceRegistry(pool, b.hospital_id)
        self.webhooks = WebhookRegistry(pool, b.hospital_id)
        self.pii = pii_keys(settings)  # personal-data key ring (HY_PII_KEYS)
        self.identity: IdentityAdapter = DemoHisAdapter(pool, self.pii)  # the hospital's HIS / insurance look-up
        self.live = Live(
            redis,
            self.keys,
            lambda day: compute_metrics(pool, self.catalogue, b.hospital_id, b.timezone, day),
            lambda: self.catalogue,
            self.devices.is_live,
            queue_size=settings.server.live_queue,
        )

    @classmethod
    async def open(cls, settings: Settings, database_url: str, redis_url: str) -> Services:
        pool = await create_pool(settings.database, database_url)
        redis = create_redis(redis_url, settings.redis.max_connections, settings.redis.pool_timeout_s)
        try:
            catalogue = await catalogue_repo.load_catalogue(pool, settings.booking.hospital_id)
        except BaseException:
            await pool.close()
            await redis.aclose()
            raise
        return cls(settings, pool, redis, catalogue)

    async def reload_catalogue(self) -> None:
        self.catalogue = await catalogue_repo.load_catalogue(self.pool, self.settings.booking.hospital_id)

    async def close(self) -> None:
        gc = self.booking.group_commit.coalescer
        if gc.calls:
            logger.info(
                "group commit: %d bookings in %d calls to PostgreSQL (%.2f per call)",
                gc.items,
                gc.calls,
                gc.items / gc.calls,
            )
        await self.booking.in_doubt.close()
        await self.live.close()
        await self.notifier.aclose()
        await self.pool.close()
        await self.redis.aclose()
