-- tidings: cheaper appends. The same invariants (I1-I9), less work per row.
--
-- Before this migration a single-row INSERT ran about seven statements in
-- its triggers: a counter row lock, two lookups of the latest event (for its
-- seq and hash), a SQL function re-planned in every transaction (the
-- canonical encoding), the cache settings, a counter UPDATE over a
-- transition table, and a statement-level hint over another. Now it runs
-- one: an UPDATE of the recipient's counter row that takes the lock, hands
-- out the seq, chains the hash and sets the cache, plus the NOTIFY call.
-- (`tidings-bench ingest` and BENCHMARKS.md have the numbers.)
--
-- The counter row becomes the head of the recipient's chain:
--   C1  At every statement boundary, `recipients` holds each recipient's
--       latest seq, the hash of that event (`last_hash`), and its totals.
--       Within a statement, the row of the recipient the transaction
--       appended to last may lag behind; the transaction's cache (below)
--       holds its truth until the statement ends or moves on to another
--       recipient.
-- I7 changes from one NOTIFY per statement to one per recipient and
-- transaction (see the hint trigger at the end).

ALTER TABLE tidings.recipients ADD COLUMN last_hash bytea NOT NULL DEFAULT '\x';

UPDATE tidings.recipients r SET last_hash = e.hash
  FROM (SELECT recipient, seq, hash FROM tidings.notifications
        UNION ALL
        SELECT recipient, seq, hash FROM tidings.reads) e
 WHERE e.recipient = r.recipient AND e.seq = r.last_seq;

-- The canonical encodings of 0002, with the fields as arguments so they can
-- be encoded before the row exists. STABLE (like jsonb_build_array and
-- extract inside them), which lets PostgreSQL inline them into the calling
-- statement; 0002's IMMUTABLE versions were run through the SQL-function
-- executor, re-planned in every transaction. The text is unchanged:
-- `tidings verify` rebuilds it independently.
CREATE FUNCTION tidings.notification_text(recipient text, seq bigint, id bigint, kind text,
        payload jsonb, idempotency_key uuid, created_at timestamptz) RETURNS bytea
LANGUAGE sql STABLE AS $$
    SELECT convert_to(jsonb_build_array('notification', recipient, seq, id, kind, payload,
        idempotency_key, (extract(epoch FROM created_at) * 1000000)::bigint)::text, 'UTF8');
$$;

CREATE FUNCTION tidings.read_text(recipient text, seq bigint, id bigint,
        notification_ids bigint[], created_at timestamptz) RETURNS bytea
LANGUAGE sql STABLE AS $$
    SELECT convert_to(jsonb_build_array('read', recipient, seq, id, to_jsonb(notification_ids),
        (extract(epoch FROM created_at) * 1000000)::bigint)::text, 'UTF8');
$$;

CREATE OR REPLACE FUNCTION tidings.canonical(n tidings.notifications) RETURNS bytea
LANGUAGE sql STABLE AS $$
    SELECT tidings.notification_text(n.recipient, n.seq, n.id, n.kind, n.payload,
                                     n.idempotency_key, n.created_at);
$$;

CREATE OR REPLACE FUNCTION tidings.canonical(r tidings.reads) RETURNS bytea
LANGUAGE sql STABLE AS $$
    SELECT tidings.read_text(r.recipient, r.seq, r.id, r.notification_ids, r.created_at);
$$;

-- The cache, in four transaction-local settings: the recipient this
-- transaction appended to last (`tidings.cached_recipient`), its latest seq
-- and hash, and how many notifications were appended to it since its counter
-- row was last written (`tidings.unwritten`). Consecutive rows for one
-- recipient - a bulk INSERT ... SELECT sorted by recipient - then write its
-- counter row twice in all, not once per row: repeated updates of one row in
-- one transaction build a version chain that each further update must walk
-- (quadratic). The settings roll back with a (sub)transaction exactly as the
-- counter row and the events do, so the cache cannot outlive what it says.
--
-- Why the code below looks the way it does: in a single-row transaction
-- the fixed costs dominate. Each PL/pgSQL function called and each statement
-- run costs about 20-25 µs of set-up per transaction (measured), next to
-- about 150 µs of CPU for the whole commit of a single-row INSERT into a
-- table without triggers. So the common path calls no helper function, runs
-- one statement, and sets the cache inside that statement; helpers serve
-- rare paths only.

-- Writes the cached recipient's counter row (C1), for when the cache is
-- ahead of it (`tidings.unwritten` > 0).
CREATE FUNCTION tidings.write_cache() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tidings.recipients
       SET last_seq = current_setting('tidings.cached_seq')::bigint,
           last_hash = decode(current_setting('tidings.cached_hash'), 'hex'),
           notifications = notifications + current_setting('tidings.unwritten')::bigint
     WHERE recipient = current_setting('tidings.cached_recipient');
    PERFORM set_config('tidings.unwritten', '0', true);
END;
$$;

-- Whether the cache is ahead of the counter row. (The setting is NULL before
-- a session first appends, and '' after a transaction that set it ends.)
CREATE FUNCTION tidings.cache_is_ahead() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT coalesce(current_setting('tidings.unwritten', true), '') NOT IN ('', '0');
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

-- I1-I3, I5, I8 for notifications. Any seq, created_at or hash given is
-- replaced.
--
-- A cache hit (the same recipient as the row before, in this transaction)
-- runs no statement: the lock is held already. A miss first writes the
-- previously cached recipient's row if the cache is ahead (C1). Then one
-- UPDATE of this recipient's counter row takes its lock, hands out the next
-- seq, chains the hash and sets the cache; the row is then up to date.
-- The lock serializes writers of one recipient (I1-I3): a second writer
-- waits until the first commits - READ COMMITTED then re-reads the row, so
-- it continues from the first's seq and hash - or rolls back.
CREATE OR REPLACE FUNCTION tidings.assign_notification_seq() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    hit boolean := current_setting('tidings.cached_recipient', true) = NEW.recipient;
    cached text;
BEGIN
    NEW.created_at := now();
    IF hit IS NOT TRUE AND tidings.cache_is_ahead() THEN
        PERFORM tidings.write_cache();
    END IF;
    IF NEW.idempotency_key IS NOT NULL THEN
        IF hit IS NOT TRUE THEN
            PERFORM tidings.lock_counter(NEW.recipient);
        END IF;
        -- I5, with the lock held: a concurrent insert of the same key has
        -- either committed (and is seen: each statement here takes a fresh
        -- snapshot) or rolled back.
        IF EXISTS (SELECT 1 FROM tidings.notifications
                    WHERE recipient = NEW.recipient AND idempotency_key = NEW.idempotency_key)
        THEN
            RETURN NULL; -- skip the row, like ON CONFLICT DO NOTHING; no seq used
        END IF;
    END IF;

    IF hit THEN
        NEW.seq := current_setting('tidings.cached_seq')::bigint + 1;
        NEW.hash := sha256(decode(current_setting('tidings.cached_hash'), 'hex')
                           || tidings.canonical(NEW));
        cached := set_config('tidings.cached_seq', NEW.seq::text, true)
               || set_config('tidings.cached_hash', encode(NEW.hash, 'hex'), true)
               || set_config('tidings.unwritten',
                             (current_setting('tidings.unwritten')::bigint + 1)::text, true);
        RETURN NEW;
    END IF;

    LOOP
        UPDATE tidings.recipients r
           SET last_seq = r.last_seq + 1,
               notifications = r.notifications + 1,
               last_hash = sha256(r.last_hash || tidings.notification_text(NEW.recipient,
                   r.last_seq + 1, NEW.id, NEW.kind, NEW.payload, NEW.idempotency_key,
                   NEW.created_at))
         WHERE r.recipient = NEW.recipient
        RETURNING r.last_seq, r.last_hash,
                  set_config('tidings.cached_recipient', r.recipient, true)
               || set_config('tidings.cached_seq', r.last_seq::text, true)
               || set_config('tidings.cached_hash', encode(r.last_hash, 'hex'), true)
               || set_config('tidings.unwritten', '0', true)
             INTO NEW.seq, NEW.hash, cached;
        EXIT WHEN FOUND;
        PERFORM tidings.lock_counter(NEW.recipient); -- the recipient's first event
    END LOOP;
    RETURN NEW;
END;
$$;

-- I1-I3, I6, I8 for read events: lock first, so two concurrent markers of
-- one notification serialize and the second sees the first's mark; keep
-- only the ids that are newly read; take the next seq only if anything is
-- left. Reads are rare next to notifications: this path is not tuned.
CREATE OR REPLACE FUNCTION tidings.assign_read_seq() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF tidings.cache_is_ahead() THEN
        PERFORM tidings.write_cache();
    END IF;
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
    RETURNING r.last_seq, r.last_hash INTO NEW.seq, NEW.hash;
    PERFORM set_config('tidings.cached_recipient', NEW.recipient, true),
            set_config('tidings.cached_seq', NEW.seq::text, true),
            set_config('tidings.cached_hash', encode(NEW.hash, 'hex'), true),
            set_config('tidings.unwritten', '0', true);
    RETURN NEW;
END;
$$;

-- C1 at the end of every statement that appended to a cached recipient:
-- write what the cache holds ahead of the counter row. This replaces 0001's
-- counting over the transition table: counter rows are now kept as rows are
-- appended. The WHEN clause is evaluated without calling the function, so
-- a single-row INSERT (whose UPDATE left nothing unwritten) pays no call.
CREATE FUNCTION tidings.write_counter() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tidings.write_cache();
    RETURN NULL;
END;
$$;

DROP TRIGGER count_appended ON tidings.notifications;
DROP TRIGGER count_appended ON tidings.reads;
DROP FUNCTION tidings.count_notifications();
DROP FUNCTION tidings.count_reads();
DROP FUNCTION tidings.next_link(text);

CREATE TRIGGER write_counter AFTER INSERT ON tidings.notifications
    FOR EACH STATEMENT WHEN (tidings.cache_is_ahead())
    EXECUTE FUNCTION tidings.write_counter();
CREATE TRIGGER write_counter AFTER INSERT ON tidings.reads
    FOR EACH STATEMENT WHEN (tidings.cache_is_ahead())
    EXECUTE FUNCTION tidings.write_counter();

-- I7, now per recipient rather than per statement: a transaction sends one
-- NOTIFY per recipient it appended to (PostgreSQL drops repeats of a
-- payload within a transaction), `["<recipient>"]`. Sent by a row trigger
-- that runs only on a cache miss - the first row of a run for one recipient,
-- as `tidings.unwritten` = '0' says right after assign_seq - so a bulk
-- INSERT sorted by recipient sends one per recipient, and a single-row
-- INSERT needs no statement-level trigger and no transition table at all
-- (the two statement triggers of 0001 took about 48 µs of a single-row
-- INSERT, by pg_stat_user_functions). A separate
-- trigger, so that hints alone can be switched off (the sweep still
-- delivers). It must stay after assign_seq: triggers of one kind fire in
-- name order.
DROP TRIGGER hint ON tidings.notifications;
DROP TRIGGER hint ON tidings.reads;
DROP FUNCTION tidings.send_hint();
DROP FUNCTION tidings.hint(text[]);

CREATE FUNCTION tidings.hint() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ignored text;
BEGIN
    ignored := pg_notify('tidings', json_build_array(NEW.recipient)::text);
    RETURN NEW;
END;
$$;

CREATE TRIGGER hint BEFORE INSERT ON tidings.notifications
    FOR EACH ROW WHEN (current_setting('tidings.unwritten', true) = '0')
    EXECUTE FUNCTION tidings.hint();
CREATE TRIGGER hint BEFORE INSERT ON tidings.reads
    FOR EACH ROW WHEN (current_setting('tidings.unwritten', true) = '0')
    EXECUTE FUNCTION tidings.hint();
