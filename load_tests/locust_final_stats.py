"""Locust writes its --csv files once a second, so the last _stats.csv of a run can miss up to a
second of requests. Importing this module from a locustfile adds one more write, of the same
columns, when Locust quits (after the users are stopped): to the path in HY_LOCUST_FINAL_CSV."""

from __future__ import annotations

import csv
import os
from typing import Any

from locust import events
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

_env: dict[str, Any] = {}


@events.init.add_listener
def _remember(environment: Any, **_kw: Any) -> None:
    _env["environment"] = environment


@events.quit.add_listener
def _write_final(**_kw: Any) -> None:
    path = os.environ.get("HY_LOCUST_FINAL_CSV")
    environment = _env.get("environment")
    if not path or environment is None:
        return
    with open(path, "w", newline="", encoding="utf-8") as f:
        StatsCSV(environment, PERCENTILES_TO_REPORT).requests_csv(csv.writer(f))
