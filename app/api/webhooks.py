"""Webhook subscriptions for the queue-calling, e-signature and mobile-nursing systems: they
subscribe to event topics; deliveries are signed (HMAC-SHA256) and retried from the outbox
(docs/outbound.md)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from app.api.routing import Call, api_route
from app.integrations.webhooks import WEBHOOK_TOPICS, CreatedSubscription, Subscription

WEBHOOK_ADMINS = frozenset({"sys_admin"})


class CreateBody(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    url: Annotated[str, msgspec.Meta(min_length=8, max_length=500)]
    topics: Annotated[list[str], msgspec.Meta(min_length=1, max_length=len(WEBHOOK_TOPICS))]


async def create_subscription(call: Call) -> CreatedSubscription:
    b: CreateBody = call.body
    return await call.services.webhooks.create(call.staff, b.name, b.url, b.topics)


async def list_subscriptions(call: Call) -> list[Subscription]:
    return await call.services.webhooks.list()


async def delete_subscription(call: Call) -> Subscription:
    return await call.services.webhooks.delete(call.staff, call.path_int("subscription_id"))


routes = [
    api_route(
        "/api/v1/admin/webhooks",
        create_subscription,
        methods=("POST",),
        roles=WEBHOOK_ADMINS,
        summary="Subscribe a system to event topics (the signing secret is shown once)",
        tag="admin",
        body=CreateBody,
        response=CreatedSubscription,
        status=201,
    ),
    api_route(
        "/api/v1/admin/webhooks",
        list_subscriptions,
        roles=WEBHOOK_ADMINS,
        summary="Webhook subscriptions with pending / failed counts (no secrets)",
        tag="admin",
        response=list[Subscription],
    ),
    api_route(
        "/api/v1/admin/webhooks/{subscription_id:int}",
        delete_subscription,
        methods=("DELETE",),
        roles=WEBHOOK_ADMINS,
        summary="End a subscription; its waiting deliveries are dropped",
        tag="admin",
        response=Subscription,
    ),
]
