-- 0002: the booking transactions as PL/pgSQL functions, so that one round trip does the whole
-- atomic change (slot counters, appointment, order status, order event, outbox) and a failure of
-- any part rolls back all of it. PL/pgSQL is supported by openGauss and KingbaseES.
--
-- Errors are raised with SQLSTATE P0001 and a stable message code that app/db translates:
--   SLOT_FULL            the slot is closed or has no capacity left in PostgreSQL
--   ORDER_NOT_BOOKABLE   the order is not this patient's, or not in a state that can be booked
--   EXAM_NOT_ON_RESOURCE the slot's resource cannot perform the order's exam
--   SLOT_LOCKED          a lock covers the slot for this channel
--   HOLD_EXPIRED         the Redis hold behind this booking has expired (the reaper may free it)
--   APPOINTMENT_NOT_LIVE the appointment to cancel or reschedule is not booked
--   PATIENT_CHANGED      another booking of the same patient committed since the rules were checked

-- Book a bundle. p_items: [{"order_id": 1, "slot_id": 2, "pool": "open", "hold_id": "..."}, ...]
-- (a bundle across days has one Redis hold per day; an item without hold_id takes p_hold_id)
-- Every booking of a patient bumps the patient's booking_version; a caller that checked the rules
-- against version p_version commits only if nobody booked for the patient since (PATIENT_CHANGED).
-- The rule overrides the check accepted are recorded here, in the booking's transaction.
CREATE FUNCTION hy_claim_patient(
    p_patient_id bigint, p_version bigint, p_overrides jsonb, p_actor_id bigint, p_actor_role text
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE patient AS pt SET booking_version = pt.booking_version + 1
     WHERE pt.id = p_patient_id AND (p_version IS NULL OR pt.booking_version = p_version);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'PATIENT_CHANGED' USING DETAIL = p_patient_id::text;
    END IF;
    INSERT INTO rule_override (order_id, rule_id, reason, actor_id, actor_role)
    SELECT (o ->> 'order_id')::bigint, o ->> 'rule_id', o ->> 'reason', p_actor_id, p_actor_role
      FROM jsonb_array_elements(COALESCE(p_overrides, '[]'::jsonb)) AS o;
END;
$$;

-- p_version: the patient's booking_version the rule check saw (NULL: no check).
-- p_overrides: [{"order_id": 1, "rule_id": "R09", "reason": "..."}], recorded in rule_override.
CREATE FUNCTION hy_book(
    p_hold_id text, p_patient_id bigint, p_channel text, p_items jsonb, p_deadline timestamptz,
    p_actor_id bigint, p_actor_role text, p_terminal text, p_reason text, p_version bigint, p_overrides jsonb
) RETURNS TABLE (appointment_id bigint, order_id bigint, slot_id bigint, exam_code text, resource_id text,
                 starts_at timestamptz, ends_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    item  jsonb;
    s     slot%ROWTYPE;
    v_exam text;
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
        UPDATE exam_order AS o SET status = 'booked', updated_at = now()
         WHERE o.id = (item ->> 'order_id')::bigint AND o.patient_id = p_patient_id AND o.status = 'ordered'
        RETURNING o.exam_code INTO v_exam;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'ORDER_NOT_BOOKABLE' USING DETAIL = item ->> 'order_id';
        END IF;
        IF NOT EXISTS (SELECT 1 FROM exam_capability c WHERE c.exam_code = v_exam AND c.resource_id = s.resource_id) THEN
            RAISE EXCEPTION 'EXAM_NOT_ON_RESOURCE' USING DETAIL = item ->> 'order_id';
        END IF;
        INSERT INTO appointment (hospital_id, order_id, patient_id, slot_id, exam_code, resource_id, day,
                                 starts_at, ends_at, channel, pool, hold_id, booked_by)
        VALUES (s.hospital_id, (item ->> 'order_id')::bigint, p_patient_id, s.id, v_exam, s.resource_id, s.day,
                s.starts_at, s.ends_at, p_channel, item ->> 'pool', COALESCE(item ->> 'hold_id', p_hold_id), p_actor_id)
        RETURNING id INTO v_appt;
        INSERT INTO order_event (order_id, appointment_id, event, from_status, to_status, actor_id, actor_role,
                                 channel, terminal, reason, detail)
        VALUES ((item ->> 'order_id')::bigint, v_appt, 'booked', 'ordered', 'booked', p_actor_id, p_actor_role,
                p_channel, p_terminal, p_reason,
                jsonb_build_object('slot_id', s.id, 'resource_id', s.resource_id, 'starts_at', s.starts_at));
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

-- Cancel a live appointment: the slot's place returns, the order is pending again.
CREATE FUNCTION hy_cancel(
    p_appointment_id bigint, p_patient_id bigint, p_actor_id bigint, p_actor_role text, p_channel text,
    p_terminal text, p_reason text
) RETURNS TABLE (slot_id bigint, pool text, order_id bigint, day date)
LANGUAGE plpgsql AS $$
DECLARE
    a appointment%ROWTYPE;
BEGIN
    UPDATE appointment AS t SET status = 'cancelled', ended_at = now(), end_reason = p_reason
     WHERE t.id = p_appointment_id AND t.status = 'booked'
       AND (p_patient_id IS NULL OR t.patient_id = p_patient_id)
    RETURNING t.* INTO a;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'APPOINTMENT_NOT_LIVE' USING DETAIL = p_appointment_id::text;
    END IF;
    UPDATE slot AS s SET booked = s.booked - 1 WHERE s.id = a.slot_id;
    UPDATE exam_order AS o SET status = 'ordered', updated_at = now() WHERE o.id = a.order_id;
    INSERT INTO order_event (order_id, appointment_id, event, from_status, to_status, actor_id, actor_role,
                             channel, terminal, reason, detail)
    VALUES (a.order_id, a.id, 'cancelled', 'booked', 'ordered', p_actor_id, p_actor_role, p_channel, p_terminal,
            p_reason, jsonb_build_object('slot_id', a.slot_id));
    INSERT INTO outbox (topic, aggregate_id, payload)
    VALUES ('appointment.cancelled', a.id::text,
            jsonb_build_object('appointment_id', a.id, 'order_id', a.order_id, 'slot_id', a.slot_id,
                               'reason', p_reason));
    slot_id := a.slot_id; pool := a.pool; order_id := a.order_id; day := a.day;
    RETURN NEXT;
END;
$$;

-- Move a live appointment to another slot in one transaction: the new place is taken before the
-- old one is given back, so the patient never ends up with neither.
CREATE FUNCTION hy_reschedule(
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
    INSERT INTO order_event (order_id, appointment_id, event, from_status, to_status, actor_id, actor_role,
                             channel, terminal, reason, detail)
    VALUES (a.order_id, v_new, 'rescheduled', 'booked', 'booked', p_actor_id, p_actor_role, p_channel, p_terminal,
            p_reason, jsonb_build_object('old_appointment_id', a.id, 'old_slot_id', a.slot_id, 'slot_id', s.id,
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
