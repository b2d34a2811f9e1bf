-- Outbound fan-out once per INSERT statement instead of once per outbox row.
--
-- 0011's row trigger ran a PL/pgSQL call and a query of outbound_destination for every outbox row,
-- two per booking, even with no destination configured. A group commit (0018) writes the outbox
-- rows of a whole batch in one statement: with a transition table, one query fans them all out.
-- Rows the BEFORE trigger drops (a duplicate notice, outbox_notice_dedupe) are not in the
-- transition table, as they never reached the old AFTER row trigger either.

DROP TRIGGER outbox_fanout ON outbox;
DROP FUNCTION hy_outbox_fanout();

CREATE FUNCTION hy_outbox_fanout() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox_delivery (destination, outbox_id, order_key)
    SELECT d.name, n.id,
           CASE WHEN n.payload ? 'order_id' THEN 'order:' || (n.payload ->> 'order_id')
                ELSE n.topic || ':' || n.aggregate_id END
      FROM inserted AS n
      JOIN outbound_destination AS d ON d.active AND n.topic = ANY (d.topics)
     ORDER BY n.id, d.name;
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_fanout AFTER INSERT ON outbox
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION hy_outbox_fanout();
