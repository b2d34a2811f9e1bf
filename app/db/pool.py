"""The PostgreSQL pool and the translation of database errors into the project's own errors.

Only app/db/ imports asyncpg.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import msgspec
import orjson

from app.errors import (
    AppError,
    AppointmentNotLive,
    DatabaseUnavailable,
    DatabaseUnreachable,
    HoldExpired,
    NotFound,
    OrderNotBookable,
    OrderStateConflict,
    PatientChanged,
    SlotLocked,
    SlotUnavailable,
    ValidationFailed,
)
from app.settings import DatabaseSettings

logger = logging.getLogger(__name__)

Pool = asyncpg.Pool
Connection = asyncpg.Connection
Record = asyncpg.Record

# Codes raised by the booking functions in sql/0002_booking_functions.sql.
_RAISED: dict[str, type[AppError]] = {
    "SLOT_FULL": SlotUnavailable,
    "SLOT_LOCKED": SlotLocked,
    "ORDER_NOT_BOOKABLE": OrderNotBookable,
    "EXAM_NOT_ON_RESOURCE": ValidationFailed,
    "HOLD_EXPIRED": HoldExpired,
    "APPOINTMENT_NOT_LIVE": AppointmentNotLive,
    "PATIENT_CHANGED": PatientChanged,
    "ORDER_STATE": OrderStateConflict,
    "ORDER_NOT_FOUND": NotFound,
}

_UNAVAILABLE = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.InternalClientError,  # a connection the server dropped while a query was starting on it
    ConnectionError,
    OSError,
    TimeoutError,
)


class Backend(msgspec.Struct, frozen=True):
    """The server process behind one pool connection: which postmaster (its start time, which
    differs between a primary and its promoted standby, and across a restart) and which backend
    of it (its pid and start). A transaction in flight on a connection that was lost can still
    commit while that backend lives on that server, and never after (app/booking/in_doubt.py)."""

    postmaster_start: datetime
    pid: int
    backend_start: datetime


class HyConnection(asyncpg.Connection):  # type: ignore[misc]  # asyncpg ships no types
    """The pool's connections, which know their backend (set once, when the pool opens them)."""

    __slots__ = ("backend",)


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name, encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads, schema="pg_catalog"
        )
    if issubclass(type(conn), HyConnection):  # (asyncpg's isinstance says yes for any connection)
        row = await conn.fetchrow(
            "SELECT pg_postmaster_start_time() AS postmaster_start, pid, backend_start"
            " FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        )
        conn.backend = Backend(row["postmaster_start"], row["pid"], row["backend_start"]) if row else None


def backend_of(conn: asyncpg.Connection) -> Backend | None:
    """The backend of a pool connection (or of the connection a pool proxy stands for)."""
    return getattr(conn, "backend", None)


async def _light_reset(conn: asyncpg.Connection) -> None:
    """Pool connections are never given session state (no SET, LISTEN, cursors or advisory
    locks: migrations use their own connection), so the default reset query -- a fifth round trip
    per booking -- is skipped. asyncpg still rolls back any transaction left open."""


# -- host lists (primary + hot standby, docs/failover.md) --------------------------------------
#
# DATABASE_URL may name several servers, libpq style:
#   postgresql://huiyue@db1:5432,db2:5432/huiyue?target_session_attrs=read-write
# asyncpg tries them in order and keeps the first that accepts writes, but under ONE timeout for
# the whole list (60 s by default): a first host that does not answer at all (a hung or vanished
# machine: no refusal, just silence) uses it up, and the promoted standby behind it is never
# tried. So a host list is tried here one host at a time, each with its own timeout, as libpq
# does with connect_timeout. `connect_timeout` (seconds, per host) may be given in the URL;
# asyncpg would otherwise send it to the server as a setting, so it is taken out.

CONNECT_TIMEOUT_S = 5.0  # per host of a host list, unless the URL says connect_timeout=
_TRY_NEXT_HOST = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)


def split_hosts(dsn: str) -> tuple[list[str], float | None]:
    """The URL as one single-host URL per server of its host list, in order, and the per-host
    connect timeout it asks for (None: not given). A URL of one host (or the socket form
    postgresql://user@/db?host=/dir) comes back as it is."""
    parts = urlsplit(dsn)
    query = parse_qsl(parts.query, keep_blank_values=True)
    timeout = None
    for name, value in query:
        if name == "connect_timeout":
            try:
                timeout = float(value)
            except ValueError as exc:
                raise ValueError(f"connect_timeout must be a number of seconds, got {value!r}") from exc
    if timeout is not None:
        query = [(n, v) for n, v in query if n != "connect_timeout"]
        parts = parts._replace(query=urlencode(query))
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    if "," not in hostlist:
        return [urlunsplit(parts)], timeout
    hosts = [h for h in hostlist.split(",") if h]
    return [urlunsplit(parts._replace(netloc=f"{userinfo}{at}{host}")) for host in hosts], timeout


async def _connect_in_turn(dsn: str, **kwargs: Any) -> asyncpg.Connection:
    """Connect to the first server of the URL's host list that answers in time and matches its
    target_session_attrs (checked by asyncpg on each single-host URL); raises the last failure."""
    urls, timeout = split_hosts(dsn)
    per_host = CONNECT_TIMEOUT_S if timeout is None else timeout
    last: BaseException | None = None
    for n, url in enumerate(urls, 1):
        try:
            return await asyncpg.connect(url, timeout=per_host, **kwargs)
        except _TRY_NEXT_HOST as exc:  # refused, silent, read-only, starting up, shutting down...
            logger.info("database host %d of %d not usable: %s", n, len(urls), type(exc).__name__)
            last = exc
    assert last is not None
    raise last


def _needs_own_connect(dsn: str) -> bool:
    urls, timeout = split_hosts(dsn)
    return len(urls) > 1 or timeout is not None


async def create_pool(settings: DatabaseSettings, dsn: str) -> asyncpg.Pool:
    # A connection the server dropped (a failover: the old primary is gone) is replaced on its
    # next acquire, through the host list: by then the promoted standby is the one that accepts
    # writes. The query that met the dead connection is answered 503 (DatabaseUnavailable).
    async with database_errors():
        pool = await asyncpg.create_pool(
            dsn,
            min_size=settings.pool_min,
            max_size=settings.pool_max,
            command_timeout=settings.command_timeout_s,
            init=_init_connection,
            reset=_light_reset,
            connection_class=HyConnection,
            connect=_connect_in_turn if _needs_own_connect(dsn) else None,
        )
    assert pool is not None
    return pool


async def connect(dsn: str) -> asyncpg.Connection:
    async with database_errors():
        conn = await (_connect_in_turn(dsn) if _needs_own_connect(dsn) else asyncpg.connect(dsn))
    await _init_connection(conn)
    return conn


RAISE_EXCEPTION = "P0001"
UNIQUE_VIOLATION = "23505"


def refusal(sqlstate: str, message: str, detail: str | None, constraint: str | None) -> AppError | None:
    """The AppError a booking function's error stands for, or None for an error that is not one of
    its refusals. From asyncpg's exception here, and from the rows of hy_book_batch, which reports
    each booking's error as (SQLSTATE, message, detail, constraint) (app/db/group_commit.py)."""
    if sqlstate == RAISE_EXCEPTION:
        error = _RAISED.get(message)
        if error is None:
            return None
        extra = {"state": detail} if error is OrderStateConflict else {}
        return error(detail=f"{message}: {detail or ''}", **extra)
    if sqlstate == UNIQUE_VIOLATION and constraint == "appointment_one_live_per_order":
        return OrderNotBookable(detail="order already has a live appointment")
    return None


@asynccontextmanager
async def acquired(conn: asyncpg.Connection | asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the pool (or `conn` itself), for a call whose caller must know whether
    PostgreSQL can have seen it: no connection to be had raises DatabaseUnreachable (nothing was
    sent); a failure once the call is under way stays DatabaseUnavailable (it may have committed)."""
    if not isinstance(conn, asyncpg.Pool):
        yield conn
        return
    try:
        c = await conn.acquire()
    except _UNAVAILABLE as exc:
        logger.warning("database unreachable: %s", type(exc).__name__)
        raise DatabaseUnreachable(detail=f"postgres: {type(exc).__name__}") from exc
    backend = backend_of(c)  # read now: a lost connection is detached from its proxy
    try:
        yield c
    except DatabaseUnavailable as exc:
        # Lost during the call: whether it committed is known once this backend is gone.
        exc.backend = exc.backend or backend
        raise
    finally:
        await conn.release(c)


@asynccontextmanager
async def unavailable_errors() -> AsyncIterator[None]:
    """Only a lost or unusable server becomes DatabaseUnavailable; every other error is left to
    the caller (group commit decides for itself what a failed batch means)."""
    try:
        yield
    except _UNAVAILABLE as exc:
        logger.warning("database unavailable: %s", type(exc).__name__)
        raise DatabaseUnavailable(detail=f"postgres: {type(exc).__name__}") from exc


@asynccontextmanager
async def database_errors() -> AsyncIterator[None]:
    """Translate asyncpg errors into AppErrors at the database boundary."""
    try:
        yield
    except (asyncpg.RaiseError, asyncpg.UniqueViolationError) as exc:
        error = refusal(exc.sqlstate, str(exc.args[0]) if exc.args else "", exc.detail, exc.constraint_name)
        if error is None:
            raise
        raise error from exc
    except _UNAVAILABLE as exc:
        logger.warning("database unavailable: %s", type(exc).__name__)
        raise DatabaseUnavailable(detail=f"postgres: {type(exc).__name__}") from exc
