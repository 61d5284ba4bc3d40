-- tidings: the schema.
--
-- This file is the schema's documentation. The database, not the service,
-- enforces every invariant below, so rows written by any SQL client (an
-- app's own transaction, psql, a batch job) are as safe as rows written
-- through the HTTP API. Why each piece is built the way it is, and what it
-- costs, measured: docs/schema.md.
--
-- Apps INSERT into `tidings.notifications` (recipient, kind, optional
-- payload and idempotency_key) and `tidings.reads` (recipient and the ids
-- it marks read); everything else is assigned by the triggers.
--
-- Invariants
--   I1  Every event of a recipient (notification or read mark) gets the next
--       `seq` of that recipient: 1, 2, 3 ... with no gaps and no repeats.
--   I2  `seq` order is commit order per recipient: if seq n+1 is visible,
--       seq n is visible too. (The counter row lock is held to commit.)
--   I3  A rolled-back insert leaves no trace: the counter rolls back with
--       it.
--   I4  History is append-only: UPDATE, DELETE and TRUNCATE of
--       `notifications`, `reads` and `read_marks` are refused.
--   I5  A notification carrying an idempotency key lands at most once per
--       recipient; a retry is a silent no-op that consumes no `seq`.
--   I6  A notification is read at most once, only by a read event of its own
--       recipient; a read event that would mark nothing new is not appended.
--   I7  A committed append whose recipient holds a hint lease
--       (`recipients.hints_until` later than the appending transaction's
--       `now()`) sends a NOTIFY on channel `tidings` whose payload is a JSON
--       array holding its recipient, `["alice"]`; PostgreSQL drops repeats
--       of a payload within a transaction, so that is one per recipient and
--       transaction. Appends to recipients without a lease send none. A hint
--       never carries content (any role may LISTEN), and it is only a hint:
--       the tables are the truth. `tidings.set_hints(false)` switches every
--       hint off (fault drills), `true` back on.
--   I8  Every event carries `hash` = SHA-256(previous event's hash || the
--       event's canonical encoding), chained per recipient in `seq` order;
--       the first event's previous hash is empty. Computed here, in the
--       database, so rows appended by any SQL client are chained too.
--       Editing, deleting or reordering an event breaks the chain from that
--       event on; `tidings verify` finds the first broken link. It does not
--       stop a superuser who rewrites a whole chain from the edited event to
--       its end: against that, keep the chain heads (`tidings verify
--       --heads`) somewhere the database cannot reach. The canonical
--       encodings are defined by `tidings.notification_text` and
--       `tidings.read_text` below.
--   I9  Auditors (role tidings_auditor) can read the history, through
--       `tidings.audit_log`, and nothing else.
--   I10 A notification's payload, as PostgreSQL prints it (`payload::text`),
--       takes at most 131,072 bytes (128 KiB). An append that would break
--       this fails with SQLSTATE 23514 (check_violation) and constraint name
--       `notifications_payload_size` (raised by the trigger: `pg_constraint`
--       has no such row).
--   I11 Writers (role tidings_writer) can append events and nothing else;
--       the service (role tidings_service) can append, read and take hint
--       leases, and nothing else: see "Who may do what" below.
--   C1  After every append, `recipients` holds its recipient's latest seq
--       (`last_seq`), the hash of that event (`last_hash`: the head of its
--       chain) and its totals (`notifications`, and `read` notifications
--       marked read): every append writes them. No CHECK guards these columns:
--       the triggers only add to them, from 0, what I1 and I6 let in, and
--       `tidings verify` requires every recipient with events to have a
--       counter row that continues its chain exactly (same last seq and
--       hash, totals equal to the chain's notifications and read marks).
--
-- The triggers, in the order they fire
--   INSERT INTO tidings.notifications
--     assign_seq          BEFORE, each row: assign_notification_seq()
--                         I10, I5, I1-I3, I8, I7, C1
--   INSERT INTO tidings.reads
--     assign_seq          BEFORE, each row: assign_read_seq()
--                         I6, I1-I3, I8, I7, C1
--     project_read_marks  AFTER, each row: project_read_marks()   I6
--   UPDATE, DELETE or TRUNCATE of notifications, reads, read_marks
--     append_only, append_only_truncate
--                         BEFORE: refuse_change()                 I4
--
-- Writers
--   Writers of one recipient queue on its counter row until the first
--   commits; writers of different recipients never wait for each other.
--   A transaction that appends to several recipients locks them in the
--   order it inserts: insert in a consistent order (ORDER BY recipient),
--   or PostgreSQL's deadlock detector aborts one of two crossing writers
--   (40P01). Under REPEATABLE READ or SERIALIZABLE, an append fails with a
--   serialization error (40001, retry the transaction) if its recipient's
--   counter row changed after the transaction's snapshot was taken - by
--   another append, or by a tidings instance taking or renewing the
--   recipient's hint lease. READ COMMITTED writers never get 40001.
--
-- Who may do what (I11)
--   tidings_writer (NOLOGIN; an app gets it with GRANT tidings_writer TO
--   app) may INSERT the columns an app gives - notifications (recipient,
--   kind, payload, idempotency_key), reads (recipient, notification_ids) -
--   and read back `id`, `seq` and `created_at` (INSERT ... RETURNING id,
--   seq); nothing else. The triggers, SECURITY DEFINER, write the counters
--   for it. So no session of a writer can give a row its seq, id, hash or
--   time (`OVERRIDING SYSTEM VALUE` included), change a counter, or leave a
--   gap: seq and hash come only from the counter row, under its lock.
--   tidings_service (NOLOGIN; the tidings service's login gets it) is a
--   writer that may also SELECT what it serves and take or renew hint
--   leases through take_lease and renew_leases (owner's rights, touching
--   `hints_until` alone). It owns nothing, so it can neither change a row
--   nor switch off a trigger. Migrations run as the schema's owner.

CREATE SCHEMA tidings;

-- The per-recipient counter row, and the head of the recipient's chain.
-- One row per recipient, created by its first event. Every append locks
-- it until the appending transaction ends: writers of one recipient queue
-- here, which makes `seq` dense and commit-ordered (I1, I2, I3). C1 says
-- what it holds.
CREATE TABLE tidings.recipients (
    recipient     text PRIMARY KEY,
    -- The latest seq handed out; the recipient's stream position.
    last_seq      bigint NOT NULL,
    -- Running totals, so the inbox's unread count is one row lookup
    -- instead of a scan of the recipient's history.
    notifications bigint NOT NULL DEFAULT 0,
    read          bigint NOT NULL DEFAULT 0,
    -- The hash of the event at `last_seq` (I8); empty before the first.
    last_hash     bytea NOT NULL DEFAULT '\x',
    -- The hint lease (I7): until when some tidings instance wants hints for
    -- this recipient; NULL: never asked. tidings writes it before a stream
    -- reads its position and renews it while the stream lives. Soft state:
    -- nothing else depends on it, and `tidings verify` ignores it.
    hints_until   timestamptz
);

-- What apps INSERT into: `recipient`, `kind` and an optional `payload`
-- (and optional `idempotency_key`). Everything else is assigned.
CREATE TABLE tidings.notifications (
    -- Global and unique, but NOT a delivery order: ids are drawn at insert
    -- time and transactions commit in any order. Streams follow `seq`.
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recipient       text NOT NULL CHECK (recipient <> ''),
    -- Assigned by the trigger assign_seq (I1); any value given is ignored.
    seq             bigint NOT NULL,
    kind            text NOT NULL CHECK (kind <> ''),
    -- At most 128 KiB as printed (I10).
    payload         jsonb NOT NULL DEFAULT '{}',
    -- Optional: lets a writer retry an insert without risking a duplicate (I5).
    idempotency_key uuid,
    -- The inserting transaction's start time, `now()`; forced by the
    -- trigger, like `seq`, so rows of one transaction share it.
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- I8; assigned by the trigger.
    hash            bytea NOT NULL,
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
    hash             bytea NOT NULL,
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

-- What auditors ask: "what was sent to whom, when, and when was it read".
-- Recipient + time and kind + time are the usual filters.
CREATE INDEX notifications_recipient_time ON tidings.notifications (recipient, created_at);
CREATE INDEX notifications_kind_time ON tidings.notifications (kind, created_at);
CREATE INDEX reads_recipient_time ON tidings.reads (recipient, created_at);
-- Time-only queries: BRIN suits an append-only table whose rows arrive in
-- time order, and costs next to nothing per insert.
CREATE INDEX notifications_time ON tidings.notifications USING brin (created_at);
CREATE INDEX reads_time ON tidings.reads USING brin (created_at);

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

-- The whole history, one row per event, in a form auditors can query
-- directly (I9): notifications with when (and by which event) they were
-- read, and the read events themselves.
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

-- I8: the canonical encodings, UTF-8 text of a JSON array of every field
-- that matters, in a fixed order, with the time as integer microseconds
-- since the epoch (no time zone involved):
--   ["notification", recipient, seq, id, kind, payload, idempotency_key, time]
--   ["read", recipient, seq, id, notification_ids, time]
-- printed as jsonb prints an array (elements separated by ", ", strings
-- escaped and numbers written as jsonb writes them, the payload as jsonb
-- prints it, a missing key as null). The fields are arguments so that an
-- event can be encoded before its row exists. `tidings verify` rebuilds
-- the same bytes with `jsonb_build_array(...)::text` and hashes them
-- itself, trusting none of these functions: redefining them cannot fake a
-- clean chain, and every verified chain checks that the two agree.
CREATE FUNCTION tidings.notification_text(recipient text, seq bigint, id bigint, kind text,
        payload jsonb, idempotency_key uuid, created_at timestamptz) RETURNS bytea
LANGUAGE sql STABLE AS $$
    SELECT convert_to(json_build_array('notification', recipient, seq, id, kind, payload,
        idempotency_key, (extract(epoch FROM created_at) * 1000000)::bigint)::text, 'UTF8');
$$;

CREATE FUNCTION tidings.read_text(recipient text, seq bigint, id bigint,
        notification_ids bigint[], created_at timestamptz) RETURNS bytea
LANGUAGE sql STABLE AS $$
    SELECT convert_to(json_build_array('read', recipient, seq, id, to_jsonb(notification_ids),
        (extract(epoch FROM created_at) * 1000000)::bigint)::text, 'UTF8');
$$;

-- The same encodings of a stored row.
CREATE FUNCTION tidings.canonical(n tidings.notifications) RETURNS bytea
LANGUAGE sql STABLE AS $$
    SELECT tidings.notification_text(n.recipient, n.seq, n.id, n.kind, n.payload,
                                     n.idempotency_key, n.created_at);
$$;

CREATE FUNCTION tidings.canonical(r tidings.reads) RETURNS bytea
LANGUAGE sql STABLE AS $$
    SELECT tidings.read_text(r.recipient, r.seq, r.id, r.notification_ids, r.created_at);
$$;

-- Locks `who`'s counter row, creating it on the recipient's first event
-- (seq 0, empty hash).
CREATE FUNCTION tidings.lock_counter(who text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM FROM tidings.recipients WHERE recipient = who FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO tidings.recipients (recipient, last_seq) VALUES (who, 0)
        ON CONFLICT DO NOTHING;
        PERFORM FROM tidings.recipients WHERE recipient = who FOR UPDATE;
    END IF;
END;
$$;

-- I7: the hint. `tidings.send_hint(recipient)` NOTIFYs `["<recipient>"]`
-- on channel `tidings` and returns '' (void as text), so that callers can
-- concatenate it with the cache settings in one expression; it is a SQL
-- function, which PostgreSQL inlines into the statement that calls it.
--
-- It is defined by `tidings.set_hints`, which also serves fault drills:
-- `SELECT tidings.set_hints(false)` redefines it to send nothing (hints
-- lost at the source; tidings' sweep still delivers), `true` restores it.
-- A redefinition reaches every session at its next statement, as
-- PostgreSQL re-plans statements that inlined it. Only the functions'
-- owner (or a superuser) may call it: EXECUTE is revoked from PUBLIC, and
-- redefining send_hint needs its ownership. STRICT: NULL does nothing
-- rather than switching hints off. Callers take turns: CREATE OR REPLACE
-- FUNCTION locks nothing, and two sessions replacing one function at once
-- fail with "tuple concurrently updated"; so a transaction-level advisory
-- lock, keyed hashtext('tidings.set_hints'), is held until the caller's
-- transaction ends.
CREATE FUNCTION tidings.set_hints(enabled boolean) RETURNS void
LANGUAGE plpgsql STRICT AS $set$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('tidings.set_hints'));
    EXECUTE format(
        'CREATE OR REPLACE FUNCTION tidings.send_hint(recipient text) RETURNS text '
        'LANGUAGE sql VOLATILE AS %L',
        CASE WHEN enabled
             THEN 'SELECT pg_notify(''tidings'', json_build_array(recipient)::text)::text'
             ELSE 'SELECT ''''::text'
        END);
END;
$set$;
REVOKE EXECUTE ON FUNCTION tidings.set_hints(boolean) FROM PUBLIC;

SELECT tidings.set_hints(true);

-- I7 for an append that has read its recipient's lease from the counter
-- row it holds locked. SQL, so PostgreSQL inlines it too.
CREATE FUNCTION tidings.send_hint(recipient text, hints_until timestamptz) RETURNS text
LANGUAGE sql VOLATILE AS $$
    SELECT CASE WHEN hints_until > now() THEN tidings.send_hint(recipient) ELSE '' END;
$$;

-- I10, I5, I1-I3, I8, I7 for notifications: every append updates its
-- recipient's counter row, which hands out the next seq and chains the
-- hash. Any seq, created_at or hash given is replaced.
--
-- 1. I10: the payload's printed size, before anything is locked or hashed.
-- 2. A key is checked (I5) with the recipient's lock held, so a concurrent
--    insert of the same key has either committed (and is seen: each
--    statement here takes a fresh snapshot) or rolled back; a repeat is
--    skipped, like ON CONFLICT DO NOTHING, and uses no seq.
-- 3. One UPDATE of the recipient's counter row takes its lock, hands out
--    the next seq, chains the hash, counts the notification, sets
--    `created_at` and hints if the row holds a lease; the row is then up to
--    date (C1). The lock serializes writers of one recipient (I1-I3): a
--    second writer waits until the first commits - READ COMMITTED then
--    re-reads the row, so it continues from the first's seq and hash, and
--    sees a lease taken meanwhile - or rolls back. On the recipient's first
--    event there is no row: lock_counter makes it, and the UPDATE runs
--    again.
-- 4. The UPDATE finds the row by where this transaction left it (the
--    transaction-local setting `tidings.counter`: '<tuple id> <recipient>'
--    of the counter row it updated last), not by its index
--    entry, when the row before was the same recipient's: each UPDATE of
--    a row in one transaction leaves a version the index entry leads
--    through, so a long run of one recipient's rows - a bulk INSERT ...
--    SELECT - would walk them all, every time (quadratic). The setting is
--    only a shortcut: the UPDATE also requires the recipient, and a tuple
--    id that leads anywhere else matches nothing, so whatever a session
--    sets there, the row takes the ordinary path (docs/schema.md).
--
-- SECURITY DEFINER, with the search path pinned: the writer (tidings_writer)
-- may insert rows but not touch counters, and these functions write the
-- counters for it; the pinned path keeps a writer's own schemas, functions
-- and operators out of them.
CREATE FUNCTION tidings.assign_notification_seq() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    left_at text := current_setting('tidings.counter', true);
    noted text;
BEGIN
    -- I10, before anything is locked or hashed. Keep 131072 equal to
    -- the HTTP publisher's MAX_PAYLOAD_TEXT.
    IF octet_length(NEW.payload::text) > 131072 THEN
        RAISE EXCEPTION 'a notification''s payload may print as at most 131072 bytes; this one prints as %',
                octet_length(NEW.payload::text)
            USING ERRCODE = 'check_violation',
                  CONSTRAINT = 'notifications_payload_size',
                  TABLE = 'notifications', SCHEMA = 'tidings',
                  HINT = 'jsonb prints numbers in full: 1e6 prints as 1000000.';
    END IF;

    IF NEW.idempotency_key IS NOT NULL THEN
        PERFORM tidings.lock_counter(NEW.recipient);
        IF EXISTS (SELECT 1 FROM tidings.notifications
                    WHERE recipient = NEW.recipient
                      AND idempotency_key = NEW.idempotency_key)
        THEN
            RETURN NULL; -- skip the row, like ON CONFLICT DO NOTHING; no seq used
        END IF;
    END IF;

    NEW.created_at := now();
    -- The shortcut (step 4): '<tuple id> <recipient>' of the row left last.
    IF left_at = split_part(left_at, ' ', 1) || ' ' || NEW.recipient THEN
        UPDATE tidings.recipients r
           SET last_seq = r.last_seq + 1,
               notifications = r.notifications + 1,
               last_hash = sha256(r.last_hash || tidings.notification_text(NEW.recipient,
                   r.last_seq + 1, NEW.id, NEW.kind, NEW.payload, NEW.idempotency_key, NEW.created_at))
         WHERE r.ctid = split_part(left_at, ' ', 1)::tid AND r.recipient = NEW.recipient
        RETURNING r.last_seq, r.last_hash,
                  set_config('tidings.counter', r.ctid::text || ' ' || r.recipient, true)
               || tidings.send_hint(r.recipient, r.hints_until)
             INTO NEW.seq, NEW.hash, noted;
        IF FOUND THEN
            RETURN NEW;
        END IF;
    END IF;
    LOOP
        UPDATE tidings.recipients r
           SET last_seq = r.last_seq + 1,
               notifications = r.notifications + 1,
               last_hash = sha256(r.last_hash || tidings.notification_text(NEW.recipient,
                   r.last_seq + 1, NEW.id, NEW.kind, NEW.payload, NEW.idempotency_key, NEW.created_at))
         WHERE r.recipient = NEW.recipient
        RETURNING r.last_seq, r.last_hash,
                  set_config('tidings.counter', r.ctid::text || ' ' || r.recipient, true)
               || tidings.send_hint(r.recipient, r.hints_until)
             INTO NEW.seq, NEW.hash, noted;
        EXIT WHEN FOUND;
        PERFORM tidings.lock_counter(NEW.recipient); -- the recipient's first event
    END LOOP;
    RETURN NEW;
END;
$$;

CREATE TRIGGER assign_seq BEFORE INSERT ON tidings.notifications
    FOR EACH ROW EXECUTE FUNCTION tidings.assign_notification_seq();

-- I6, I1-I3, I8, I7 for read events: lock the counter row first, so two
-- concurrent markers of one notification serialize and the second sees
-- the first's mark; keep only the ids that are newly read and belong to
-- the recipient, sorted (I6); take the next seq only if anything is left -
-- else the row is skipped and uses no seq. Then one UPDATE of the counter
-- row hands out the seq, chains the hash, counts the marks and returns the
-- lease, and the event is hinted. SECURITY DEFINER with a pinned path,
-- like assign_notification_seq.
CREATE FUNCTION tidings.assign_read_seq() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    lease timestamptz;
BEGIN
    PERFORM tidings.lock_counter(NEW.recipient);

    SELECT array_agg(n.id ORDER BY n.id) INTO NEW.notification_ids
      FROM tidings.notifications n
     WHERE n.id = ANY (NEW.notification_ids)
       AND n.recipient = NEW.recipient
       AND NOT EXISTS (SELECT 1 FROM tidings.read_marks m WHERE m.notification_id = n.id);
    IF NEW.notification_ids IS NULL THEN
        RETURN NULL; -- nothing new to mark: no event, no seq used
    END IF;

    NEW.created_at := now();
    UPDATE tidings.recipients r
       SET last_seq = r.last_seq + 1,
           read = r.read + cardinality(NEW.notification_ids),
           last_hash = sha256(r.last_hash || tidings.read_text(NEW.recipient,
               r.last_seq + 1, NEW.id, NEW.notification_ids, NEW.created_at))
     WHERE r.recipient = NEW.recipient
    RETURNING r.last_seq, r.last_hash, r.hints_until INTO NEW.seq, NEW.hash, lease;
    PERFORM tidings.send_hint(NEW.recipient, lease);
    RETURN NEW;
END;
$$;

CREATE TRIGGER assign_seq BEFORE INSERT ON tidings.reads
    FOR EACH ROW EXECUTE FUNCTION tidings.assign_read_seq();

-- I6: one `read_marks` row per notification a read event marks; its
-- primary key refuses a second mark.
CREATE FUNCTION tidings.project_read_marks() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO tidings.read_marks (notification_id, recipient, read_seq, read_at)
    SELECT id, NEW.recipient, NEW.seq, NEW.created_at
      FROM unnest(NEW.notification_ids) AS id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER project_read_marks AFTER INSERT ON tidings.reads
    FOR EACH ROW EXECUTE FUNCTION tidings.project_read_marks();

-- I4: the log is append-only. (A superuser can still disable triggers;
-- the hash chain, I8, makes such edits evident.)
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

-- I11. A group role for apps that publish with SQL, e.g.
--   GRANT tidings_writer TO app;
-- Column privileges, so that INSERT names only what an app gives (an
-- explicit id, seq, hash or created_at is refused, `OVERRIDING SYSTEM
-- VALUE` too) and RETURNING reads only what an app may learn. Created like
-- tidings_auditor: it may exist already, and a migrating user without
-- CREATEROLE leaves it to an administrator.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tidings_writer') THEN
        CREATE ROLE tidings_writer NOLOGIN;
    END IF;
    GRANT USAGE ON SCHEMA tidings TO tidings_writer;
    GRANT INSERT (recipient, kind, payload, idempotency_key) ON tidings.notifications TO tidings_writer;
    GRANT SELECT (id, seq, created_at) ON tidings.notifications TO tidings_writer;
    GRANT INSERT (recipient, notification_ids) ON tidings.reads TO tidings_writer;
    GRANT SELECT (id, seq, created_at) ON tidings.reads TO tidings_writer;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'tidings_writer was not created: % (create it as an administrator)', SQLERRM;
END;
$$;

-- Helpers the triggers call as their owner; nobody else needs them.
REVOKE EXECUTE ON FUNCTION tidings.lock_counter(text) FROM PUBLIC;

-- I7's leases, as the tidings service takes and renews them: the only
-- writes to counter rows that are not appends. With the owner's rights,
-- so the service's role needs no UPDATE on tidings.recipients; they set
-- `hints_until` alone (never shortening another instance's lease), and a
-- recipient's first lease makes its counter row at seq 0, as its first
-- event would. The caller sets synchronous_commit and lock_timeout for
-- its transaction; these keep them.
--
-- take_lease: takes or extends `who`'s lease and returns its position,
-- read under the same row lock. PL/pgSQL, not SQL: PostgreSQL plans a SQL
-- function's statement at every call, PL/pgSQL once per session
-- (docs/schema.md has the cost).
CREATE FUNCTION tidings.take_lease(who text, seconds double precision) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    position bigint;
BEGIN
    INSERT INTO tidings.recipients AS r (recipient, last_seq, hints_until)
    VALUES (who, 0, now() + make_interval(secs => seconds))
        ON CONFLICT (recipient)
        DO UPDATE SET hints_until = greatest(r.hints_until, excluded.hints_until)
    RETURNING r.last_seq INTO position;
    RETURN position;
END;
$$;

-- renew_leases: extends the leases of those of `whom` whose counter rows
-- no append holds (SKIP LOCKED: a statement waiting on many rows could
-- deadlock with a transaction appending to several recipients), and
-- returns whom it extended.
CREATE FUNCTION tidings.renew_leases(whom text[], seconds double precision) RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY
    UPDATE tidings.recipients r
       SET hints_until = greatest(r.hints_until, now() + make_interval(secs => seconds))
     WHERE r.recipient IN (SELECT c.recipient FROM tidings.recipients c
                            WHERE c.recipient = ANY(whom) FOR UPDATE SKIP LOCKED)
    RETURNING r.recipient;
END;
$$;
REVOKE EXECUTE ON FUNCTION tidings.take_lease(text, double precision) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION tidings.renew_leases(text[], double precision) FROM PUBLIC;

-- I11. The role the tidings service runs as: grant it to the service's
-- login, e.g.
--   CREATE ROLE tidings_app LOGIN PASSWORD '...';
--   GRANT tidings_service TO tidings_app;
-- It publishes and marks read as a writer does, reads what it serves,
-- takes leases through the two functions above, and reads the migration
-- bookkeeping to see that the schema is current. It owns nothing and may
-- change no row and no trigger: a service session cannot rewrite history,
-- move a counter or switch off the append-only triggers (I4). The
-- embedded database makes this role ahead, with a login that has it.
-- Created like tidings_auditor.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tidings_service') THEN
        CREATE ROLE tidings_service NOLOGIN;
    END IF;
    GRANT tidings_writer, tidings_auditor TO tidings_service;
    GRANT USAGE ON SCHEMA tidings TO tidings_service;
    GRANT SELECT ON ALL TABLES IN SCHEMA tidings TO tidings_service;
    GRANT EXECUTE ON FUNCTION tidings.take_lease(text, double precision),
                              tidings.renew_leases(text[], double precision)
       TO tidings_service;
    IF to_regclass('tidings_migrations._sqlx_migrations') IS NOT NULL THEN
        GRANT USAGE ON SCHEMA tidings_migrations TO tidings_service;
        GRANT SELECT ON tidings_migrations._sqlx_migrations TO tidings_service;
    END IF;
EXCEPTION WHEN insufficient_privilege OR undefined_object THEN
    RAISE NOTICE 'tidings_service was not created: % (create it as an administrator)', SQLERRM;
END;
$$;
