-- 0009: report turnaround targets for the closed-loop KPIs (DOMAIN.md section 5), per patient class
-- and modality, in minutes from the end of the exam to the verified report. Hospitals edit them.
CREATE TABLE report_target (
    patient_class text NOT NULL CHECK (patient_class IN ('outpatient', 'inpatient', 'emergency', 'checkup')),
    modality      text NOT NULL,
    minutes       integer NOT NULL CHECK (minutes > 0),
    PRIMARY KEY (patient_class, modality)
);
INSERT INTO report_target (patient_class, modality, minutes) VALUES
    ('emergency', 'DX', 30),
    ('emergency', 'CT', 60),
    ('emergency', 'MR', 60),
    ('outpatient', 'CT', 240),
    ('outpatient', 'MR', 240),
    ('inpatient', 'CT', 360),
    ('inpatient', 'MR', 360);

-- The KPIs read the order events of one day by kind.
CREATE INDEX order_event_kind_at ON order_event (event, at);
