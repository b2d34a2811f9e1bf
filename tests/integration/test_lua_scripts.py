"""Each Lua script of the slot store, directly against real Redis, including every reason code."""

from __future__ import annotations

from datetime import date

import pytest
import redis.asyncio as aioredis

from app.booking.index import BookedRow, DayIndex, LockRow, SlotRow
from app.booking.keys import KeyBuilder
from app.booking.slot_store import GrabItem, SlotStore
from app.errors import CacheUnavailable

DAY = date(2030, 6, 3)
T0 = 1_906_000_000  # epoch seconds, far in the future
NOW_MS = (T0 - 86_400) * 1000
EXP_MS = NOW_MS + 60_000


def slot(
    slot_id: int,
    start: int,
    *,
    cap: int = 2,
    quotas: dict[str, int] | None = None,
    booked: int = 0,
    status: str = "open",
    resource: str = "CT1",
    length: int = 1800,
) -> SlotRow:
    return SlotRow(slot_id, resource, start, start + length, cap, quotas or {}, booked, status)


@pytest.fixture
def store(redis_client: aioredis.Redis, redis_prefix: str) -> SlotStore:
    return SlotStore(redis_client, KeyBuilder(redis_prefix, "h1"))


async def load(
    store: SlotStore, slots: list[SlotRow], booked: list[BookedRow] | None = None, locks: list[LockRow] | None = None
) -> None:
    await store.replace_day(DayIndex(DAY, slots, booked or [], locks or []))


async def grab(
    store: SlotStore,
    hold: str,
    patient: int,
    channel: str,
    *items: tuple[int, str, int],
    now_ms: int = NOW_MS,
    replacing: int | None = None,
):  # type: ignore[no-untyped-def]
    return await store.grab(DAY, hold, patient, channel, [GrabItem(*i) for i in items], now_ms, EXP_MS, replacing)


async def test_grab_takes_the_open_pool_and_records_a_hold(store: SlotStore) -> None:
    await load(store, [slot(1, T0)])
    result = await grab(store, "h-a", 7, "desk", (1, "CT-HEAD", 100))
    assert result.ok and result.pools == ["o"]
    view = await store.read_slot(DAY, 1)
    assert view is not None and view.booked == 1 and view.open_left == 1
    hold = await store.read_hold(DAY, "h-a")
    assert hold is not None and hold.patient_id == 7 and hold.items == [(1, "o")] and hold.expires_ms == EXP_MS
    assert await store.live_hold_ids(DAY) == ["h-a"]
    assert (await store.patient_entries(DAY, 7))[1].endswith("|h-a|h|100")


async def test_grab_takes_the_channel_quota_before_the_open_pool(store: SlotStore) -> None:
    await load(store, [slot(1, T0, cap=3, quotas={"ward": 1})])
    result = await grab(store, "h-w", 1, "ward", (1, "CT-HEAD", 1))
    assert result.pools == ["q:ward"]
    view = await store.read_slot(DAY, 1)
    assert view is not None and view.quota_left == {"ward": 0} and view.open_left == 2


async def test_grab_refuses_when_channel_quota_spent_and_the_rest_is_reserved(store: SlotStore) -> None:
    await load(store, [slot(1, T0, cap=2, quotas={"ward": 1, "emergency": 1})])
    result = await grab(store, "h1", 1, "desk", (1, "CT-HEAD", 1))
    assert not result.ok and result.reasons == ["QUOTA"]
    view = await store.read_slot(DAY, 1)
    assert view is not None and view.booked == 0


async def test_grab_refuses_full_slot(store: SlotStore) -> None:
    await load(store, [slot(1, T0, cap=1)])
    assert (await grab(store, "h1", 1, "desk", (1, "CT-HEAD", 1))).ok
    result = await grab(store, "h2", 2, "desk", (1, "CT-HEAD", 2))
    assert result.reasons == ["FULL"]


async def test_grab_reason_codes_for_missing_closed_past_and_locked_slots(store: SlotStore) -> None:
    past = slot(3, NOW_MS // 1000 - 3600, length=1800)
    await load(
        store,
        [slot(1, T0, status="closed"), slot(2, T0 + 1800), past, slot(4, T0 + 3600)],
        locks=[LockRow(2, None), LockRow(4, ["self"])],
    )
    assert (await grab(store, "a", 1, "desk", (99, "CT-HEAD", 1))).reasons == ["NO_SLOT"]
    assert (await grab(store, "b", 1, "desk", (1, "CT-HEAD", 1))).reasons == ["CLOSED"]
    assert (await grab(store, "c", 1, "desk", (2, "CT-HEAD", 1))).reasons == ["LOCKED"]
    assert (await grab(store, "d", 1, "desk", (3, "CT-HEAD", 1))).reasons == ["PAST"]
    # A lock for self-service only leaves the desk free.
    assert (await grab(store, "e", 1, "self", (4, "CT-HEAD", 1))).reasons == ["LOCKED"]
    assert (await grab(store, "f", 1, "desk", (4, "CT-HEAD", 1))).ok


async def test_grab_refuses_overlap_and_duplicate_exam_for_the_same_patient(store: SlotStore) -> None:
    await load(store, [slot(1, T0, resource="CT1"), slot(2, T0 + 900, resource="US01"), slot(3, T0 + 7200)])
    assert (await grab(store, "a", 5, "desk", (1, "CT-HEAD", 1))).ok
    assert (await grab(store, "b", 5, "desk", (2, "US-THYROID", 2))).reasons == ["OVERLAP"]
    assert (await grab(store, "c", 5, "desk", (3, "CT-HEAD", 3))).reasons == ["DUPLICATE_EXAM"]
    # Another patient is not affected.
    assert (await grab(store, "d", 6, "desk", (2, "US-THYROID", 4))).ok


async def test_grab_checks_the_items_of_one_request_against_each_other(store: SlotStore) -> None:
    await load(store, [slot(1, T0), slot(2, T0 + 600, resource="US01"), slot(3, T0 + 7200, resource="US02")])
    result = await grab(store, "a", 5, "desk", (1, "CT-HEAD", 1), (2, "US-THYROID", 2))
    assert result.reasons == ["OK", "OVERLAP"]
    result = await grab(store, "b", 5, "desk", (1, "CT-HEAD", 1), (3, "CT-HEAD", 2))
    assert result.reasons == ["OK", "DUPLICATE_EXAM"]


async def test_grab_is_all_or_nothing(store: SlotStore) -> None:
    await load(
        store,
        [slot(1, T0), slot(2, T0 + 3600, cap=1, booked=1)],
        booked=[BookedRow(2, 99, "US-THYROID", 50, "open", "old")],
    )
    result = await grab(store, "a", 5, "desk", (1, "CT-HEAD", 1), (2, "US-ABD", 2))
    assert result.reasons == ["OK", "FULL"]
    view = await store.read_slot(DAY, 1)
    assert view is not None and view.booked == 0
    assert await store.read_hold(DAY, "a") is None
    assert await store.patient_entries(DAY, 5) == {}


async def test_grab_ignores_the_entry_it_replaces(store: SlotStore) -> None:
    await load(
        store, [slot(1, T0), slot(2, T0 + 600, resource="CT2")], booked=[BookedRow(1, 5, "CT-HEAD", 1, "open", "old")]
    )
    assert (await grab(store, "a", 5, "desk", (2, "CT-HEAD", 1))).reasons == ["DUPLICATE_EXAM"]
    assert (await grab(store, "b", 5, "desk", (2, "CT-HEAD", 1), replacing=1)).ok


async def test_confirm_marks_entries_booked_and_drops_the_hold(store: SlotStore) -> None:
    await load(store, [slot(1, T0)])
    # A hold id with characters that are magic in Lua patterns.
    await grab(store, "a1-b2.c%", 7, "desk", (1, "CT-HEAD", 1))
    assert await store.confirm(DAY, "a1-b2.c%", 7) is True
    assert await store.read_hold(DAY, "a1-b2.c%") is None
    assert await store.live_hold_ids(DAY) == []
    assert (await store.patient_entries(DAY, 7))[1].endswith("|a1-b2.c%|b|1")
    assert await store.confirm(DAY, "a1-b2.c%", 7) is False  # NO_HOLD


async def test_release_returns_places_to_their_pools_and_is_idempotent(store: SlotStore) -> None:
    await load(store, [slot(1, T0, cap=3, quotas={"ward": 1}), slot(2, T0 + 3600)])
    await grab(store, "h", 7, "ward", (1, "CT-HEAD", 1), (2, "US-ABD", 2))
    assert await store.release(DAY, "h", 7, [1, 2]) is True
    one, two = await store.read_slot(DAY, 1), await store.read_slot(DAY, 2)
    assert one is not None and one.booked == 0 and one.quota_left == {"ward": 1} and one.open_left == 2
    assert two is not None and two.booked == 0 and two.open_left == 2
    assert await store.patient_entries(DAY, 7) == {}
    assert await store.release(DAY, "h", 7, [1, 2]) is False  # NO_HOLD: nothing changes
    one = await store.read_slot(DAY, 1)
    assert one is not None and one.booked == 0


async def test_reap_claims_only_expired_holds_and_leases_them(store: SlotStore) -> None:
    await load(store, [slot(1, T0), slot(2, T0 + 3600)])
    await store.grab(DAY, "old", 1, "desk", [GrabItem(1, "CT-HEAD", 1)], NOW_MS, NOW_MS + 1000)
    await store.grab(DAY, "new", 2, "desk", [GrabItem(2, "CT-HEAD", 2)], NOW_MS, NOW_MS + 100_000)
    assert await store.claim_expired(DAY, NOW_MS + 2000, lease_ms=30_000) == ["old"]
    # The lease keeps a second reaper off the claimed hold.
    assert await store.claim_expired(DAY, NOW_MS + 3000, lease_ms=30_000) == []
    assert await store.claim_expired(DAY, NOW_MS + 40_000, lease_ms=30_000) == ["old"]


async def test_cancel_returns_a_booked_place_once(store: SlotStore) -> None:
    await load(
        store, [slot(1, T0, cap=2, quotas={"ward": 1}, booked=1)], booked=[BookedRow(1, 7, "CT-HEAD", 1, "ward", "x")]
    )
    view = await store.read_slot(DAY, 1)
    assert view is not None and view.quota_left == {"ward": 0}
    assert await store.cancel(DAY, 1, 7, "q:ward") is True
    view = await store.read_slot(DAY, 1)
    assert view is not None and view.booked == 0 and view.quota_left == {"ward": 1}
    assert await store.cancel(DAY, 1, 7, "q:ward") is False  # NO_ENTRY
    view = await store.read_slot(DAY, 1)
    assert view is not None and view.booked == 0


async def test_cancel_does_not_return_a_place_still_only_held(store: SlotStore) -> None:
    await load(store, [slot(1, T0)])
    await grab(store, "h", 7, "desk", (1, "CT-HEAD", 1))
    assert await store.cancel(DAY, 1, 7, "o") is False
    view = await store.read_slot(DAY, 1)
    assert view is not None and view.booked == 1


async def test_lock_and_unlock_nest_and_never_go_negative(store: SlotStore) -> None:
    await load(store, [slot(1, T0), slot(2, T0 + 1800)])
    assert await store.lock(DAY, [1, 2, 99], None) == 2  # 99 is not in the index
    assert await store.lock(DAY, [1], ["self", "clinic"]) == 1
    view = await store.read_slot(DAY, 1)
    assert view is not None and view.locked_channels == ["*", "clinic", "self"]
    assert await store.unlock(DAY, [1, 2], None) == 2
    view = await store.read_slot(DAY, 1)
    assert view is not None and view.locked_channels == ["clinic", "self"]
    assert await store.unlock(DAY, [1, 2], None) == 0  # nothing left to undo
    assert (await grab(store, "a", 1, "desk", (1, "CT-HEAD", 1))).ok
    assert (await grab(store, "b", 2, "self", (1, "US-ABD", 2))).reasons == ["LOCKED"]


async def test_reconcile_replaces_the_whole_day(store: SlotStore, redis_client: aioredis.Redis) -> None:
    await load(store, [slot(1, T0), slot(2, T0 + 1800)])
    await grab(store, "h", 7, "desk", (1, "CT-HEAD", 1))
    await load(store, [slot(2, T0 + 1800, cap=5)], booked=[BookedRow(2, 8, "US-ABD", 3, "open", "z")])
    assert await store.read_slot(DAY, 1) is None
    view = await store.read_slot(DAY, 2)
    assert view is not None and view.capacity == 5 and view.booked == 0  # booked comes from the row
    # The hold in flight on the slot that is gone keeps its record (its release or the reaper ends
    # it), but takes no place and leaves no entry: its slot is not there any more.
    assert (await store.read_hold(DAY, "h")) is not None
    assert await store.patient_entries(DAY, 7) == {}
    assert await store.release(DAY, "h", 7, [1])
    assert await store.read_slot(DAY, 1) is None
    assert 2 in await store.patient_entries(DAY, 8)
    members = {m.decode() for m in await redis_client.smembers(store.keys.day(DAY).members)}
    assert store.keys.day(DAY).slot(2) in members and store.keys.day(DAY).slot(1) not in members


async def test_reconcile_keeps_a_hold_in_flight_with_its_places(store: SlotStore) -> None:
    """PostgreSQL has not committed the hold's booking (yet): the rebuilt day still counts its
    places, in the pools it took them from, and the hold ends as it would have without a rebuild."""
    await load(store, [slot(1, T0, cap=3, quotas={"ward": 1}), slot(2, T0 + 1800)])
    assert (await grab(store, "h-w", 7, "ward", (1, "CT-HEAD", 70), (2, "US-ABD", 71))).pools == ["q:ward", "o"]
    assert (await grab(store, "h-d", 8, "desk", (1, "CT-HEAD", 80))).ok
    before = [await store.read_slot(DAY, s) for s in (1, 2)]
    entries = await store.patient_entries(DAY, 7)

    await load(store, [slot(1, T0, cap=3, quotas={"ward": 1}), slot(2, T0 + 1800)])  # PostgreSQL: nothing booked

    assert [await store.read_slot(DAY, s) for s in (1, 2)] == before
    one = before[0]
    assert one is not None and one.booked == 2 and one.quota_left == {"ward": 0} and one.open_left == 1
    assert await store.patient_entries(DAY, 7) == entries
    assert await store.live_hold_ids(DAY) == ["h-d", "h-w"]
    # A second grab of the patient still meets his held entries (overlap, same exam).
    assert (await grab(store, "h-x", 7, "desk", (2, "CT-HEAD", 72))).reasons == ["DUPLICATE_EXAM"]
    # One hold is confirmed (its booking committed after the snapshot), the other released.
    assert await store.confirm(DAY, "h-d", 8)
    assert await store.release(DAY, "h-w", 7, [1, 2])
    one, two = await store.read_slot(DAY, 1), await store.read_slot(DAY, 2)
    assert one is not None and one.booked == 1 and one.quota_left == {"ward": 1} and one.open_left == 1
    assert two is not None and two.booked == 0 and two.open_left == 2
    assert await store.live_hold_ids(DAY) == [] and await store.patient_entries(DAY, 7) == {}


async def test_reconcile_counts_a_committed_hold_once_and_its_confirm_still_lands(store: SlotStore) -> None:
    """PostgreSQL committed the hold's booking before the snapshot: the rebuilt counters include
    it already, so its places are not taken twice, and the confirm on its way finds the hold."""
    await load(store, [slot(1, T0, cap=2)])
    assert (await grab(store, "h-c", 9, "desk", (1, "CT-HEAD", 90))).ok
    await load(store, [slot(1, T0, cap=2, booked=1)], booked=[BookedRow(1, 9, "CT-HEAD", 90, "open", "h-c")])
    view = await store.read_slot(DAY, 1)
    assert view is not None and view.booked == 1 and view.open_left == 1
    assert await store.confirm(DAY, "h-c", 9)  # 1: found, not "vanished" (which would rebuild the day)
    view = await store.read_slot(DAY, 1)
    assert view is not None and view.booked == 1
    assert (await store.patient_entries(DAY, 9))[1].endswith("|h-c|b|90")
    assert await store.live_hold_ids(DAY) == []


async def test_reconcile_replays_confirms_and_cancels_made_after_its_snapshot(
    store: SlotStore, redis_client: aioredis.Redis
) -> None:
    """The snapshot is read from PostgreSQL before the script runs: what was confirmed or given
    back in between comes from the rebuild window's log, once, checked against the snapshot."""
    old = BookedRow(2, 5, "US-ABD", 50, "open", "old")
    await load(store, [slot(1, T0, cap=4), slot(2, T0 + 1800, cap=4, booked=1)], booked=[old])
    assert (await grab(store, "late", 6, "desk", (1, "CT-HEAD", 60))).ok
    assert (await grab(store, "early", 7, "desk", (1, "MR-HEAD", 70))).ok
    log_from = await store.open_rebuild(DAY)
    # The snapshot is read now: "early" committed already, "late" not yet, "old" still booked.
    snapshot = DayIndex(
        DAY,
        [slot(1, T0, cap=4, booked=1), slot(2, T0 + 1800, cap=4, booked=1)],
        [BookedRow(1, 7, "MR-HEAD", 70, "open", "early"), old],
        [],
    )
    # Then, before the script: "late" commits and both confirm; "old" is cancelled.
    assert await store.confirm(DAY, "late", 6) and await store.confirm(DAY, "early", 7)
    assert await store.cancel(DAY, 2, 5, "o")
    rb, log = store.keys.day(DAY).rebuilding
    assert await redis_client.llen(log) == 3
    await store.replace_day(snapshot, log_from)

    one, two = await store.read_slot(DAY, 1), await store.read_slot(DAY, 2)
    assert one is not None and one.booked == 2 and one.open_left == 2  # late counted once, early once
    assert two is not None and two.booked == 0 and two.open_left == 4  # old given back
    assert (await store.patient_entries(DAY, 6))[1].endswith("|late|b|60")
    assert await store.patient_entries(DAY, 5) == {}
    assert await redis_client.exists(rb, log) == 0  # the window closed with the last rebuild
    # Outside a window nothing is logged.
    assert await store.cancel(DAY, 1, 6, "o")
    assert await redis_client.exists(log) == 0


async def test_a_rebuild_whose_window_expired_writes_nothing(store: SlotStore, redis_client: aioredis.Redis) -> None:
    await load(store, [slot(1, T0)])
    log_from = await store.open_rebuild(DAY)
    await redis_client.delete(store.keys.day(DAY).rebuilding[0])  # as if it had run out
    with pytest.raises(CacheUnavailable):
        await store.replace_day(DayIndex(DAY, [slot(1, T0, cap=9)], [], []), log_from)
    view = await store.read_slot(DAY, 1)
    assert view is not None and view.capacity == 2


async def test_reconcile_drops_hold_ids_whose_hold_is_gone(store: SlotStore, redis_client: aioredis.Redis) -> None:
    await load(store, [slot(1, T0)])
    assert (await grab(store, "h-live", 1, "desk", (1, "CT-HEAD", 1))).ok
    await redis_client.zadd(store.keys.day(DAY).holds, {"h-dead": EXP_MS})  # an id without its hash
    await load(store, [slot(1, T0)])
    assert await store.live_hold_ids(DAY) == ["h-live"]


async def test_reconcile_refuses_a_stale_view_of_the_day(store: SlotStore, redis_client: aioredis.Redis) -> None:
    await load(store, [slot(1, T0)])
    k = store.keys.day(DAY)
    members = sorted(m.decode() for m in await redis_client.smembers(k.members))
    version = (await redis_client.get(k.version)).decode()
    # A grab lands between the read and the script: the day's key set changed.
    await grab(store, "h", 7, "desk", (1, "CT-HEAD", 1))
    reply = await store._run(
        "reconcile",
        [k.members, k.version, *members, k.slot(1), k.holds],
        [version, len(members), '[[1, "h", "cap", "9"]]', k.tag],
    )
    assert reply[0] == 0 and reply[1] == b"STALE"
    view = await store.read_slot(DAY, 1)
    assert view is not None and view.capacity == 2 and view.booked == 1
