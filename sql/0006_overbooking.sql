-- 加号: places added to a slot beyond its template by an authorised role, with the reason.
ALTER TABLE slot ADD COLUMN overbooked integer NOT NULL DEFAULT 0 CHECK (overbooked >= 0);

CREATE TABLE slot_overbook (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slot_id     bigint NOT NULL REFERENCES slot (id),
    places      integer NOT NULL CHECK (places > 0),
    reason      text NOT NULL,
    actor_id    bigint,
    actor_role  text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);
