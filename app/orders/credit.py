"""The no-show credit rule: too many no-shows suspend booking through some channels for a while
(default DOMAIN.md: 3 in 90 days suspend self-service and mobile booking for 90 days; desk and
clinician booking stay open; no-shows of inpatient and emergency orders do not count). The rule
is data per hospital (`credit_rule`); an authorised role can lift a suspension with a reason."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import asyncpg
import msgspec

from app.db import order_repo
from app.errors import PatientSuspended

RULE_CACHE_S = 5.0
# Where a suspended patient is sent (shown on the kiosk and the phone).
WHERE_TO_GO = "请到门诊楼1层预约中心窗口办理，或就诊时请医生在诊间预约"


class CreditRule(msgspec.Struct, frozen=True):
    no_shows: int = 3
    window_days: int = 90
    suspend_days: int = 90
    channels: tuple[str, ...] = ("self",)


class CreditService:
    def __init__(
        self, pool: asyncpg.Pool, hospital_id: str, tz: ZoneInfo, clock: Callable[[], float] = time.time
    ) -> None:
        self.pool = pool
        self.hospital_id = hospital_id
        self.tz = tz
        self.clock = clock
        self._rule: tuple[float, CreditRule] | None = None

    async def rule(self) -> CreditRule:
        now = time.monotonic()
        if self._rule is not None and now - self._rule[0] < RULE_CACHE_S:
            return self._rule[1]
        row = await order_repo.credit_rule(self.pool, self.hospital_id)
        rule = (
            CreditRule()
            if row is None
            else CreditRule(row["no_shows"], row["window_days"], row["suspend_days"], tuple(row["channels"]))
        )
        self._rule = (now, rule)
        return rule

    async def put_rule(self, rule: CreditRule) -> None:
        await order_repo.put_credit_rule(
            self.pool, self.hospital_id, rule.no_shows, rule.window_days, rule.suspend_days, rule.channels
        )
        self._rule = None

    async def suspension(self, patient_id: int) -> asyncpg.Record | None:
        return await order_repo.active_suspension(self.pool, patient_id, datetime.fromtimestamp(self.clock(), UTC))

    def message(self, ends_at: datetime) -> str:
        until = ends_at.astimezone(self.tz)
        return f"因多次爽约，您的自助预约和手机预约已暂停至 {until:%Y年%m月%d日}。{WHERE_TO_GO}"

    async def check(self, patient_id: int, channel: str) -> None:
        """Refuse a booking through a suspended channel."""
        rule = await self.rule()
        if channel not in rule.channels:
            return
        row = await self.suspension(patient_id)
        if row is not None and channel in row["channels"]:
            raise PatientSuspended(
                self.message(row["ends_at"]),
                detail=f"patient suspended until {row['ends_at'].isoformat()} for {list(row['channels'])}",
                until=row["ends_at"].isoformat(),
            )
