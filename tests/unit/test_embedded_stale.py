"""After a kill -9, the embedded PostgreSQL's pid files may name a pid that another process now
has: postmaster.pid and the socket's lock file are cleared when their pid is not a postgres."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from app.embedded import clear_stale_postgres_pids


def test_pid_files_naming_a_reused_pid_are_cleared(tmp_path: Path) -> None:
    reused = os.getpid()  # alive, but not a postgres: what a recycled pid looks like
    (tmp_path / "postmaster.pid").write_text(f"{reused}\n{tmp_path}\n")
    (tmp_path / ".s.PGSQL.5432.lock").write_text(f"{reused}\n{tmp_path}\n")
    (tmp_path / ".s.PGSQL.5432").write_text("")  # stands for the socket left behind
    clear_stale_postgres_pids(tmp_path)
    assert not any(tmp_path.iterdir())


def test_pid_files_of_a_running_postgres_are_kept(tmp_path: Path) -> None:
    running = next(
        (p.pid for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith("postgres")), None
    )
    if running is None:
        pytest.skip("no PostgreSQL running on this machine")
    (tmp_path / "postmaster.pid").write_text(f"{running}\n")
    (tmp_path / ".s.PGSQL.5432.lock").write_text(f"{running}\n")
    clear_stale_postgres_pids(tmp_path)
    assert (tmp_path / "postmaster.pid").exists() and (tmp_path / ".s.PGSQL.5432.lock").exists()
