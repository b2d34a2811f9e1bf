-- 0001: the core schema of the booking platform.
-- Reference data (hospital, campus, department, resource, exam type) uses stable text codes that the
-- hospital's own systems know; transactional rows use bigint identities.
-- PostgreSQL-only features used here (noted for openGauss / KingbaseES portability): jsonb,
-- identity columns, partial unique indexes, text[] arrays.

CREATE TABLE hospital (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    short_name  text NOT NULL,
    timezone    text NOT NULL DEFAULT 'Asia/Shanghai'
);

CREATE TABLE campus (
    id          text PRIMARY KEY,
    hospital_id text NOT NULL REFERENCES hospital (id),
    name        text NOT NULL,
    address     text NOT NULL DEFAULT ''
);

-- Both the exam departments (医技科室) and the ordering departments and wards live here.
CREATE TABLE department (
    id          text PRIMARY KEY,
    hospital_id text NOT NULL REFERENCES hospital (id),
    campus_id   text NOT NULL REFERENCES campus (id),
    name        text NOT NULL,
    category    text NOT NULL CHECK (category IN ('radiology', 'ultrasound', 'endoscopy', 'ecg', 'clinical', 'ward')),
    sensitive   boolean NOT NULL DEFAULT false,
    location    text NOT NULL DEFAULT ''
);

CREATE TABLE resource (
    id            text PRIMARY KEY,
    hospital_id   text NOT NULL REFERENCES hospital (id),
    department_id text NOT NULL REFERENCES department (id),
    campus_id     text NOT NULL REFERENCES campus (id),
    kind          text NOT NULL CHECK (kind IN ('device', 'room', 'physician')),
    modality      text NOT NULL,
    name          text NOT NULL,
    location      text NOT NULL DEFAULT '',
    active        boolean NOT NULL DEFAULT true
);

CREATE TABLE exam_type (
    code          text PRIMARY KEY,
    name          text NOT NULL,
    modality      text NOT NULL,
    department_id text NOT NULL REFERENCES department (id),
    body_part     text NOT NULL DEFAULT '',
    duration_min  integer NOT NULL CHECK (duration_min > 0),
    fasting       boolean NOT NULL DEFAULT false,
    full_bladder  boolean NOT NULL DEFAULT false,
    contrast      text CHECK (contrast IN ('iodine', 'gadolinium', 'barium', 'ultrasound')),
    anaesthesia   boolean NOT NULL DEFAULT false,
    prep_text     text NOT NULL DEFAULT '',
    active        boolean NOT NULL DEFAULT true
);

CREATE TABLE exam_capability (
    exam_code   text NOT NULL REFERENCES exam_type (code),
    resource_id text NOT NULL REFERENCES resource (id),
    PRIMARY KEY (exam_code, resource_id)
);
CREATE INDEX exam_capability_resource ON exam_capability (resource_id);

-- A weekly pattern: on `weekday` (ISO, 1 = Monday) the resource opens windows of `window_min`
-- minutes from start_time to end_time, each with `capacity` places, of which `quotas` reserves
-- some per channel ({"ward": 2, "emergency": 1}); the rest is the open pool.
CREATE TABLE slot_template (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    resource_id text NOT NULL REFERENCES resource (id),
    weekday     smallint NOT NULL CHECK (weekday BETWEEN 1 AND 7),
    start_time  time NOT NULL,
    end_time    time NOT NULL,
    window_min  integer NOT NULL CHECK (window_min BETWEEN 5 AND 240),
    capacity    integer NOT NULL CHECK (capacity > 0),
    quotas      jsonb NOT NULL DEFAULT '{}',
    valid_from  date NOT NULL DEFAULT DATE '2000-01-01',
    valid_to    date,
    active      boolean NOT NULL DEFAULT true,
    CHECK (end_time > start_time)
);
CREATE INDEX slot_template_resource ON slot_template (resource_id, weekday);

CREATE TABLE slot (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    hospital_id text NOT NULL REFERENCES hospital (id),
    resource_id text NOT NULL REFERENCES resource (id),
    template_id bigint REFERENCES slot_template (id),
    day         date NOT NULL,
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz NOT NULL,
    capacity    integer NOT NULL CHECK (capacity >= 0),
    quotas      jsonb NOT NULL DEFAULT '{}',
    booked      integer NOT NULL DEFAULT 0,
    status      text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    -- PostgreSQL's own guard against overselling, whatever Redis says.
    CHECK (booked >= 0 AND booked <= capacity),
    CHECK (ends_at > starts_at),
    UNIQUE (resource_id, starts_at)
);
CREATE INDEX slot_day ON slot (hospital_id, day);

-- A lock closes the windows it covers, for every channel (channels IS NULL) or only some.
CREATE TABLE slot_lock (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    hospital_id text NOT NULL REFERENCES hospital (id),
    resource_id text NOT NULL REFERENCES resource (id),
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz NOT NULL,
    channels    text[],
    kind        text NOT NULL CHECK (kind IN ('maintenance', 'training', 'expert_limit', 'other')),
    reason      text NOT NULL,
    created_by  bigint,
    created_at  timestamptz NOT NULL DEFAULT now(),
    released_at timestamptz,
    released_by bigint,
    CHECK (ends_at > starts_at)
);
CREATE INDEX slot_lock_active ON slot_lock (resource_id, starts_at) WHERE released_at IS NULL;

CREATE TABLE patient (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    hospital_id  text NOT NULL REFERENCES hospital (id),
    mrn          text NOT NULL UNIQUE,          -- 就诊卡号 / 病历号
    name         text NOT NULL,
    gender       text NOT NULL CHECK (gender IN ('M', 'F', 'U')),
    birth_date   date NOT NULL,
    id_number    text,                          -- 身份证号; encrypted at rest by the security issue
    phone        text,
    insurance_no text,
    -- Bumped by every booking of the patient: the rule check reads it, and a booking commits only
    -- if nobody booked for the patient in between (two clerks booking two contrast exams at once).
    booking_version bigint NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- An exam order as the HIS sends it. status follows the closed loop (ordered -> booked -> ...).
CREATE TABLE exam_order (
    id                     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_no               text NOT NULL UNIQUE,
    hospital_id            text NOT NULL REFERENCES hospital (id),
    patient_id             bigint NOT NULL REFERENCES patient (id),
    exam_code              text NOT NULL REFERENCES exam_type (code),
    ordering_department_id text NOT NULL REFERENCES department (id),
    ordering_doctor        text NOT NULL,
    patient_class          text NOT NULL CHECK (patient_class IN ('outpatient', 'inpatient', 'emergency', 'checkup')),
    priority               text NOT NULL DEFAULT 'routine' CHECK (priority IN ('routine', 'urgent', 'emergency')),
    ward_id                text REFERENCES department (id),
    bed_no                 text,
    clinical_note          text NOT NULL DEFAULT '',
    status                 text NOT NULL DEFAULT 'ordered',
    ordered_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX exam_order_patient ON exam_order (patient_id, status);

-- hospital_id, exam_code and resource_id are copied from the slot and the order (which carry the
-- foreign keys): a foreign key to those few hot reference rows would take a shared row lock on the
-- same hospital, exam type and resource row in every concurrent booking.
CREATE TABLE appointment (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    hospital_id   text NOT NULL,
    order_id      bigint NOT NULL REFERENCES exam_order (id),
    patient_id    bigint NOT NULL REFERENCES patient (id),
    slot_id       bigint NOT NULL REFERENCES slot (id),
    exam_code     text NOT NULL,
    resource_id   text NOT NULL,
    day           date NOT NULL,
    starts_at     timestamptz NOT NULL,
    ends_at       timestamptz NOT NULL,
    channel       text NOT NULL,
    pool          text NOT NULL,               -- 'open' or the channel whose reserved quota it took
    status        text NOT NULL DEFAULT 'booked'
                  CHECK (status IN ('booked', 'cancelled', 'rescheduled')),
    hold_id       text NOT NULL,
    booked_by     bigint,
    booked_at     timestamptz NOT NULL DEFAULT now(),
    ended_at      timestamptz,
    end_reason    text,
    replaced_by   bigint REFERENCES appointment (id)
);
-- One live appointment per order, whatever Redis says.
CREATE UNIQUE INDEX appointment_one_live_per_order ON appointment (order_id) WHERE status = 'booked';
CREATE INDEX appointment_slot ON appointment (slot_id) WHERE status = 'booked';
CREATE INDEX appointment_patient ON appointment (patient_id, starts_at);
CREATE INDEX appointment_hold ON appointment (hold_id);
CREATE INDEX appointment_day ON appointment (hospital_id, day) WHERE status = 'booked';

-- Every state change of an order: who, when, from which terminal and channel, and why.
CREATE TABLE order_event (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id       bigint NOT NULL REFERENCES exam_order (id),
    appointment_id bigint REFERENCES appointment (id),
    event          text NOT NULL,
    from_status    text,
    to_status      text,
    actor_id       bigint,
    actor_role     text NOT NULL,
    channel        text NOT NULL,
    terminal       text NOT NULL DEFAULT '',
    reason         text NOT NULL DEFAULT '',
    detail         jsonb NOT NULL DEFAULT '{}',
    at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX order_event_order ON order_event (order_id, id);

-- A rule (booking_rule, migration 0003) that an authorised role set aside, with the reason.
CREATE TABLE rule_override (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id    bigint NOT NULL REFERENCES exam_order (id),
    rule_id     text NOT NULL,
    reason      text NOT NULL,
    actor_id    bigint,
    actor_role  text NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}',
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rule_override_order ON rule_override (order_id);

-- Messages other systems must hear of, written in the same transaction as the change.
CREATE TABLE outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic           text NOT NULL,
    aggregate_id    text NOT NULL,
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz
);
CREATE INDEX outbox_pending ON outbox (next_attempt_at) WHERE delivered_at IS NULL;

CREATE TABLE role (
    code    text PRIMARY KEY,
    name_zh text NOT NULL
);

CREATE TABLE staff_user (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    hospital_id   text NOT NULL REFERENCES hospital (id),
    username      text NOT NULL UNIQUE,
    display_name  text NOT NULL,
    password_hash text NOT NULL,
    department_id text REFERENCES department (id),
    patient_id    bigint REFERENCES patient (id),   -- set for a patient's own account
    active        boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE staff_role (
    user_id   bigint NOT NULL REFERENCES staff_user (id),
    role_code text NOT NULL REFERENCES role (code),
    PRIMARY KEY (user_id, role_code)
);

-- Only a hash of the token is kept: a stolen table gives no usable session.
CREATE TABLE staff_session (
    token_hash  text PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES staff_user (id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    terminal    text NOT NULL DEFAULT '',
    ip          text NOT NULL DEFAULT ''
);
CREATE INDEX staff_session_user ON staff_session (user_id);

-- Who read or changed personal data. Append-only hardening comes with the security issue.
CREATE TABLE audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor_id    bigint,
    actor_role  text NOT NULL,
    action      text NOT NULL,
    object_type text NOT NULL,
    object_id   text NOT NULL,
    patient_id  bigint,
    ip          text NOT NULL DEFAULT '',
    detail      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_patient ON audit_log (patient_id, at);

INSERT INTO role (code, name_zh) VALUES
    ('doctor', '临床医生'),
    ('nurse', '病区护士'),
    ('clerk', '预约中心工作人员'),
    ('technician', '医技科室技师'),
    ('dept_admin', '科室管理员'),
    ('dept_head', '科室主任'),
    ('sys_admin', '系统管理员'),
    ('patient', '患者'),
    ('display', '显示终端');
