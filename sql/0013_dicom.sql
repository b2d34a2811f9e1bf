-- 0013: DICOM Modality Performed Procedure Step (MPPS) instances (app/integrations/dicom/mpps.py).
--
-- A modality announces an exam with N-CREATE (IN PROGRESS) under a SOP Instance UID of its own and
-- ends it with N-SET (COMPLETED or DISCONTINUED) on that UID. This table maps the UID to the order
-- and the appointment it performs, keeps the step's state (so a second N-CREATE on the same UID is
-- answered "duplicate SOP instance", an N-SET on an unknown UID "no such SOP instance", and an N-SET
-- on a finished step "may no longer be updated"), and the step's attributes as DICOM JSON, merged
-- with every N-SET, for the record.
-- PostgreSQL-only features used: jsonb.

CREATE TABLE mpps_instance (
    sop_instance_uid  text PRIMARY KEY CHECK (length(sop_instance_uid) <= 64),
    hospital_id       text NOT NULL,
    order_id          bigint NOT NULL REFERENCES exam_order (id),
    appointment_id    bigint NOT NULL REFERENCES appointment (id),
    station_ae        text NOT NULL DEFAULT '',      -- Performed Station AE Title (or the calling AE)
    calling_ae        text NOT NULL DEFAULT '',      -- the association's calling AE title
    status            text NOT NULL DEFAULT 'IN PROGRESS'
                      CHECK (status IN ('IN PROGRESS', 'COMPLETED', 'DISCONTINUED')),
    reason            text NOT NULL DEFAULT '',      -- why it was discontinued
    attributes        jsonb NOT NULL DEFAULT '{}',   -- the step's attributes, DICOM JSON model (PS3.18 F.2)
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    ended_at          timestamptz
);
CREATE INDEX mpps_instance_order ON mpps_instance (order_id);
