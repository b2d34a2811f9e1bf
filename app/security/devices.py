"""Display devices: tokens an admin issues to a screen (scoped to what it may show) and revokes.
A device acts with the role "display"; its token starts with DEVICE_PREFIX so the socket layer
knows which kind of credential it holds."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec

from app.db import device_repo
from app.errors import NotAuthenticated, NotFound, ValidationFailed
from app.planning.catalogue import Catalogue
from app.security.actor import Actor
from app.security.sessions import token_hash

DEVICE_PREFIX = "hyd_"


class Device(msgspec.Struct):
    id: int
    name: str
    scopes: list[str]
    created_at: Any
    revoked_at: Any
    last_seen_at: Any


class IssuedDevice(Device):
    token: str  # shown once, at issue; only its hash is kept


def _device(row: asyncpg.Record) -> Device:
    return Device(
        row["id"], row["name"], list(row["scopes"]), row["created_at"], row["revoked_at"], row["last_seen_at"]
    )


def check_scopes(scopes: Sequence[str], catalogue: Catalogue) -> list[str]:
    """Scopes name a department's live grid (grid:<department>) or a room's call queue
    (queue:<resource>) that exists."""
    out: list[str] = []
    for scope in scopes:
        kind, _, target = scope.partition(":")
        known = (kind == "grid" and target in catalogue.departments) or (
            kind == "queue" and target in catalogue.resources
        )
        if not known:
            raise ValidationFailed(
                f"显示范围无效：{scope}（应为 grid:科室编号 或 queue:诊室编号）", detail=f"unknown scope {scope}"
            )
        if scope not in out:
            out.append(scope)
    if not out:
        raise ValidationFailed("至少需要一个显示范围", detail="scopes must not be empty")
    return out


class DeviceRegistry:
    def __init__(self, pool: asyncpg.Pool, hospital_id: str) -> None:
        self.pool = pool
        self.hospital_id = hospital_id

    async def issue(self, actor: Actor, name: str, scopes: list[str]) -> IssuedDevice:
        token = DEVICE_PREFIX + secrets.token_urlsafe(32)
        row = await device_repo.insert(self.pool, self.hospital_id, name, scopes, token_hash(token), actor.user_id)
        d = _device(row)
        return IssuedDevice(d.id, d.name, d.scopes, d.created_at, d.revoked_at, d.last_seen_at, token)

    async def list(self) -> list[Device]:
        return [_device(r) for r in await device_repo.list_all(self.pool, self.hospital_id)]

    async def revoke(self, actor: Actor, device_id: int) -> Device:
        row = await device_repo.revoke(self.pool, device_id, actor.user_id)
        if row is None:
            raise NotFound("显示设备不存在或已吊销", detail=f"device {device_id} not found or already revoked")
        return _device(row)

    async def is_live(self, device_id: int) -> bool:
        return await device_repo.is_live(self.pool, device_id)

    async def resolve(self, token: str, ip: str) -> Actor:
        row = await device_repo.seen(self.pool, token_hash(token), ip)
        if row is None:
            raise NotAuthenticated("设备令牌无效或已吊销", detail="unknown or revoked device token")
        return Actor(
            user_id=None,
            username=f"device:{row['id']}",
            roles=frozenset({"display"}),
            terminal=row["name"],
            ip=ip,
            device_id=row["id"],
            scopes=frozenset(row["scopes"]),
        )
