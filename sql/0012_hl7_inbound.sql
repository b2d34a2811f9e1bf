-- 0012: HL7 v2 messages received over MLLP (orders ORM^O01 / OMG^O19, patients ADT^A01/A04/A08).
-- See docs/hl7-inbound.md.
--
-- One row per message answered. A message applied (AA) or refused for its content (AE) is recorded
-- in the same transaction as its effects, with the ACK it got: a second copy (same sender and
-- MSH-10) gets that ACK again and changes nothing. A rejected message (AR: unreadable, unsupported,
-- or a transient failure) had no effect; its row is a log entry only, and a corrected copy with the
-- same MSH-10 is processed afresh. The message itself is not kept (it carries personal data).
--
-- PostgreSQL-only features used (noted for openGauss / KingbaseES): an identity column, jsonb, a
-- partial unique index (the target of INSERT ... ON CONFLICT).

CREATE TABLE hl7_inbound_message (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    hospital_id          text NOT NULL REFERENCES hospital (id),
    sending_application  text NOT NULL DEFAULT '',   -- MSH-3
    sending_facility     text NOT NULL DEFAULT '',   -- MSH-4
    control_id           text NOT NULL DEFAULT '',   -- MSH-10 ('' when unreadable)
    message_type         text NOT NULL DEFAULT '',   -- MSH-9, e.g. ORM^O01
    charset              text NOT NULL DEFAULT '',   -- the Python codec the message was read with
    status               text NOT NULL CHECK (status IN ('AA', 'AE', 'AR')),
    error_code           text,                       -- HL7 table 0357 (101 required field missing, ...)
    error                text,                       -- the reason, as given in ERR / MSA-3
    ack                  text NOT NULL,              -- the ACK as sent (ER7, decoded), replayed to duplicates
    patient_id           bigint,
    detail               jsonb NOT NULL DEFAULT '{}', -- order ids and controls applied; never names or numbers
    peer                 text NOT NULL DEFAULT '',
    received_at          timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX hl7_inbound_message_once
    ON hl7_inbound_message (sending_facility, sending_application, control_id)
    WHERE status IN ('AA', 'AE');
CREATE INDEX hl7_inbound_message_received ON hl7_inbound_message (received_at);
