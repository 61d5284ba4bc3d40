-- tidings: fewer steps per single-row INSERT. The same invariants (I1-I9,
-- C1); what changes is how many separate pieces PostgreSQL sets up and runs
-- for one row.
--
-- Why it matters: every notifying commit holds PostgreSQL's NOTIFY lock
-- across its WAL flush and its hand-over to the next writer, so on a busy
-- machine each µs a writer spends on a CPU lengthens every writer's queue.
-- `tidings-bench ingest` with one writer showed 215 µs of running time per
-- tidings commit against 70 µs for a table with only a bare NOTIFY trigger
-- (BENCHMARKS.md, session 5); a hot-loop profile put the BEFORE triggers at
-- 54 µs, the write_counter WHEN clause at 6 µs, and the rest in PL/pgSQL's
-- per-transaction set-up of each expression it evaluates.
--
-- 1. The hint (I7) is sent by the counter UPDATE itself, through
--    `tidings.send_hint`, a one-line SQL function PostgreSQL inlines into
--    the statement. The `hint` row triggers go: one PL/pgSQL call and one
--    WHEN clause (re-read from the catalog in every statement) less per row.
--    The hint is sent exactly where the trigger sent it: by each counter
--    UPDATE a notification's cache miss runs, and for each read event
--    kept. `tidings.set_hints(false)` switches hints off (the fault suite
--    does, to lose hints at the source).
-- 2. assign_notification_seq decides the common case - a miss without an
--    idempotency key while the cache is not ahead of its counter row - with
--    one test instead of four.
-- 3. write_counter's WHEN clause is shorter: same meaning, a smaller tree to
--    read and prepare in every statement.

-- I7: `["<recipient>"]` on channel `tidings`; PostgreSQL drops repeats of a
-- payload within a transaction. `tidings.send_hint(recipient)` returns ''
-- (void as text), so that callers can concatenate it with the cache
-- settings in one expression. It is defined by `tidings.set_hints`, which
-- also serves fault drills: `SELECT tidings.set_hints(false)` redefines it
-- to send nothing (hints lost at the source; tidings' sweep still
-- delivers), `true` restores it. A redefinition reaches every session at its
-- next statement, as PostgreSQL re-plans statements that inlined it. Only
-- the functions' owner (or a superuser) may call it: EXECUTE is revoked from
-- PUBLIC, and redefining send_hint needs its ownership. STRICT: NULL does
-- nothing rather than switching hints off.
CREATE FUNCTION tidings.set_hints(enabled boolean) RETURNS void
LANGUAGE plpgsql STRICT AS $set$
BEGIN
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

DROP TRIGGER hint ON tidings.notifications;
DROP TRIGGER hint ON tidings.reads;
DROP FUNCTION tidings.hint();

-- I1-I3, I5, I7, I8 for notifications, as in 0003, with the hint folded in.
--
-- The common case (no key, a recipient other than the cached one, nothing
-- unwritten) is one test and one UPDATE. Everything else - a cache hit in a
-- bulk INSERT, a key to check, a cached recipient to write out first - runs
-- the steps of 0003 inside that test, unchanged.
CREATE OR REPLACE FUNCTION tidings.assign_notification_seq() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    hit boolean;
    cached text;
BEGIN
    NEW.created_at := now();
    -- The common case skips straight to the UPDATE below: one test.
    IF NEW.idempotency_key IS NOT NULL
       OR current_setting('tidings.cached_recipient', true) = NEW.recipient
       OR tidings.cache_is_ahead()
    THEN
        hit := current_setting('tidings.cached_recipient', true) = NEW.recipient;
        IF hit IS NOT TRUE AND tidings.cache_is_ahead() THEN
            PERFORM tidings.write_cache();
        END IF;
        IF NEW.idempotency_key IS NOT NULL THEN
            IF hit IS NOT TRUE THEN
                PERFORM tidings.lock_counter(NEW.recipient);
            END IF;
            -- I5, with the lock held: a concurrent insert of the same key
            -- has either committed (and is seen: each statement here takes
            -- a fresh snapshot) or rolled back.
            IF EXISTS (SELECT 1 FROM tidings.notifications
                        WHERE recipient = NEW.recipient
                          AND idempotency_key = NEW.idempotency_key)
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
               || tidings.send_hint(r.recipient)
             INTO NEW.seq, NEW.hash, cached;
        EXIT WHEN FOUND;
        PERFORM tidings.lock_counter(NEW.recipient); -- the recipient's first event
    END LOOP;
    RETURN NEW;
END;
$$;

-- I1-I3, I6, I7, I8 for read events, as in 0003, with the hint folded in.
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
            set_config('tidings.unwritten', '0', true),
            tidings.send_hint(NEW.recipient);
    RETURN NEW;
END;
$$;

-- C1, as in 0004. `tidings.unwritten` is NULL (never set in this session),
-- '' (set in an earlier transaction), '0', or a count without leading
-- zeros; of those, only a positive count sorts after '0' (compared byte by
-- byte: "C" is the cheapest collation). NULL > '0' is NULL: the trigger does
-- not fire.
-- Must stay equal to tidings.cache_is_ahead().
DROP TRIGGER write_counter ON tidings.notifications;
DROP TRIGGER write_counter ON tidings.reads;

CREATE TRIGGER write_counter AFTER INSERT ON tidings.notifications
    FOR EACH STATEMENT
    WHEN (current_setting('tidings.unwritten', true) > '0' COLLATE "C")
    EXECUTE FUNCTION tidings.write_counter();
CREATE TRIGGER write_counter AFTER INSERT ON tidings.reads
    FOR EACH STATEMENT
    WHEN (current_setting('tidings.unwritten', true) > '0' COLLATE "C")
    EXECUTE FUNCTION tidings.write_counter();

-- 4. The counter row's CHECK constraints go. PostgreSQL reads every CHECK
--    of a table from the catalog, plans it and compiles it again in each
--    statement that writes the table: these three cost about 54,000
--    instructions per single-row INSERT (callgrind, a tenth of the whole
--    commit). What they stated holds by construction - the triggers only
--    add to these columns, starting from 0, and the totals count what I6
--    lets in (each notification read at most once, by its own recipient).
--    `recipients` has no append-only guard, so a direct write is possible;
--    that is checked where it matters instead of on every append:
--    `tidings verify` requires every recipient with events to have a
--    counter row that continues its chain exactly (C1: the same last seq
--    and hash, and totals equal to the chain's notifications and read
--    marks), and UNIQUE (recipient, seq) refuses a seq handed out twice.
ALTER TABLE tidings.recipients
    DROP CONSTRAINT recipients_last_seq_check,
    DROP CONSTRAINT recipients_notifications_check,
    DROP CONSTRAINT recipients_check;
