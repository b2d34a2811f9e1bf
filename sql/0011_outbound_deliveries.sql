-- 0011: delivery of the outbox to the hospital's other systems: HL7 v2 peers (SIU over MLLP) and
-- webhook subscribers (queue calling, electronic signature, mobile nursing). See docs/outbound.md.
--
-- The outbox is shared: its own delivered_at / attempts belong to the patient-notice relay. Each
-- outbound destination gets its own delivery row per outbox row, written by a trigger in the very
-- transaction that writes the outbox row, so no event can slip past a destination (no cursor that a
-- late-committing transaction could fall behind). A destination hears the events written while it
-- is active, not the history before it was configured.
--
-- PostgreSQL-only features used (noted for openGauss / KingbaseES): a PL/pgSQL trigger, text[],
-- jsonb operators, a partial index, identity columns.

-- One row per destination: 'hl7:<peer name>' (synchronised from the settings by the relay) or
-- 'webhook:<subscription id>'. A destination whose peer is down is paused until `paused_until`
-- (backoff on consecutive transport failures): its messages wait, nobody else's.
CREATE TABLE outbound_destination (
    name          text PRIMARY KEY,
    kind          text NOT NULL CHECK (kind IN ('hl7', 'webhook')),
    topics        text[] NOT NULL,
    active        boolean NOT NULL DEFAULT true,
    failures      integer NOT NULL DEFAULT 0,
    paused_until  timestamptz,                 -- NULL: not paused
    last_error    text,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Webhook subscriptions. The secret signs the deliveries (HMAC-SHA256), so it is kept as given (not
-- hashed); it is shown once, at creation. Encryption at rest is the security issue's work.
CREATE TABLE webhook_subscription (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    hospital_id  text NOT NULL REFERENCES hospital (id),
    name         text NOT NULL,
    url          text NOT NULL,
    secret       text NOT NULL,
    topics       text[] NOT NULL,
    created_by   bigint,
    created_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at   timestamptz,
    deleted_by   bigint
);

-- One outbox row for one destination. order_key orders the deliveries: the exam order's id for
-- every appointment and order event (a reschedule makes a new appointment id; the order stays), else
-- topic:aggregate. No foreign key to outbox, so the outbox can be archived independently.
CREATE TABLE outbox_delivery (
    destination      text NOT NULL,
    outbox_id        bigint NOT NULL,
    order_key        text NOT NULL,
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'delivered', 'skipped', 'failed', 'dropped')),
    attempts         integer NOT NULL DEFAULT 0,
    refusals         integer NOT NULL DEFAULT 0,   -- AE / AR answers, HTTP 4xx
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    done_at          timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (destination, outbox_id)
);
CREATE INDEX outbox_delivery_pending ON outbox_delivery (destination, order_key, outbox_id) WHERE state = 'pending';
CREATE INDEX outbox_delivery_failed ON outbox_delivery (destination, outbox_id) WHERE state = 'failed';

CREATE FUNCTION hy_outbox_fanout() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox_delivery (destination, outbox_id, order_key)
    SELECT d.name, NEW.id,
           CASE WHEN NEW.payload ? 'order_id' THEN 'order:' || (NEW.payload ->> 'order_id')
                ELSE NEW.topic || ':' || NEW.aggregate_id END
      FROM outbound_destination AS d
     WHERE d.active AND NEW.topic = ANY (d.topics);
    RETURN NULL;
END;
$$;

-- AFTER INSERT: a notice row dropped by the dedupe trigger (BEFORE) never reaches here.
CREATE TRIGGER outbox_fanout AFTER INSERT ON outbox
    FOR EACH ROW EXECUTE FUNCTION hy_outbox_fanout();
