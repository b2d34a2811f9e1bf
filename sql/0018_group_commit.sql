-- 0018: group commit (load-and-resilience issue). Bookings that reach one server process while an
-- earlier batch is still in PostgreSQL are sent together (app/db/group_commit.py) and committed by
-- one call: one round trip and one commit for all of them, where each booking used to pay for its
-- own. The call is hy_book_set (below: every statement once for the whole batch); hy_book_batch is
-- its fallback for a batch hy_book_set cannot decide as a whole (a deadlock, its capacity guard).
--
-- hy_book_batch: each booking is its own all-or-nothing unit, hy_book run in a subtransaction per
-- booking, so a refused booking (SLOT_FULL, PATIENT_CHANGED, ...) rolls back its own rows and locks
-- and nothing of the others. Its refusal comes back as a row (SQLSTATE, message, detail,
-- constraint) that the server turns into the same error a lone call would have raised.
--
-- p_batch: [{"k": 0, "hold_id": ..., "patient_id": ..., "channel": ..., "items": [...],
--            "deadline": "<timestamptz>", "actor_id": ..., "actor_role": ..., "terminal": ...,
--            "reason": ..., "version": ..., "overrides": [...]}, ...]
-- Returns per booking k either its appointments (err_state NULL) or one row with the refusal.
--
-- A subtransaction holds no extra lock; the slot rows a booking takes stay locked until the batch
-- commits, as they would until its own commit. Batches stay small (the server caps them at 32):
-- past 64 subtransactions a backend's subtransaction cache overflows, which slows snapshots.
CREATE FUNCTION hy_book_batch(p_batch jsonb)
RETURNS TABLE (k integer, appointment_id bigint, order_id bigint, slot_id bigint, exam_code text,
               resource_id text, starts_at timestamptz, ends_at timestamptz,
               err_state text, err_message text, err_detail text, err_constraint text)
LANGUAGE plpgsql AS $$
DECLARE
    b     jsonb;
    done  jsonb;
BEGIN
    FOR b IN SELECT * FROM jsonb_array_elements(p_batch) LOOP
        k := (b ->> 'k')::integer;
        err_state := NULL; err_message := NULL; err_detail := NULL; err_constraint := NULL;
        BEGIN
            -- Collected first, returned after the block: rows of a booking that fails part-way
            -- must never reach the result.
            SELECT jsonb_agg(to_jsonb(r)) INTO done
              FROM hy_book(b ->> 'hold_id', (b ->> 'patient_id')::bigint, b ->> 'channel', b -> 'items',
                           (b ->> 'deadline')::timestamptz, (b ->> 'actor_id')::bigint, b ->> 'actor_role',
                           b ->> 'terminal', b ->> 'reason', (b ->> 'version')::bigint, b -> 'overrides') AS r;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, err_message = MESSAGE_TEXT,
                                    err_detail = PG_EXCEPTION_DETAIL, err_constraint = CONSTRAINT_NAME;
            done := NULL;
        END;
        IF err_state IS NOT NULL THEN
            appointment_id := NULL; order_id := NULL; slot_id := NULL; exam_code := NULL;
            resource_id := NULL; starts_at := NULL; ends_at := NULL;
            RETURN NEXT;
        ELSE
            RETURN QUERY
            SELECT k, (r ->> 'appointment_id')::bigint, (r ->> 'order_id')::bigint, (r ->> 'slot_id')::bigint,
                   r ->> 'exam_code', r ->> 'resource_id', (r ->> 'starts_at')::timestamptz,
                   (r ->> 'ends_at')::timestamptz, NULL::text, NULL::text, NULL::text, NULL::text
              FROM jsonb_array_elements(done) AS r;
        END IF;
    END LOOP;
END;
$$;

-- The rule-context reads of one booking or of several concurrent ones in one query
-- (app/db/booking_repo.booking_contexts; app/db/group_commit.py, ContextReads): hy_booking_context's
-- rows for each element of p_batch, [{"k": 0, "patient_id": .., "order_ids": [..], "slot_ids": [..],
-- "reach": "<interval>"}, ...], each tagged with its k. The same query as hy_booking_context
-- (sql/0017), which it replaces (dropped below), over all of them at once, with the same fence
-- around each patient's appointments and the same generic, index-only plan. The planner guesses 100 elements per
-- JSON array, and with that guess a generic plan hashes the whole slot table: only nested loops over
-- the indexes are allowed. No JIT either: the same guess puts the plan's cost past jit_above_cost, and
-- compiling it took 50 ms a call.
CREATE FUNCTION hy_booking_context_batch(p_batch jsonb)
RETURNS TABLE (k integer, n bigint, patient_id bigint, exam_code text, status text, day date, resource_id text,
               s bigint, e bigint, capable boolean, booking_version bigint, facts jsonb, appointments jsonb)
LANGUAGE plpgsql STABLE SET plan_cache_mode = force_generic_plan SET enable_seqscan = off
    SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH req AS (
        SELECT (b ->> 'k')::integer AS k, (b ->> 'patient_id')::bigint AS pid, (b ->> 'reach')::interval AS reach,
               t.n, t.order_id::bigint AS order_id, (b -> 'slot_ids' ->> (t.n - 1)::integer)::bigint AS slot_id
          FROM jsonb_array_elements(p_batch) AS b,
               jsonb_array_elements_text(b -> 'order_ids') WITH ORDINALITY AS t(order_id, n)),
    items AS (
        SELECT req.k, req.n, req.pid, req.reach, o.patient_id, o.exam_code, o.status, sl.day, sl.resource_id,
               sl.starts_at, sl.ends_at,
               EXISTS (SELECT 1 FROM exam_capability AS c
                        WHERE c.exam_code = o.exam_code AND c.resource_id = sl.resource_id) AS capable
          FROM req
          LEFT JOIN exam_order AS o ON o.id = req.order_id
          LEFT JOIN slot AS sl ON sl.id = req.slot_id),
    span AS (
        SELECT items.k, items.pid, min(items.starts_at) - items.reach AS lo, max(items.ends_at) + items.reach AS hi
          FROM items GROUP BY items.k, items.pid, items.reach),
    ctx AS (
        SELECT span.k, p.booking_version,
               (SELECT COALESCE(jsonb_object_agg(f.fact, f.value), '{}'::jsonb) FROM (
                    SELECT DISTINCT ON (pf.fact) pf.fact, pf.value FROM patient_fact AS pf
                     WHERE pf.patient_id = p.id ORDER BY pf.fact, pf.recorded_at DESC, pf.id DESC) AS f) AS facts,
               (SELECT COALESCE(jsonb_agg(jsonb_build_object(
                         'id', a.id, 'order_id', a.order_id, 'exam_code', a.exam_code,
                         's', extract(epoch FROM a.starts_at)::bigint, 'e', extract(epoch FROM a.ends_at)::bigint,
                         'resource_id', a.resource_id, 'campus_id', r.campus_id) ORDER BY a.starts_at), '[]'::jsonb)
                  FROM (SELECT * FROM appointment AS x WHERE x.patient_id = p.id OFFSET 0) AS a
                  JOIN resource AS r ON r.id = a.resource_id
                 WHERE a.status = 'booked' AND a.starts_at < span.hi AND a.ends_at > span.lo) AS appointments
          FROM span JOIN patient AS p ON p.id = span.pid)
    SELECT i.k, i.n, i.patient_id, i.exam_code, i.status, i.day, i.resource_id,
           extract(epoch FROM i.starts_at)::bigint, extract(epoch FROM i.ends_at)::bigint,
           i.capable, ctx.booking_version, ctx.facts, ctx.appointments
      FROM items AS i LEFT JOIN ctx ON ctx.k = i.k AND i.n = 1
     ORDER BY i.k, i.n;
END;
$$;

DROP FUNCTION hy_booking_context(bigint, bigint[], bigint[], interval);

-- hy_book_set: the same bookings as hy_book_batch, set-based. Each statement of hy_book runs once
-- for the whole batch instead of once per booking (PostgreSQL's cost per statement -- executor
-- start, constraint and trigger set-up, foreign-key checks -- is most of a booking's cost). For
-- single-slot bookings of distinct patients and distinct orders only (the server sends bundles
-- alone and holds a second booking of a patient or order back for the next call).
--
-- Same checks, same order, same refusals as hy_book, decided up front for every booking: the rows
-- they read are locked first (patients, then orders, then slots, each in id order), then each
-- booking gets its verdict, and only the accepted ones write. A slot takes the accepted bookings
-- in batch order up to its capacity; the capacity guard on the slot UPDATE stays, and if it ever
-- fails the whole call fails (BOOK_SET_GUARD) and the server falls back to hy_book_batch. No JIT:
-- the planner's guess of 100 elements per array can put a statement past jit_above_cost, and
-- compiling costs far more than running it.
CREATE TYPE hy_book_work AS (
    k integer, hold_id text, patient_id bigint, channel text, order_id bigint, slot_id bigint, pool text,
    item_hold_id text, deadline timestamptz, actor_id bigint, actor_role text, terminal text, reason text,
    version bigint, overrides jsonb,
    -- filled by the checks
    s_hospital text, s_resource text, s_day date, s_start timestamptz, s_end timestamptz,
    o_from text, o_exam text, o_no text, err text, err_detail text
);

CREATE FUNCTION hy_book_set(p_batch jsonb)
RETURNS TABLE (k integer, appointment_id bigint, order_id bigint, slot_id bigint, exam_code text,
               resource_id text, starts_at timestamptz, ends_at timestamptz,
               err_state text, err_message text, err_detail text, err_constraint text)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan SET jit = off AS $$
#variable_conflict use_column
DECLARE
    v_req    hy_book_work[];
    v_all    hy_book_work[];
    v_appts  bigint[];
    v_orders bigint[];
    v_slots  integer;
    v_n      integer;
BEGIN
    SELECT array_agg(ROW((b ->> 'k')::integer, b ->> 'hold_id', (b ->> 'patient_id')::bigint, b ->> 'channel',
                         (i ->> 'order_id')::bigint, (i ->> 'slot_id')::bigint, i ->> 'pool', i ->> 'hold_id',
                         (b ->> 'deadline')::timestamptz, (b ->> 'actor_id')::bigint, b ->> 'actor_role',
                         b ->> 'terminal', b ->> 'reason', (b ->> 'version')::bigint, b -> 'overrides',
                         NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)::hy_book_work
                     ORDER BY (b ->> 'k')::integer)
      INTO v_req
      FROM jsonb_array_elements(p_batch) AS b, LATERAL (SELECT b -> 'items' -> 0 AS i) AS it;

    IF (SELECT count(DISTINCT r.patient_id) <> count(*) OR count(DISTINCT r.order_id) <> count(*)
          FROM unnest(v_req) AS r) THEN
        RAISE EXCEPTION 'BOOK_SET_GUARD' USING DETAIL = 'a patient or an order twice in one batch';
    END IF;

    -- The rows the checks read, locked in one order (as hy_book takes them: patient, order, slot).
    PERFORM 1 FROM patient AS p WHERE p.id IN (SELECT r.patient_id FROM unnest(v_req) AS r) ORDER BY p.id FOR UPDATE;
    PERFORM 1 FROM exam_order AS o WHERE o.id IN (SELECT r.order_id FROM unnest(v_req) AS r) ORDER BY o.id FOR UPDATE;
    PERFORM 1 FROM slot AS s WHERE s.id IN (SELECT r.slot_id FROM unnest(v_req) AS r) ORDER BY s.id FOR UPDATE;

    -- Each booking's verdict, in hy_book's order of checks.
    WITH j AS (
        SELECT r.*, p.booking_version AS p_version, o.status AS o_status, o.patient_id AS o_patient,
               o.exam_code AS exam, o.order_no AS order_no, s.status AS s_status, s.booked AS s_booked,
               s.capacity AS s_capacity, s.hospital_id AS hospital, s.resource_id AS resource, s.day AS sday,
               s.starts_at AS sstart, s.ends_at AS send,
               EXISTS (SELECT 1 FROM exam_capability AS c
                        WHERE c.exam_code = o.exam_code AND c.resource_id = s.resource_id) AS capable,
               EXISTS (SELECT 1 FROM slot_lock AS l
                        WHERE l.resource_id = s.resource_id AND l.released_at IS NULL
                          AND l.starts_at < s.ends_at AND s.starts_at < l.ends_at
                          AND (l.channels IS NULL OR r.channel = ANY (l.channels))) AS locked
          FROM unnest(v_req) AS r
          LEFT JOIN patient AS p ON p.id = r.patient_id
          LEFT JOIN exam_order AS o ON o.id = r.order_id
          LEFT JOIN slot AS s ON s.id = r.slot_id),
    v AS (
        SELECT j.*, CASE
                   WHEN clock_timestamp() > j.deadline THEN 'HOLD_EXPIRED'
                   WHEN j.p_version IS NULL OR (j.version IS NOT NULL AND j.p_version <> j.version)
                       THEN 'PATIENT_CHANGED'
                   WHEN j.s_status IS NULL OR j.s_status <> 'open' OR j.s_booked >= j.s_capacity THEN 'SLOT_FULL'
                   WHEN j.o_status IS NULL OR j.o_patient <> j.patient_id OR j.o_status NOT IN ('ordered', 'no_show')
                       THEN 'ORDER_NOT_BOOKABLE'
                   WHEN NOT j.capable THEN 'EXAM_NOT_ON_RESOURCE'
               END AS first_err
          FROM j),
    w AS (
        SELECT v.*, row_number() OVER (PARTITION BY v.slot_id, v.first_err IS NULL ORDER BY v.k) AS place FROM v),
    x AS (
        SELECT w.*, COALESCE(w.first_err, CASE WHEN w.place > w.s_capacity - w.s_booked THEN 'SLOT_FULL'
                                               WHEN w.locked THEN 'SLOT_LOCKED' END) AS verdict
          FROM w)
    SELECT array_agg(ROW(x.k, x.hold_id, x.patient_id, x.channel, x.order_id, x.slot_id, x.pool, x.item_hold_id,
                         x.deadline, x.actor_id, x.actor_role, x.terminal, x.reason, x.version, x.overrides,
                         x.hospital, x.resource, x.sday, x.sstart, x.send, x.o_status, x.exam, x.order_no,
                         x.verdict,
                         CASE x.verdict WHEN 'HOLD_EXPIRED' THEN ''
                                        WHEN 'PATIENT_CHANGED' THEN x.patient_id::text
                                        WHEN 'ORDER_NOT_BOOKABLE' THEN x.order_id::text
                                        WHEN 'EXAM_NOT_ON_RESOURCE' THEN x.order_id::text
                                        ELSE x.slot_id::text END)::hy_book_work ORDER BY x.k)
      INTO v_all
      FROM x;

    -- The accepted bookings' rows, each kind in one statement.
    UPDATE patient AS p SET booking_version = p.booking_version + 1
      FROM unnest(v_all) AS a WHERE a.err IS NULL AND p.id = a.patient_id;
    INSERT INTO rule_override (order_id, rule_id, reason, actor_id, actor_role)
    SELECT (o ->> 'order_id')::bigint, o ->> 'rule_id', o ->> 'reason', a.actor_id, a.actor_role
      FROM unnest(v_all) AS a, jsonb_array_elements(COALESCE(a.overrides, '[]'::jsonb)) AS o
     WHERE a.err IS NULL;
    WITH ok AS (SELECT * FROM unnest(v_all) AS a WHERE a.err IS NULL),
    o AS (
        UPDATE exam_order AS o
           SET status = CASE WHEN o.paid_at IS NULL THEN 'booked' ELSE 'paid' END, updated_at = now()
          FROM ok WHERE o.id = ok.order_id
        RETURNING o.id, o.status),
    ap AS (
        INSERT INTO appointment (hospital_id, order_id, patient_id, slot_id, exam_code, resource_id, day,
                                 starts_at, ends_at, channel, pool, hold_id, booked_by)
        SELECT ok.s_hospital, ok.order_id, ok.patient_id, ok.slot_id, ok.o_exam, ok.s_resource, ok.s_day,
               ok.s_start, ok.s_end, ok.channel, ok.pool, COALESCE(ok.item_hold_id, ok.hold_id), ok.actor_id
          FROM ok ORDER BY ok.k
        RETURNING id, order_id),
    done AS (SELECT ok.*, ap.id AS appt, o.status AS o_to FROM ok JOIN ap ON ap.order_id = ok.order_id
                                                             JOIN o ON o.id = ok.order_id),
    ev AS (
        INSERT INTO order_event (order_id, appointment_id, event, from_status, to_status, actor_id, actor_role,
                                 channel, terminal, reason, detail)
        SELECT d.order_id, d.appt, 'booked', d.o_from, d.o_to, d.actor_id, d.actor_role, d.channel, d.terminal,
               d.reason, jsonb_build_object('slot_id', d.slot_id, 'resource_id', d.s_resource, 'starts_at', d.s_start)
          FROM done AS d ORDER BY d.k),
    ob AS (
        INSERT INTO outbox (topic, aggregate_id, payload)
        SELECT m.topic, m.aggregate_id, m.payload
          FROM done AS d CROSS JOIN LATERAL (VALUES
               (1, 'order.status', d.o_no,
                jsonb_build_object('order_id', d.order_id, 'order_no', d.o_no, 'event', 'booked', 'from', d.o_from,
                                   'to', d.o_to, 'appointment_id', d.appt, 'channel', d.channel,
                                   'reason', d.reason, 'at', now())),
               (2, 'appointment.booked', d.appt::text,
                jsonb_build_object('appointment_id', d.appt, 'order_id', d.order_id, 'slot_id', d.slot_id,
                                   'resource_id', d.s_resource, 'starts_at', d.s_start, 'ends_at', d.s_end,
                                   'channel', d.channel))) AS m(n, topic, aggregate_id, payload)
         ORDER BY d.k, m.n)
    SELECT array_agg(d.appt), array_agg(d.order_id) INTO v_appts, v_orders FROM done AS d;

    -- The capacity guard, as in hy_book: never more than a slot holds, whatever the checks said.
    SELECT count(DISTINCT a.slot_id) INTO v_slots FROM unnest(v_all) AS a WHERE a.err IS NULL;
    UPDATE slot AS t SET booked = t.booked + c.n
      FROM (SELECT a.slot_id, count(*) AS n FROM unnest(v_all) AS a WHERE a.err IS NULL GROUP BY a.slot_id) AS c
     WHERE t.id = c.slot_id AND t.status = 'open' AND t.booked + c.n <= t.capacity;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    IF v_n <> v_slots THEN
        RAISE EXCEPTION 'BOOK_SET_GUARD' USING DETAIL = format('%s of %s slots', v_n, v_slots);
    END IF;

    RETURN QUERY
    SELECT a.k, d.appt, a.order_id, a.slot_id, a.o_exam, a.s_resource, a.s_start, a.s_end,
           NULL::text, NULL::text, NULL::text, NULL::text
      FROM unnest(v_all) AS a JOIN unnest(v_appts, v_orders) AS d(appt, order_id) ON d.order_id = a.order_id
     WHERE a.err IS NULL
    UNION ALL
    SELECT a.k, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'P0001', a.err, a.err_detail, NULL
      FROM unnest(v_all) AS a WHERE a.err IS NOT NULL;
END;
$$;
