"""The project's errors: one base with a stable machine code, an HTTP status and a Chinese message.

The HTTP edge (app/api/problem.py) turns any AppError into RFC 9457 problem+json. Messages are
read by clinicians, clerks and patients, so they are Chinese; codes and details are English.
"""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    code: str = "internal_error"
    status: int = 500
    title: str = "系统内部错误，请稍后重试"

    def __init__(self, message: str | None = None, *, detail: str = "", **extra: Any) -> None:
        self.message = message or self.title
        self.detail = detail
        self.extra = extra
        super().__init__(f"{self.code}: {detail or self.message}")


class BadRequest(AppError):
    code = "bad_request"
    status = 400
    title = "请求格式不正确"


class ValidationFailed(AppError):
    code = "validation_failed"
    status = 422
    title = "请求内容不符合要求"


class NotAuthenticated(AppError):
    code = "not_authenticated"
    status = 401
    title = "请先登录"


class Forbidden(AppError):
    code = "forbidden"
    status = 403
    title = "您没有执行此操作的权限"


class NotFound(AppError):
    code = "not_found"
    status = 404
    title = "未找到请求的内容"


class Conflict(AppError):
    code = "conflict"
    status = 409
    title = "操作与当前状态冲突"


class SlotUnavailable(Conflict):
    """One or more requested slots cannot be taken; `reasons` says why, per slot."""

    code = "slot_unavailable"
    title = "所选号源已约满或不可预约，请选择其他时段"


class SlotLocked(SlotUnavailable):
    code = "slot_locked"
    title = "该时段已被科室锁定（如设备维护或专家限号），请选择其他时段"


class OrderNotBookable(Conflict):
    code = "order_not_bookable"
    title = "该检查申请当前不可预约（可能已预约或已取消）"


class AppointmentNotLive(Conflict):
    code = "appointment_not_live"
    title = "该预约已取消或已改约，无法操作"


class HoldExpired(Conflict):
    code = "hold_expired"
    title = "号源保留已超时，请重新选择时段"


class RuleViolation(Conflict):
    """The booking breaks medical rules; `violations` lists them (rule id, severity, Chinese
    message, whether this caller may override it with a reason)."""

    code = "rule_violation"
    title = "该预约不符合检查规则"


class PatientChanged(Conflict):
    """Another booking of the same patient committed between the rule check and this commit."""

    code = "patient_changed"
    title = "该患者的预约刚被其他人修改，请刷新后重试"


class OrderStateConflict(Conflict):
    """The order is not in a state the requested step of the closed loop starts from; `state`
    says which state it is in."""

    code = "order_state"
    title = "检查申请当前状态不允许此操作"


class CheckInRefused(Conflict):
    """Check-in refused; `reason` is one of wrong_day, too_early, too_late, unpaid, not_live,
    already_checked_in."""

    code = "checkin_refused"
    title = "无法签到"


class QueueActionRefused(Conflict):
    """A queue action the entry's state does not allow (`state`), or an empty queue."""

    code = "queue_state"
    title = "当前排队状态不允许此操作"


class PatientSuspended(Forbidden):
    """Booking through this channel is suspended for the patient (the no-show credit rule)."""

    code = "patient_suspended"
    title = "因多次爽约，您的自助预约已暂停，请到预约中心办理"


class ServiceUnavailable(AppError):
    code = "service_unavailable"
    status = 503
    title = "系统繁忙或维护中，请稍后重试"


class DatabaseUnavailable(ServiceUnavailable):
    code = "database_unavailable"
    title = "系统暂时无法访问数据库，请稍后重试；如不确定是否已预约，请先查询预约记录"
    # The server process that ran the lost call (app.db.pool.Backend), when a pool connection ran it.
    backend: Any = None


class DatabaseUnreachable(DatabaseUnavailable):
    """DatabaseUnavailable before anything was sent: no connection could be had, so nothing of the
    call can have been committed (the caller may undo what it did in Redis at once)."""


class CacheUnavailable(ServiceUnavailable):
    code = "cache_unavailable"
    title = "号源服务暂时不可用，本次操作未完成，请稍后重试"
