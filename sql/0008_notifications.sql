-- 0008: patient notifications (reminders and notices) delivered from the outbox (app/notify/).
--
-- A message for a patient is an outbox row with topic 'patient.notice' (aggregate_id = patient id,
-- payload {"kind", "message", optional "appointment_id", "dedupe", "expires_at"}). The relay
-- (app/notify/relay.py) sends a patient's messages in outbox order; a failure keeps the row with a
-- later next_attempt_at; a message that can never be sent is set aside with dead_at and last_error.
-- PostgreSQL-only features used here (noted for openGauss / KingbaseES): a PL/pgSQL trigger, jsonb
-- operators, partial indexes.

-- WeChat template messages need the patient's openid (bound by the WeChat channel); without one the
-- patient gets an SMS.
ALTER TABLE patient ADD COLUMN wechat_openid text;

ALTER TABLE outbox ADD COLUMN last_error text;
ALTER TABLE outbox ADD COLUMN dead_at timestamptz;

-- The relay's work: each patient's undelivered notices in order.
CREATE INDEX outbox_notice_pending ON outbox (aggregate_id, id)
    WHERE topic = 'patient.notice' AND delivered_at IS NULL AND dead_at IS NULL;

-- A notice whose payload carries "dedupe" is queued at most once per key, whoever inserts it
-- (booking_repo.insert_notice, the reminder sweep...): the trigger drops the second insert, in the
-- inserting transaction, so a rolled-back first insert does not block a later one.
CREATE TABLE notice_dedupe (
    key         text PRIMARY KEY,
    outbox_id   bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION hy_notice_dedupe() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.topic = 'patient.notice' AND NEW.payload ? 'dedupe' THEN
        INSERT INTO notice_dedupe (key, outbox_id) VALUES (NEW.payload ->> 'dedupe', NEW.id)
        ON CONFLICT (key) DO NOTHING;
        IF NOT FOUND THEN
            RETURN NULL;  -- queued already: skip this row
        END IF;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER outbox_notice_dedupe BEFORE INSERT ON outbox
    FOR EACH ROW EXECUTE FUNCTION hy_notice_dedupe();

-- What the development sender "sent": the demo shows these. message_id is unique, as a real
-- gateway's client message id is: a retried send is recorded once.
CREATE TABLE notice_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id  text NOT NULL UNIQUE,
    patient_id  bigint NOT NULL,
    channel     text NOT NULL CHECK (channel IN ('sms', 'wechat', 'none')),
    destination text NOT NULL,          -- masked: 138****5678
    kind        text NOT NULL,
    text        text NOT NULL,
    sent_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notice_log_sent ON notice_log (sent_at DESC, id DESC);
CREATE INDEX notice_log_patient ON notice_log (patient_id, id);

-- The notice sweeps look for recent cancellations and published reports.
CREATE INDEX appointment_cancelled_at ON appointment (ended_at) WHERE status = 'cancelled';
CREATE INDEX order_event_published_at ON order_event (at) WHERE to_status = 'published';
