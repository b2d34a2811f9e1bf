-- 0003: smart booking. The medical rule table (every rule is data, editable per hospital), the
-- patient facts the rules read.

-- Categories a rule can select exams by, beyond modality and the flags (e.g. 'upper_abdomen_us').
ALTER TABLE exam_type ADD COLUMN tags text[] NOT NULL DEFAULT '{}';

CREATE TABLE booking_rule (
    hospital_id    text NOT NULL REFERENCES hospital (id),
    id             text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('same_day_order', 'min_gap', 'time_of_day', 'prep_window',
                                                 'prerequisite', 'contraindication', 'travel_gap')),
    severity       text NOT NULL CHECK (severity IN ('block', 'warn')),
    enabled        boolean NOT NULL DEFAULT true,
    a              jsonb NOT NULL DEFAULT '{}',   -- selector of the exams the rule is about
    b              jsonb,                          -- the second selector of two-exam rules
    params         jsonb NOT NULL DEFAULT '{}',
    message        text NOT NULL,                  -- Chinese explanation template
    override_roles text[] NOT NULL DEFAULT '{}',   -- who may override a 'warn' rule, with a reason
    updated_at     timestamptz NOT NULL DEFAULT now(),
    updated_by     bigint,
    PRIMARY KEY (hospital_id, id)
);

-- What the rules know about a patient: implants, allergies, eGFR, pregnancy, anaesthesia
-- assessment... Each value is kept with its source and time; the latest per fact counts.
CREATE TABLE patient_fact (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    patient_id  bigint NOT NULL REFERENCES patient (id),
    fact        text NOT NULL,
    value       jsonb NOT NULL,
    source      text NOT NULL CHECK (source IN ('his', 'order', 'desk', 'patient', 'clinician')),
    recorded_by bigint,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX patient_fact_latest ON patient_fact (patient_id, fact, recorded_at DESC, id DESC);
