-- 0018: group commit (load-and-resilience issue). Bookings that reach one server process while an
-- earlier batch is still in PostgreSQL are sent together (app/db/group_commit.py) and committed by
-- one call of hy_book_batch: one round trip and one commit for all of them, where each booking
-- used to pay for its own. Each booking is still its own all-or-nothing unit: hy_book runs in a
-- subtransaction per booking, so a refused booking (SLOT_FULL, PATIENT_CHANGED, ...) rolls back its
-- own rows and locks and nothing of the others. Its refusal comes back as a row (SQLSTATE, message,
-- detail, constraint) that the server turns into the same error a lone call would have raised.
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

-- The rule-context reads of concurrent bookings in one round trip (app/db/group_commit.py,
-- ContextReads): hy_booking_context per element of p_batch, [{"k": 0, "patient_id": ..,
-- "order_ids": [..], "slot_ids": [..], "reach": "<interval>"}, ...], each row tagged with its k.
CREATE FUNCTION hy_booking_context_batch(p_batch jsonb)
RETURNS TABLE (k integer, n bigint, patient_id bigint, exam_code text, status text, day date, resource_id text,
               s bigint, e bigint, capable boolean, booking_version bigint, facts jsonb, appointments jsonb)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE
    b jsonb;
BEGIN
    FOR b IN SELECT * FROM jsonb_array_elements(p_batch) LOOP
        RETURN QUERY
        SELECT (b ->> 'k')::integer, c.*
          FROM hy_booking_context((b ->> 'patient_id')::bigint,
                                  ARRAY(SELECT x::bigint FROM jsonb_array_elements_text(b -> 'order_ids') AS x),
                                  ARRAY(SELECT x::bigint FROM jsonb_array_elements_text(b -> 'slot_ids') AS x),
                                  (b ->> 'reach')::interval) AS c;
    END LOOP;
END;
$$;
