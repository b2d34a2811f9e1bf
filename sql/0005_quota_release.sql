-- Reserved quotas released to the open pool at a set time (DOMAIN §3): e.g. the ward's reserve
-- for day D goes to everyone at 16:00 on D-1. Each (day, channel) is released once.
CREATE TABLE quota_release_rule (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    hospital_id text NOT NULL REFERENCES hospital (id),
    channel     text NOT NULL,
    days_before integer NOT NULL CHECK (days_before BETWEEN 0 AND 14),
    at_time     time NOT NULL,
    active      boolean NOT NULL DEFAULT true,
    UNIQUE (hospital_id, channel)
);

CREATE TABLE quota_release_done (
    hospital_id text NOT NULL REFERENCES hospital (id),
    day         date NOT NULL,
    channel     text NOT NULL,
    released_at timestamptz NOT NULL DEFAULT now(),
    places      integer NOT NULL,
    PRIMARY KEY (hospital_id, day, channel)
);
