-- tidings: the event log.
--
-- This migration is the schema's documentation. The database, not the
-- service, enforces every invariant below, so rows written by any SQL client
-- (an app's own transaction, psql, a batch job) are as safe as rows written
-- through the HTTP API.
--
-- Invariants
--   I1  Every event of a recipient (notification or read mark) gets the next
--       `seq` of that recipient: 1, 2, 3 ... with no gaps and no repeats.
--   I2  `seq` order is commit order per recipient: if seq n+1 is visible,
--       seq n is visible too. (The counter row lock is held to commit.)
--   I3  A rolled-back insert leaves no trace: the counter rolls back with it.
--   I4  History is append-only: UPDATE, DELETE and TRUNCATE are refused.
--   I5  A notification carrying an idempotency key lands at most once per
--       recipient; a retry is a silent no-op that consumes no `seq`.
--   I6  A notification is read at most once, only by a read event of its own
--       recipient; a read event that would mark nothing new is not appended.
--   I7  Every committed statement that appends events sends one NOTIFY on the
--       channel `tidings` naming the recipients it touched - never the content.
--       NOTIFY is only a hint; the tables are the truth.

CREATE SCHEMA tidings;

-- The per-recipient counter. One row per recipient, created by its first
-- event. Inserting an event updates this row, which row-locks it until the
-- inserting transaction ends: concurrent writers for one recipient queue here,
-- which is what makes `seq` dense and commit-ordered (I1, I2, I3). Writers
-- for different recipients never wait for each other.
CREATE TABLE tidings.recipients (
    recipient     text PRIMARY KEY,
    -- The latest seq handed out; the recipient's stream position.
    last_seq      bigint NOT NULL CHECK (last_seq >= 0),
    -- Running totals kept under the same lock, so the inbox's unread count
    -- is one row lookup instead of a scan of the recipient's history.
    notifications bigint NOT NULL DEFAULT 0 CHECK (notifications >= 0),
    read          bigint NOT NULL DEFAULT 0 CHECK (read >= 0 AND read <= notifications)
);

-- What apps INSERT into: `recipient`, `kind` and an optional `payload`
-- (and optional `idempotency_key`). Everything else is assigned here.
CREATE TABLE tidings.notifications (
    -- Global and unique, but NOT a delivery order: ids are drawn at insert
    -- time and transactions commit in any order. Streams follow `seq`.
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recipient       text NOT NULL CHECK (recipient <> ''),
    -- Assigned by the trigger assign_seq; any value given is ignored.
    seq             bigint NOT NULL,
    kind            text NOT NULL CHECK (kind <> ''),
    payload         jsonb NOT NULL DEFAULT '{}',
    -- Optional: lets a writer retry an insert without risking a duplicate (I5).
    idempotency_key uuid,
    -- Transaction time of the insert; forced by the trigger, like `seq`.
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (recipient, seq)
);

-- Backstop for I5 (the trigger turns a duplicate into a no-op first). Partial,
-- so rows without a key cost no index entry.
CREATE UNIQUE INDEX notifications_idempotency_key
    ON tidings.notifications (recipient, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Read marks are events too: they share the recipient's `seq`, so a stream
-- that resumes replays them in order with the notifications they mark.
CREATE TABLE tidings.reads (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recipient        text NOT NULL CHECK (recipient <> ''),
    seq              bigint NOT NULL,
    -- The notifications this event marks read: only ones that were unread and
    -- belong to `recipient`; the trigger filters the list and sorts it (I6).
    notification_ids bigint[] NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (recipient, seq)
);

-- A projection of `reads`, one row per read notification: answers "is this
-- read, and when" by primary key. Its primary key is the backstop for I6.
-- Written only by the trigger on `reads`.
CREATE TABLE tidings.read_marks (
    notification_id bigint PRIMARY KEY REFERENCES tidings.notifications (id),
    recipient       text NOT NULL,
    read_seq        bigint NOT NULL,
    read_at         timestamptz NOT NULL
);

-- A recipient's whole event log in `seq` order. The stream's replay and the
-- hub's fetches read this view with `recipient = ? AND seq > ? ORDER BY seq
-- LIMIT ?`, which PostgreSQL answers with a merge of the two unique indexes.
CREATE VIEW tidings.events AS
    SELECT recipient, seq, 'notification'::text AS type, id, kind, payload,
           NULL::bigint[] AS notification_ids, created_at
      FROM tidings.notifications
    UNION ALL
    SELECT recipient, seq, 'read'::text AS type, id, NULL::text, NULL::jsonb,
           notification_ids, created_at
      FROM tidings.reads;

-- I1-I3: the next seq of `who`, for an event about to be inserted.
--
-- The counter row lock serializes writers of one recipient: a second writer
-- waits here until the first commits (its rows are then visible, and counted
-- below) or rolls back (its seq is then free again, and handed out anew).
--
-- The lock is taken once per transaction and recipient, not per row: the last
-- recipient served and its seq are cached in two transaction-local settings.
-- A bulk INSERT ... SELECT sorted by recipient thus costs one lock per
-- recipient, and never rewrites the counter row per row (repeated updates of
-- one row inside one transaction build a version chain that every further
-- update must walk: quadratic). The counter itself is brought up to date once
-- per statement, by the statement-level triggers below; until then the rows
-- themselves are the truth, so a cache miss takes the maximum of both. The
-- settings roll back with a (sub)transaction exactly as the row lock and the
-- rows do, so the cache can never outlive what it describes.
--
-- Writers that touch several recipients in one transaction lock them in the
-- order they insert: insert in a consistent order (ORDER BY recipient), or
-- PostgreSQL's deadlock detector will abort one of two crossing writers.
-- Under REPEATABLE READ or SERIALIZABLE, a writer that waited for another
-- writer of the same recipient fails with a serialization error (40001) and
-- must retry, as usual at those levels; READ COMMITTED writers never do.
CREATE FUNCTION tidings.next_seq(who text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    last bigint;
BEGIN
    IF current_setting('tidings.cached_recipient', true) = who THEN
        RETURN current_setting('tidings.cached_seq')::bigint + 1;
    END IF;

    SELECT last_seq INTO last FROM tidings.recipients WHERE recipient = who FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO tidings.recipients (recipient, last_seq) VALUES (who, 0)
        ON CONFLICT DO NOTHING;
        SELECT last_seq INTO last FROM tidings.recipients WHERE recipient = who FOR UPDATE;
    END IF;

    -- Each statement here takes a fresh snapshot (READ COMMITTED, volatile
    -- function), and sees rows inserted earlier by the statement that fired us.
    RETURN greatest(last,
        (SELECT max(seq) FROM tidings.notifications WHERE recipient = who),
        (SELECT max(seq) FROM tidings.reads WHERE recipient = who)) + 1;
END;
$$;

-- I1-I3, I5 for notifications. Any seq or created_at given is replaced.
-- The cache hit is inlined here because this runs once per inserted row.
CREATE FUNCTION tidings.assign_notification_seq() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('tidings.cached_recipient', true) = NEW.recipient THEN
        NEW.seq := current_setting('tidings.cached_seq')::bigint + 1;
    ELSE
        NEW.seq := tidings.next_seq(NEW.recipient);
    END IF;

    -- I5. We hold the recipient's lock, so a concurrent insert of the same
    -- key has either committed (and is seen) or rolled back.
    IF NEW.idempotency_key IS NOT NULL AND EXISTS (
        SELECT 1 FROM tidings.notifications
         WHERE recipient = NEW.recipient AND idempotency_key = NEW.idempotency_key
    ) THEN
        RETURN NULL; -- skip the row, like ON CONFLICT DO NOTHING; no seq used
    END IF;

    PERFORM set_config('tidings.cached_recipient', NEW.recipient, true),
            set_config('tidings.cached_seq', NEW.seq::text, true);
    NEW.created_at := now();
    RETURN NEW;
END;
$$;

CREATE TRIGGER assign_seq BEFORE INSERT ON tidings.notifications
    FOR EACH ROW EXECUTE FUNCTION tidings.assign_notification_seq();

-- I1-I3, I6 for read events: keep only the ids that are newly read, and take
-- the next seq only if anything is left.
CREATE FUNCTION tidings.assign_read_seq() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Taking the seq takes the lock first, so two concurrent markers of one
    -- notification serialize and the second sees the first's mark.
    NEW.seq := tidings.next_seq(NEW.recipient);

    SELECT array_agg(n.id ORDER BY n.id) INTO NEW.notification_ids
      FROM tidings.notifications n
     WHERE n.id = ANY (NEW.notification_ids)
       AND n.recipient = NEW.recipient
       AND NOT EXISTS (SELECT 1 FROM tidings.read_marks m WHERE m.notification_id = n.id);

    IF NEW.notification_ids IS NULL THEN
        RETURN NULL; -- nothing new to mark: no event, no seq used
    END IF;

    PERFORM set_config('tidings.cached_recipient', NEW.recipient, true),
            set_config('tidings.cached_seq', NEW.seq::text, true);
    NEW.created_at := now();
    RETURN NEW;
END;
$$;

CREATE TRIGGER assign_seq BEFORE INSERT ON tidings.reads
    FOR EACH ROW EXECUTE FUNCTION tidings.assign_read_seq();

CREATE FUNCTION tidings.project_read_marks() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tidings.read_marks (notification_id, recipient, read_seq, read_at)
    SELECT id, NEW.recipient, NEW.seq, NEW.created_at
      FROM unnest(NEW.notification_ids) AS id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER project_read_marks AFTER INSERT ON tidings.reads
    FOR EACH ROW EXECUTE FUNCTION tidings.project_read_marks();

-- I7: one NOTIFY per statement, not per row, so a 10,000-row INSERT ... SELECT
-- costs one hint. The payload is a JSON array of the distinct recipients,
-- sorted, so PostgreSQL also folds identical hints within a transaction. If it
-- would not fit NOTIFY's 8000-byte limit the hint is '*': "look at every
-- recipient with an open stream". It never carries content: any role may LISTEN.
CREATE FUNCTION tidings.hint(recipients text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    hint text := array_to_json(recipients)::text;
BEGIN
    IF cardinality(recipients) > 0 THEN
        PERFORM pg_notify('tidings', CASE WHEN octet_length(hint) > 7900 THEN '*' ELSE hint END);
    END IF;
END;
$$;

-- Once per statement: bring the counters up to date. (A recipient's counter
-- row exists by now: next_seq made it.)
CREATE FUNCTION tidings.count_notifications() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tidings.recipients r
       SET last_seq = greatest(r.last_seq, a.last_seq),
           notifications = r.notifications + a.count
      FROM (SELECT recipient, max(seq) AS last_seq, count(*) AS count
              FROM appended GROUP BY recipient) a
     WHERE r.recipient = a.recipient;
    RETURN NULL;
END;
$$;

CREATE TRIGGER count_appended AFTER INSERT ON tidings.notifications
    REFERENCING NEW TABLE AS appended
    FOR EACH STATEMENT EXECUTE FUNCTION tidings.count_notifications();

CREATE FUNCTION tidings.count_reads() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tidings.recipients r
       SET last_seq = greatest(r.last_seq, a.last_seq),
           read = r.read + a.count
      FROM (SELECT recipient, max(seq) AS last_seq,
                   sum(cardinality(notification_ids)) AS count
              FROM appended GROUP BY recipient) a
     WHERE r.recipient = a.recipient;
    RETURN NULL;
END;
$$;

CREATE TRIGGER count_appended AFTER INSERT ON tidings.reads
    REFERENCING NEW TABLE AS appended
    FOR EACH STATEMENT EXECUTE FUNCTION tidings.count_reads();

-- I7, once per statement. A separate trigger from the counters, so that
-- hints alone can be switched off (tidings' periodic sweep still delivers).
CREATE FUNCTION tidings.send_hint() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tidings.hint(ARRAY(SELECT DISTINCT recipient FROM appended ORDER BY recipient));
    RETURN NULL;
END;
$$;

CREATE TRIGGER hint AFTER INSERT ON tidings.notifications
    REFERENCING NEW TABLE AS appended
    FOR EACH STATEMENT EXECUTE FUNCTION tidings.send_hint();

CREATE TRIGGER hint AFTER INSERT ON tidings.reads
    REFERENCING NEW TABLE AS appended
    FOR EACH STATEMENT EXECUTE FUNCTION tidings.send_hint();

-- I4: the log is append-only. (A superuser can still disable triggers; the
-- audit issue adds a hash chain that makes such edits evident.)
CREATE FUNCTION tidings.refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'tidings.% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Append a new event instead, e.g. a read mark in tidings.reads.';
END;
$$;

CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON tidings.notifications
    FOR EACH ROW EXECUTE FUNCTION tidings.refuse_change();
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON tidings.notifications
    FOR EACH STATEMENT EXECUTE FUNCTION tidings.refuse_change();
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON tidings.reads
    FOR EACH ROW EXECUTE FUNCTION tidings.refuse_change();
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON tidings.reads
    FOR EACH STATEMENT EXECUTE FUNCTION tidings.refuse_change();
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON tidings.read_marks
    FOR EACH ROW EXECUTE FUNCTION tidings.refuse_change();
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON tidings.read_marks
    FOR EACH STATEMENT EXECUTE FUNCTION tidings.refuse_change();
