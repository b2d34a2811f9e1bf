"""A garbage-collection probe for any Python process of a benchmark (load_tests/README.md,
"Garbage collection"): put this folder on PYTHONPATH and every Python process started with it
(the server, the load generator, the seeding) times its collections, per generation, and writes
them at exit to $HY_GC_PROBE_DIR/gcprobe.<pid>.txt with its command line. Never in production."""

from __future__ import annotations

import atexit
import gc
import os
import sys
import time
from pathlib import Path

_started = 0.0
_stats = {generation: [0, 0.0, 0.0] for generation in range(3)}  # count, total s, longest s


def _time(phase: str, info: dict[str, int]) -> None:
    global _started
    if phase == "start":
        _started = time.perf_counter()
        return
    took = time.perf_counter() - _started
    entry = _stats[info["generation"]]
    entry[0] += 1
    entry[1] += took
    entry[2] = max(entry[2], took)


def _write() -> None:
    folder = Path(os.environ.get("HY_GC_PROBE_DIR", "/tmp"))
    lines = [" ".join(sys.argv)[:160]]
    for generation, (count, total, longest) in _stats.items():
        lines.append(f"gen{generation}: {count} collections, {total * 1000:.1f} ms, longest {longest * 1000:.1f} ms")
    tracked, frozen = len(gc.get_objects()), gc.get_freeze_count()
    lines.append(f"tracked objects at exit {tracked}, frozen {frozen}, thresholds {gc.get_threshold()}")
    (folder / f"gcprobe.{os.getpid()}.txt").write_text("\n".join(lines) + "\n")


gc.callbacks.append(_time)
atexit.register(_write)
