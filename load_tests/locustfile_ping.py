"""/ping alone, the HTTP ceiling for the bookings/ping ratio:

    locust -f load_tests/locustfile_ping.py --headless -u 200 -r 200 -t 20s --only-summary \
        --csv out/ping --host http://127.0.0.1:8000
"""

from __future__ import annotations

import locust_final_stats  # noqa: F401 - registers the final --csv write
from locust import constant, task
from locust.contrib.fasthttp import FastHttpUser


class PingUser(FastHttpUser):
    wait_time = constant(0)

    @task
    def ping(self) -> None:
        self.client.get("/ping", name="ping")
