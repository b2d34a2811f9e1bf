-- 0007: the closed loop of an exam order (app/orders/lifecycle.py holds the transition table),
-- check-in windows, room queues, no-shows and the credit rule.
--
-- New error codes (SQLSTATE P0001, translated in app/db):
--   ORDER_STATE      the order is not in a state the requested transition starts from (DETAIL: its state)

-- The closed loop's states. 'paid' means booked and paid; an order paid before it was booked keeps
-- paid_at and goes straight to 'paid' when booked.
ALTER TABLE exam_order ADD COLUMN paid_at timestamptz;
ALTER TABLE exam_order ADD CONSTRAINT exam_order_status_check CHECK (status IN (
    'ordered', 'booked', 'paid', 'checked_in', 'started', 'done', 'report_written', 'verified', 'published',
    'viewed', 'cancelled', 'no_show', 'aborted'));

ALTER TABLE appointment DROP CONSTRAINT appointment_status_check;
ALTER TABLE appointment ADD CONSTRAINT appointment_status_check
    CHECK (status IN ('booked', 'cancelled', 'rescheduled', 'no_show'));
CREATE INDEX appointment_live_end ON appointment (hospital_id, ends_at) WHERE status = 'booked';
CREATE INDEX appointment_no_show ON appointment (patient_id, ends_at) WHERE status = 'no_show';

-- Check-in opens `checkin_early_min` before the slot starts and closes `noshow_grace_min` after it
-- ends; an appointment not checked in by then is a no-show (DOMAIN.md: 30 min, MRI 15 min).
ALTER TABLE exam_type ADD COLUMN checkin_early_min integer NOT NULL DEFAULT 60
    CHECK (checkin_early_min BETWEEN 0 AND 1440);
ALTER TABLE exam_type ADD COLUMN noshow_grace_min integer NOT NULL DEFAULT 30
    CHECK (noshow_grace_min BETWEEN 0 AND 1440);

-- One row per checked-in appointment: the room's queue for the day. Redis holds the order of the
-- waiting line (app/queue/lua/queue.lua); this table holds who is in it, their ticket and state,
-- so the line can be rebuilt when Redis loses it.
CREATE TABLE queue_entry (
    appointment_id  bigint PRIMARY KEY REFERENCES appointment (id),
    hospital_id     text NOT NULL,
    resource_id     text NOT NULL,
    day             date NOT NULL,
    ticket          integer NOT NULL,
    priority_class  smallint NOT NULL CHECK (priority_class BETWEEN 0 AND 3),  -- 0 emergency .. 3 normal
    mark            text NOT NULL DEFAULT '',   -- elderly / child / military / green / emergency
    appt_at         timestamptz NOT NULL,
    checked_in_at   timestamptz NOT NULL DEFAULT now(),
    state           text NOT NULL DEFAULT 'waiting'
                    CHECK (state IN ('waiting', 'called', 'deferred', 'in_exam', 'done', 'left')),
    calls           integer NOT NULL DEFAULT 0,
    passes          integer NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (resource_id, day, ticket)
);
CREATE INDEX queue_entry_room ON queue_entry (resource_id, day);

-- Queue actions that are no order transition (call, recall, pass, defer, resume, reprioritise):
-- who, when, where.
CREATE TABLE queue_event (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    appointment_id  bigint NOT NULL REFERENCES appointment (id),
    action          text NOT NULL,
    actor_id        bigint,
    actor_role      text NOT NULL,
    terminal        text NOT NULL DEFAULT '',
    detail          jsonb NOT NULL DEFAULT '{}',
    at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX queue_event_appointment ON queue_event (appointment_id, id);

-- The credit rule (per hospital): `no_shows` no-shows within `window_days` suspend booking through
-- `channels` for `suspend_days`. No-shows of inpatient and emergency orders do not count.
CREATE TABLE credit_rule (
    hospital_id   text PRIMARY KEY REFERENCES hospital (id),
    no_shows      integer NOT NULL DEFAULT 3 CHECK (no_shows BETWEEN 1 AND 100),
    window_days   integer NOT NULL DEFAULT 90 CHECK (window_days BETWEEN 1 AND 3650),
    suspend_days  integer NOT NULL DEFAULT 90 CHECK (suspend_days BETWEEN 1 AND 3650),
    channels      text[] NOT NULL DEFAULT '{self}',
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE patient_suspension (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    patient_id   bigint NOT NULL REFERENCES patient (id),
    channels     text[] NOT NULL,
    starts_at    timestamptz NOT NULL,
    ends_at      timestamptz NOT NULL,
    reason       text NOT NULL,
    lifted_at    timestamptz,
    lifted_by    bigint,
    lift_reason  text,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX patient_suspension_patient ON patient_suspension (patient_id, ends_at);

-- A transition of the closed loop, checked against the state the order is in. Python's table
-- (app/orders/lifecycle.py) gives the moves as {"from": "to", ...}; this function applies the one
-- for the order's state under the row lock, records the event and tells the EMR through the outbox.
-- Returns the state the order was in.
CREATE FUNCTION hy_transition(
    p_order_id bigint, p_event text, p_moves jsonb, p_appointment_id bigint, p_actor_id bigint,
    p_actor_role text, p_channel text, p_terminal text, p_reason text, p_detail jsonb
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_from text;
    v_to text;
BEGIN
    SELECT o.status INTO v_from FROM exam_order AS o WHERE o.id = p_order_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ORDER_NOT_FOUND' USING DETAIL = p_order_id::text;
    END IF;
    v_to := p_moves ->> v_from;
    IF v_to IS NULL THEN
        RAISE EXCEPTION 'ORDER_STATE' USING DETAIL = v_from;
    END IF;
    UPDATE exam_order AS o
       SET status = v_to, updated_at = now(), paid_at = CASE WHEN p_event = 'pay' THEN now() ELSE o.paid_at END
     WHERE o.id = p_order_id;
    PERFORM hy_order_event(p_order_id, p_appointment_id, p_event, v_from, v_to, p_actor_id, p_actor_role,
                           p_channel, p_terminal, p_reason, p_detail);
    RETURN v_from;
END;
$$;

-- The order event and its status message for the EMR, written together.
CREATE FUNCTION hy_order_event(
    p_order_id bigint, p_appointment_id bigint, p_event text, p_from text, p_to text, p_actor_id bigint,
    p_actor_role text, p_channel text, p_terminal text, p_reason text, p_detail jsonb
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO order_event (order_id, appointment_id, event, from_status, to_status, actor_id, actor_role,
                             channel, terminal, reason, detail)
    VALUES (p_order_id, p_appointment_id, p_event, p_from, p_to, p_actor_id, p_actor_role, p_channel,
            p_terminal, p_reason, COALESCE(p_detail, '{}'::jsonb));
    INSERT INTO outbox (topic, aggregate_id, payload)
    SELECT 'order.status', o.order_no,
           jsonb_build_object('order_id', o.id, 'order_no', o.order_no, 'event', p_event, 'from', p_from,
                              'to', p_to, 'appointment_id', p_appointment_id, 'channel', p_channel,
                              'reason', p_reason, 'at', now())
      FROM exam_order AS o WHERE o.id = p_order_id;
END;
$$;

-- Booking now starts from 'ordered' or 'no_show' (booked again after a missed appointment) and
-- lands in 'paid' when the order was paid before it was booked.
CREATE OR REPLACE FUNCTION hy_book(
    p_hold_id text, p_patient_id bigint, p_channel text, p_items jsonb, p_deadline timestamptz,
    p_actor_id bigint, p_actor_role text, p_terminal text, p_reason text, p_version bigint, p_overrides jsonb
) RETURNS TABLE (appointment_id bigint, order_id bigint, slot_id bigint, exam_code text, resource_id text,
                 starts_at timestamptz, ends_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    item  jsonb;
    s     slot%ROWTYPE;
    v_exam text;
    v_from text;
    v_to   text;
    v_appt bigint;
BEGIN
    IF clock_timestamp() > p_deadline THEN
        RAISE EXCEPTION 'HOLD_EXPIRED';
    END IF;
    PERFORM hy_claim_patient(p_patient_id, p_version, p_overrides, p_actor_id, p_actor_role);
    FOR item IN SELECT * FROM jsonb_array_elements(p_items) LOOP
        UPDATE slot AS t SET booked = t.booked + 1
         WHERE t.id = (item ->> 'slot_id')::bigint AND t.status = 'open' AND t.booked < t.capacity
        RETURNING t.* INTO s;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'SLOT_FULL' USING DETAIL = item ->> 'slot_id';
        END IF;
        IF EXISTS (SELECT 1 FROM slot_lock l
                    WHERE l.resource_id = s.resource_id AND l.released_at IS NULL
                      AND l.starts_at < s.ends_at AND s.starts_at < l.ends_at
                      AND (l.channels IS NULL OR p_channel = ANY (l.channels))) THEN
            RAISE EXCEPTION 'SLOT_LOCKED' USING DETAIL = s.id::text;
        END IF;
        SELECT o.status INTO v_from FROM exam_order AS o
         WHERE o.id = (item ->> 'order_id')::bigint AND o.patient_id = p_patient_id
           AND o.status IN ('ordered', 'no_show')
           FOR UPDATE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'ORDER_NOT_BOOKABLE' USING DETAIL = item ->> 'order_id';
        END IF;
        UPDATE exam_order AS o
           SET status = CASE WHEN o.paid_at IS NULL THEN 'booked' ELSE 'paid' END, updated_at = now()
         WHERE o.id = (item ->> 'order_id')::bigint
        RETURNING o.exam_code, o.status INTO v_exam, v_to;
        IF NOT EXISTS (SELECT 1 FROM exam_capability c WHERE c.exam_code = v_exam AND c.resource_id = s.resource_id) THEN
            RAISE EXCEPTION 'EXAM_NOT_ON_RESOURCE' USING DETAIL = item ->> 'order_id';
        END IF;
        INSERT INTO appointment (hospital_id, order_id, patient_id, slot_id, exam_code, resource_id, day,
                                 starts_at, ends_at, channel, pool, hold_id, booked_by)
        VALUES (s.hospital_id, (item ->> 'order_id')::bigint, p_patient_id, s.id, v_exam, s.resource_id, s.day,
                s.starts_at, s.ends_at, p_channel, item ->> 'pool', COALESCE(item ->> 'hold_id', p_hold_id), p_actor_id)
        RETURNING id INTO v_appt;
        PERFORM hy_order_event((item ->> 'order_id')::bigint, v_appt, 'booked', v_from, v_to, p_actor_id,
                               p_actor_role, p_channel, p_terminal, p_reason,
                               jsonb_build_object('slot_id', s.id, 'resource_id', s.resource_id,
                                                  'starts_at', s.starts_at));
        INSERT INTO outbox (topic, aggregate_id, payload)
        VALUES ('appointment.booked', v_appt::text,
                jsonb_build_object('appointment_id', v_appt, 'order_id', (item ->> 'order_id')::bigint,
                                   'slot_id', s.id, 'resource_id', s.resource_id, 'starts_at', s.starts_at,
                                   'ends_at', s.ends_at, 'channel', p_channel));
        appointment_id := v_appt; order_id := (item ->> 'order_id')::bigint; slot_id := s.id;
        exam_code := v_exam; resource_id := s.resource_id; starts_at := s.starts_at; ends_at := s.ends_at;
        RETURN NEXT;
    END LOOP;
END;
$$;

-- Cancel and reschedule only before check-in: once the patient is in the queue the appointment is
-- the queue's. A cancelled appointment's order is pending again (paid_at stays).
CREATE OR REPLACE FUNCTION hy_cancel(
    p_appointment_id bigint, p_patient_id bigint, p_actor_id bigint, p_actor_role text, p_channel text,
    p_terminal text, p_reason text
) RETURNS TABLE (slot_id bigint, pool text, order_id bigint, day date)
LANGUAGE plpgsql AS $$
DECLARE
    a appointment%ROWTYPE;
    v_from text;
BEGIN
    UPDATE appointment AS t SET status = 'cancelled', ended_at = now(), end_reason = p_reason
     WHERE t.id = p_appointment_id AND t.status = 'booked'
       AND (p_patient_id IS NULL OR t.patient_id = p_patient_id)
    RETURNING t.* INTO a;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'APPOINTMENT_NOT_LIVE' USING DETAIL = p_appointment_id::text;
    END IF;
    SELECT o.status INTO v_from FROM exam_order AS o WHERE o.id = a.order_id FOR UPDATE;
    IF v_from NOT IN ('booked', 'paid') THEN
        RAISE EXCEPTION 'ORDER_STATE' USING DETAIL = v_from;
    END IF;
    UPDATE slot AS s SET booked = s.booked - 1 WHERE s.id = a.slot_id;
    UPDATE exam_order AS o SET status = 'ordered', updated_at = now() WHERE o.id = a.order_id;
    PERFORM hy_order_event(a.order_id, a.id, 'cancelled', v_from, 'ordered', p_actor_id, p_actor_role, p_channel,
                           p_terminal, p_reason, jsonb_build_object('slot_id', a.slot_id));
    INSERT INTO outbox (topic, aggregate_id, payload)
    VALUES ('appointment.cancelled', a.id::text,
            jsonb_build_object('appointment_id', a.id, 'order_id', a.order_id, 'slot_id', a.slot_id,
                               'reason', p_reason));
    slot_id := a.slot_id; pool := a.pool; order_id := a.order_id; day := a.day;
    RETURN NEXT;
END;
$$;

CREATE OR REPLACE FUNCTION hy_reschedule(
    p_appointment_id bigint, p_patient_id bigint, p_new_slot_id bigint, p_pool text, p_hold_id text,
    p_deadline timestamptz, p_actor_id bigint, p_actor_role text, p_channel text, p_terminal text, p_reason text,
    p_version bigint, p_overrides jsonb
) RETURNS TABLE (appointment_id bigint, old_slot_id bigint, old_pool text, old_day date, slot_id bigint,
                 resource_id text, starts_at timestamptz, ends_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    a appointment%ROWTYPE;
    s slot%ROWTYPE;
    v_new bigint;
    v_status text;
BEGIN
    IF clock_timestamp() > p_deadline THEN
        RAISE EXCEPTION 'HOLD_EXPIRED';
    END IF;
    PERFORM hy_claim_patient(p_patient_id, p_version, p_overrides, p_actor_id, p_actor_role);
    UPDATE appointment AS t SET status = 'rescheduled', ended_at = now(), end_reason = p_reason
     WHERE t.id = p_appointment_id AND t.status = 'booked'
       AND (p_patient_id IS NULL OR t.patient_id = p_patient_id)
    RETURNING t.* INTO a;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'APPOINTMENT_NOT_LIVE' USING DETAIL = p_appointment_id::text;
    END IF;
    SELECT o.status INTO v_status FROM exam_order AS o WHERE o.id = a.order_id FOR UPDATE;
    IF v_status NOT IN ('booked', 'paid') THEN
        RAISE EXCEPTION 'ORDER_STATE' USING DETAIL = v_status;
    END IF;
    UPDATE slot AS t SET booked = t.booked + 1
     WHERE t.id = p_new_slot_id AND t.status = 'open' AND t.booked < t.capacity
    RETURNING t.* INTO s;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'SLOT_FULL' USING DETAIL = p_new_slot_id::text;
    END IF;
    IF EXISTS (SELECT 1 FROM slot_lock l
            WHERE l.resource_id = s.resource_id AND l.released_at IS NULL
              AND l.starts_at < s.ends_at AND s.starts_at < l.ends_at
              AND (l.channels IS NULL OR p_channel = ANY (l.channels))) THEN
        RAISE EXCEPTION 'SLOT_LOCKED' USING DETAIL = s.id::text;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM exam_capability c WHERE c.exam_code = a.exam_code AND c.resource_id = s.resource_id) THEN
        RAISE EXCEPTION 'EXAM_NOT_ON_RESOURCE' USING DETAIL = a.order_id::text;
    END IF;
    INSERT INTO appointment (hospital_id, order_id, patient_id, slot_id, exam_code, resource_id, day,
                             starts_at, ends_at, channel, pool, hold_id, booked_by)
    VALUES (s.hospital_id, a.order_id, a.patient_id, s.id, a.exam_code, s.resource_id, s.day,
            s.starts_at, s.ends_at, p_channel, p_pool, p_hold_id, p_actor_id)
    RETURNING id INTO v_new;
    UPDATE appointment AS t SET replaced_by = v_new WHERE t.id = a.id;
    UPDATE slot AS t SET booked = t.booked - 1 WHERE t.id = a.slot_id;
    PERFORM hy_order_event(a.order_id, v_new, 'rescheduled', v_status, v_status, p_actor_id, p_actor_role,
                           p_channel, p_terminal, p_reason,
                           jsonb_build_object('old_appointment_id', a.id, 'old_slot_id', a.slot_id, 'slot_id', s.id,
                                              'starts_at', s.starts_at));
    INSERT INTO outbox (topic, aggregate_id, payload)
    VALUES ('appointment.rescheduled', v_new::text,
            jsonb_build_object('appointment_id', v_new, 'old_appointment_id', a.id, 'order_id', a.order_id,
                               'slot_id', s.id, 'resource_id', s.resource_id, 'starts_at', s.starts_at,
                               'ends_at', s.ends_at, 'channel', p_channel));
    appointment_id := v_new; old_slot_id := a.slot_id; old_pool := a.pool; old_day := a.day;
    slot_id := s.id; resource_id := s.resource_id; starts_at := s.starts_at; ends_at := s.ends_at;
    RETURN NEXT;
END;
$$;

-- A missed appointment: the appointment ends as 'no_show', its place returns to the slot (what
-- is left of it can still be used), the order can be booked again. Only before check-in.
CREATE FUNCTION hy_no_show(p_appointment_id bigint, p_reason text)
RETURNS TABLE (slot_id bigint, pool text, order_id bigint, patient_id bigint, day date, counts boolean)
LANGUAGE plpgsql AS $$
DECLARE
    a appointment%ROWTYPE;
    v_from text;
    v_class text;
BEGIN
    SELECT o.status, o.patient_class INTO v_from, v_class FROM exam_order AS o
      JOIN appointment AS t ON t.order_id = o.id
     WHERE t.id = p_appointment_id FOR UPDATE OF o;
    IF v_from IS NULL OR v_from NOT IN ('booked', 'paid') THEN
        RETURN;  -- checked in, cancelled or moved meanwhile: nothing to do
    END IF;
    UPDATE appointment AS t SET status = 'no_show', ended_at = now(), end_reason = p_reason
     WHERE t.id = p_appointment_id AND t.status = 'booked'
    RETURNING t.* INTO a;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    UPDATE slot AS s SET booked = s.booked - 1 WHERE s.id = a.slot_id;
    UPDATE exam_order AS o SET status = 'no_show', updated_at = now() WHERE o.id = a.order_id;
    PERFORM hy_order_event(a.order_id, a.id, 'no_show', v_from, 'no_show', NULL, 'system', a.channel, '',
                           p_reason, jsonb_build_object('slot_id', a.slot_id, 'ends_at', a.ends_at));
    slot_id := a.slot_id; pool := a.pool; order_id := a.order_id; patient_id := a.patient_id; day := a.day;
    counts := v_class NOT IN ('inpatient', 'emergency');
    RETURN NEXT;
END;
$$;
