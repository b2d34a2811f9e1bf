-- Display devices (waiting-room call screens, slot-availability screens in the halls): an admin
-- issues each a token (only its SHA-256 is kept) scoped to what it may show, and revokes it.
CREATE TABLE display_device (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    hospital_id  text NOT NULL REFERENCES hospital (id),
    name         text NOT NULL,
    scopes       text[] NOT NULL,              -- e.g. 'grid:RAD' (a department's live grid), 'queue:CT1'
    token_hash   text NOT NULL UNIQUE,
    created_by   bigint,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    revoked_by   bigint,
    last_seen_at timestamptz,
    last_seen_ip text
);
