"""Patient notifications: reminders before an exam and notices of changes (cancellation, a lock-driven
move, a queue reorder, a published report), queued as outbox rows (topic 'patient.notice') and
delivered by the relay through one sender interface (SMS gateway, WeChat template messages, or the
development log). See docs/notifications.md."""
