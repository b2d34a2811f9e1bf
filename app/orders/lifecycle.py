"""The closed loop (闭环) of an exam order as an explicit state machine.

    ordered → booked → paid → checked_in → started → done → report_written → verified → published → viewed

with the side exits cancelled (the order withdrawn), no_show, aborted, and the appointment-level
events that keep or reset the state (rescheduled, appointment cancelled → ordered again). An order
paid before it is booked keeps `paid_at` and is booked straight into `paid`; a no-show order can be
booked again. Inpatient and emergency orders are billed to the stay and may check in unpaid.

This table is the one place the transitions are defined: PostgreSQL applies them under the row
lock (`hy_transition`, `hy_book`, `hy_cancel`, `hy_reschedule`, `hy_no_show` in sql/0007) from the
states listed here, and every transition writes an order event (who, when, terminal, channel,
reason) and an `order.status` outbox message for the EMR.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

STATES: tuple[str, ...] = (
    "ordered",
    "booked",
    "paid",
    "checked_in",
    "started",
    "done",
    "report_written",
    "verified",
    "published",
    "viewed",
    "cancelled",
    "no_show",
    "aborted",
)

STATE_NAMES: Mapping[str, str] = {
    "ordered": "已开单",
    "booked": "已预约",
    "paid": "已缴费",
    "checked_in": "已签到",
    "started": "检查中",
    "done": "检查完成",
    "report_written": "报告已书写",
    "verified": "报告已审核",
    "published": "报告已发布",
    "viewed": "报告已查看",
    "cancelled": "已取消",
    "no_show": "爽约",
    "aborted": "检查中止",
}

# States an order can be booked from (pending orders, in the planner's words).
BOOKABLE: tuple[str, ...] = ("ordered", "no_show")
# States in which the order holds a live appointment that may still be cancelled or moved.
BEFORE_CHECK_IN: tuple[str, ...] = ("booked", "paid")
TERMINAL: frozenset[str] = frozenset({"viewed", "cancelled", "aborted"})


class Transition(msgspec.Struct, frozen=True):
    event: str
    moves: Mapping[str, str]  # state before -> state after
    name: str  # Chinese, for messages and the timeline
    roles: frozenset[str]  # who may trigger it by the generic order-events API (empty: its own path only)

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(self.moves)


def _to(target: str, *sources: str) -> dict[str, str]:
    return dict.fromkeys(sources, target)


def _keep(*sources: str) -> dict[str, str]:
    return {s: s for s in sources}


_REPORTERS = frozenset({"technician", "dept_head", "sys_admin"})
_READERS = frozenset({"doctor", "patient", "sys_admin"})

TRANSITIONS: Mapping[str, Transition] = {
    t.event: t
    for t in (
        # PostgreSQL books a paid order (paid_at set) straight into "paid".
        Transition("booked", _to("booked", *BOOKABLE), "预约", frozenset()),
        Transition(
            "pay",
            {"ordered": "ordered", "no_show": "no_show", "booked": "paid"},
            "缴费",
            frozenset({"clerk", "sys_admin"}),
        ),
        Transition("rescheduled", _keep(*BEFORE_CHECK_IN), "改约", frozenset()),
        Transition("cancelled", _to("ordered", *BEFORE_CHECK_IN), "取消预约", frozenset()),
        # From "booked" only for orders billed to the stay (inpatient, emergency): app/orders/checkin.py.
        Transition("checked_in", _to("checked_in", *BEFORE_CHECK_IN), "签到", frozenset()),
        Transition("started", _to("started", "checked_in"), "开始检查", frozenset()),
        Transition("done", _to("done", "started"), "完成检查", frozenset()),
        Transition("aborted", _to("aborted", "checked_in", "started"), "中止检查", frozenset()),
        Transition("no_show", _to("no_show", *BEFORE_CHECK_IN), "爽约", frozenset()),
        Transition("report_written", _to("report_written", "done"), "书写报告", _REPORTERS),
        Transition("verified", _to("verified", "report_written"), "审核报告", _REPORTERS),
        Transition("published", _to("published", "verified"), "发布报告", _REPORTERS),
        Transition("viewed", _to("viewed", "published", "viewed"), "查看报告", _READERS),
        Transition("order_cancelled", _to("cancelled", *BOOKABLE), "撤销申请", frozenset({"doctor", "sys_admin"})),
    )
}

# The events the generic order-events API accepts (the others have their own paths: booking,
# check-in, the room queue, the no-show sweep).
API_EVENTS: tuple[str, ...] = tuple(e for e, t in TRANSITIONS.items() if t.roles)
API_ROLES: frozenset[str] = frozenset().union(*(t.roles for t in TRANSITIONS.values()))


class InvalidTransition(Exception):
    def __init__(self, event: str, state: str) -> None:
        super().__init__(f"{event} from {state}")
        self.event = event
        self.state = state


def target(event: str, state: str) -> str:
    """The state `event` leads to from `state`, or InvalidTransition."""
    t = TRANSITIONS.get(event)
    if t is None or state not in t.moves:
        raise InvalidTransition(event, state)
    return t.moves[state]


def refusal_message(event: str, state: str) -> str:
    t = TRANSITIONS.get(event)
    action = t.name if t else event
    return f"检查申请当前为「{STATE_NAMES.get(state, state)}」，不能{action}"


def allowed_events(state: str) -> list[str]:
    return [e for e, t in TRANSITIONS.items() if state in t.moves]
