-- tidings: audit. Tamper evidence, a view for auditors, and their role.
--
-- Invariants added here
--   I8  Every event carries `hash` = SHA-256(previous event's hash || the
--       event's canonical encoding), chained per recipient in `seq` order;
--       the first event's previous hash is empty. Computed here, in the
--       database, so rows appended by any SQL client are chained too.
--       Editing, deleting or reordering an event breaks the chain from that
--       event on; `tidings verify` finds the first broken link.
--       It does not stop a superuser who rewrites a whole chain from the
--       edited event to its end: against that, keep the chain heads
--       (`tidings verify --heads`) somewhere the database cannot reach.
--   I9  Auditors (role tidings_auditor) can read the history and nothing
--       else.

ALTER TABLE tidings.notifications ADD COLUMN hash bytea;
ALTER TABLE tidings.reads ADD COLUMN hash bytea;

-- The canonical encodings: a JSON array of every field that matters, in a
-- fixed order, as PostgreSQL's jsonb prints it (deterministic), with the
-- time as integer microseconds since the epoch (no time zone involved).
-- `tidings verify` rebuilds the same text with built-in functions only and
-- hashes it itself, so redefining these functions cannot fake a clean chain.
CREATE FUNCTION tidings.canonical(n tidings.notifications) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
    SELECT convert_to(jsonb_build_array('notification', n.recipient, n.seq, n.id, n.kind,
        n.payload, n.idempotency_key, (extract(epoch FROM n.created_at) * 1000000)::bigint)::text, 'UTF8');
$$;

CREATE FUNCTION tidings.canonical(r tidings.reads) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
    SELECT convert_to(jsonb_build_array('read', r.recipient, r.seq, r.id, to_jsonb(r.notification_ids),
        (extract(epoch FROM r.created_at) * 1000000)::bigint)::text, 'UTF8');
$$;

-- next_seq (0001) becomes next_link: the next seq of `who` *and* the hash
-- it chains to, found by the same lookups, so chaining costs no extra
-- query. Same locking and caching as before (see 0001).
DROP FUNCTION tidings.next_seq(text);

CREATE FUNCTION tidings.next_link(who text, OUT seq bigint, OUT previous bytea)
LANGUAGE plpgsql AS $$
DECLARE
    last bigint;
    notification_seq bigint;
    notification_hash bytea;
    read_seq bigint;
    read_hash bytea;
BEGIN
    IF current_setting('tidings.cached_recipient', true) = who THEN
        seq := current_setting('tidings.cached_seq')::bigint + 1;
        previous := decode(current_setting('tidings.cached_hash'), 'hex');
        RETURN;
    END IF;

    SELECT last_seq INTO last FROM tidings.recipients WHERE recipient = who FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO tidings.recipients (recipient, last_seq) VALUES (who, 0)
        ON CONFLICT DO NOTHING;
        SELECT last_seq INTO last FROM tidings.recipients WHERE recipient = who FOR UPDATE;
    END IF;

    -- The latest event in each table (fresh snapshot, and rows inserted
    -- earlier by the statement that fired us are visible).
    SELECT n.seq, n.hash INTO notification_seq, notification_hash FROM tidings.notifications n
     WHERE n.recipient = who ORDER BY n.seq DESC LIMIT 1;
    SELECT r.seq, r.hash INTO read_seq, read_hash FROM tidings.reads r
     WHERE r.recipient = who ORDER BY r.seq DESC LIMIT 1;
    seq := greatest(last, notification_seq, read_seq, 0) + 1;
    previous := CASE WHEN coalesce(notification_seq, 0) >= coalesce(read_seq, 0)
                     THEN notification_hash ELSE read_hash END;
    previous := coalesce(previous, '\x'::bytea);
END;
$$;

-- The insert triggers of 0001, now also chaining each event (I8). The
-- cache gains the hash next to the seq, so a bulk insert sorted by
-- recipient looks nothing up.
CREATE OR REPLACE FUNCTION tidings.assign_notification_seq() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    previous bytea;
BEGIN
    IF current_setting('tidings.cached_recipient', true) = NEW.recipient THEN
        NEW.seq := current_setting('tidings.cached_seq')::bigint + 1;
        previous := decode(current_setting('tidings.cached_hash'), 'hex');
    ELSE
        SELECT l.seq, l.previous INTO NEW.seq, previous FROM tidings.next_link(NEW.recipient) l;
    END IF;

    -- I5. We hold the recipient's lock, so a concurrent insert of the same
    -- key has either committed (and is seen) or rolled back.
    IF NEW.idempotency_key IS NOT NULL AND EXISTS (
        SELECT 1 FROM tidings.notifications
         WHERE recipient = NEW.recipient AND idempotency_key = NEW.idempotency_key
    ) THEN
        RETURN NULL; -- skip the row, like ON CONFLICT DO NOTHING; no seq used
    END IF;

    NEW.created_at := now();
    NEW.hash := sha256(previous || tidings.canonical(NEW));
    PERFORM set_config('tidings.cached_recipient', NEW.recipient, true),
            set_config('tidings.cached_seq', NEW.seq::text, true),
            set_config('tidings.cached_hash', encode(NEW.hash, 'hex'), true);
    RETURN NEW;
END;
$$;

CREATE OR REPLACE FUNCTION tidings.assign_read_seq() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    previous bytea;
BEGIN
    -- Taking the seq takes the lock first, so two concurrent markers of one
    -- notification serialize and the second sees the first's mark.
    SELECT l.seq, l.previous INTO NEW.seq, previous FROM tidings.next_link(NEW.recipient) l;

    SELECT array_agg(n.id ORDER BY n.id) INTO NEW.notification_ids
      FROM tidings.notifications n
     WHERE n.id = ANY (NEW.notification_ids)
       AND n.recipient = NEW.recipient
       AND NOT EXISTS (SELECT 1 FROM tidings.read_marks m WHERE m.notification_id = n.id);

    IF NEW.notification_ids IS NULL THEN
        RETURN NULL; -- nothing new to mark: no event, no seq used
    END IF;

    NEW.created_at := now();
    NEW.hash := sha256(previous || tidings.canonical(NEW));
    PERFORM set_config('tidings.cached_recipient', NEW.recipient, true),
            set_config('tidings.cached_seq', NEW.seq::text, true),
            set_config('tidings.cached_hash', encode(NEW.hash, 'hex'), true);
    RETURN NEW;
END;
$$;

-- Chain what was appended before this migration, oldest first per recipient.
ALTER TABLE tidings.notifications DISABLE TRIGGER append_only;
ALTER TABLE tidings.reads DISABLE TRIGGER append_only;
DO $$
DECLARE
    event record;
    previous bytea;
    current_recipient text;
BEGIN
    FOR event IN
        SELECT 'notification' AS type, recipient, seq, id FROM tidings.notifications
        UNION ALL
        SELECT 'read', recipient, seq, id FROM tidings.reads
        ORDER BY recipient, seq
    LOOP
        IF current_recipient IS DISTINCT FROM event.recipient THEN
            current_recipient := event.recipient;
            previous := '\x'::bytea;
        END IF;
        IF event.type = 'notification' THEN
            UPDATE tidings.notifications n SET hash = sha256(previous || tidings.canonical(n))
             WHERE n.id = event.id RETURNING hash INTO previous;
        ELSE
            UPDATE tidings.reads r SET hash = sha256(previous || tidings.canonical(r))
             WHERE r.id = event.id RETURNING hash INTO previous;
        END IF;
    END LOOP;
END;
$$;
ALTER TABLE tidings.notifications ENABLE TRIGGER append_only;
ALTER TABLE tidings.reads ENABLE TRIGGER append_only;

ALTER TABLE tidings.notifications ALTER COLUMN hash SET NOT NULL;
ALTER TABLE tidings.reads ALTER COLUMN hash SET NOT NULL;

-- What auditors ask: "what was sent to whom, when, and when was it read".
-- Recipient + time and kind + time are the usual filters.
CREATE INDEX notifications_recipient_time ON tidings.notifications (recipient, created_at);
CREATE INDEX notifications_kind_time ON tidings.notifications (kind, created_at);
CREATE INDEX reads_recipient_time ON tidings.reads (recipient, created_at);
-- Time-only queries: BRIN suits an append-only table whose rows arrive in
-- time order, and costs next to nothing per insert.
CREATE INDEX notifications_time ON tidings.notifications USING brin (created_at);
CREATE INDEX reads_time ON tidings.reads USING brin (created_at);

-- The whole history, one row per event, in a form auditors can query
-- directly: notifications with when (and by which event) they were read,
-- and the read events themselves.
CREATE VIEW tidings.audit_log AS
    SELECT 'notification'::text AS type, n.recipient, n.seq, n.id, n.kind, n.payload,
           NULL::bigint[] AS notification_ids, n.created_at,
           m.read_at, m.read_seq, n.hash
      FROM tidings.notifications n
      LEFT JOIN tidings.read_marks m ON m.notification_id = n.id
    UNION ALL
    SELECT 'read'::text, r.recipient, r.seq, r.id, NULL::text, NULL::jsonb,
           r.notification_ids, r.created_at, NULL::timestamptz, NULL::bigint, r.hash
      FROM tidings.reads r;

-- I9. A group role: grant it to the people who audit, e.g.
--   CREATE ROLE alice_auditor LOGIN PASSWORD '...';
--   GRANT tidings_auditor TO alice_auditor;
-- Roles are cluster-wide, so it may exist already (another database), and
-- the migrating user may lack CREATEROLE (then an administrator creates
-- it and grants the two privileges below by hand).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tidings_auditor') THEN
        CREATE ROLE tidings_auditor NOLOGIN;
    END IF;
    GRANT USAGE ON SCHEMA tidings TO tidings_auditor;
    GRANT SELECT ON tidings.audit_log TO tidings_auditor;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'tidings_auditor was not created: % (create it as an administrator)', SQLERRM;
END;
$$;
