-- tidings: hints only for recipients someone streams (I7 narrowed).
--
-- Every NOTIFY makes its transaction queue for PostgreSQL's one notify
-- lock, held across the commit's WAL flush, so notifying commits cannot
-- share a flush (group commit) and serialize cluster-wide. Most
-- notifications go to people with no stream open, and the hub drops their
-- hints at a map lookup. So an append now hints only while its recipient's
-- lease `hints_until` lies ahead of the transaction's `now()`; tidings
-- instances take that lease before a stream of theirs reads its position
-- and renew it while the stream lives (src/lease.rs). Writers to everyone
-- else commit without NOTIFY: in `tidings-bench ingest` (BENCHMARKS.md,
-- session 8) 0.56x and 0.46x the time of a bare-NOTIFY table with 8 and
-- 32 writers, against 1.20x and 1.24x for recipients with a lease.
--
-- Invariant changed
--   I7  A committed append hints (NOTIFY on channel `tidings`, payload a
--       JSON array holding its recipient) if its recipient's `hints_until`
--       is later than the appending transaction's `now()`. Before, every
--       append hinted.
--
-- Why no stream can miss an append: the lease is written to the
-- recipient's counter row, which every append locks (the UPDATE that
-- numbers it, or lock_counter). A tidings instance commits the lease,
-- then reads the position its stream starts from (the same upsert returns
-- it). An append that locked the row first commits before the lease can
-- be written, so that position covers it. An append that locks the row
-- after the lease committed reads the lease - under READ COMMITTED an
-- UPDATE re-reads a row changed since its snapshot - and hints. A lease
-- that lapses (an instance that died, or could not renew) costs only
-- latency: the sweep compares every open stream with the table. An
-- instance that waits more than a second for the row (an app transaction
-- appended and has not committed) opens the stream unleased and, once it
-- has taken the lease, reads every streamed recipient again. Rows the
-- bulk cache numbers read no lease: the same transaction's miss or first
-- hit locked the row and hinted before it, and the cache's settings are
-- transaction-local (a session that SETs them by hand can skip the lock
-- and the hint, as it could skip the numbering before; `verify` reports
-- the damage).
--
-- REPEATABLE READ and SERIALIZABLE writers: taking or renewing a lease
-- updates the counter row, so such a transaction whose snapshot predates
-- it fails with a serialization error (40001) on its next append to that
-- recipient - as it does when another append got there first.
--
-- Upgrading: tidings instances older than this migration take no lease,
-- so their streams get events from the sweep only (within 30 s by
-- default) until they are replaced. Upgrade all instances together. The
-- ALTER TABLE below takes an exclusive lock on `recipients` for a moment
-- (no rewrite: the new column is nullable without a default), so it waits
-- for open appending transactions and appends wait for it.

-- Until when some tidings instance wants hints for this recipient; NULL:
-- never asked. Soft state - nothing else depends on it, and `tidings
-- verify` ignores it.
ALTER TABLE tidings.recipients ADD COLUMN hints_until timestamptz;

-- The hint of I7, for an append that has read its recipient's lease. SQL,
-- so PostgreSQL inlines it (and the one-argument send_hint it calls, which
-- `tidings.set_hints` still redefines for fault drills).
CREATE FUNCTION tidings.send_hint(recipient text, hints_until timestamptz) RETURNS text
LANGUAGE sql VOLATILE AS $$
    SELECT CASE WHEN hints_until > now() THEN tidings.send_hint(recipient) ELSE '' END;
$$;

-- 0007's trigger, unchanged but for the hint: it reads the lease from the
-- counter row it has just locked.
CREATE OR REPLACE FUNCTION tidings.assign_notification_seq() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    hit boolean;
    cached text;
BEGIN
    -- The common case skips straight to the UPDATE below: one test.
    IF NEW.idempotency_key IS NOT NULL
       OR current_setting('tidings.cached_recipient', true) = NEW.recipient
       OR current_setting('tidings.unwritten', true) > '0' COLLATE "C"
    THEN
        NEW.created_at := now();
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

        -- The first hit of a run: the counter row is exact; cache it.
        -- The lock and the hint cost little, as this transaction's miss
        -- took the one and sent the other already (PostgreSQL drops the
        -- repeat); they keep I1-I3 and I7 should the cached recipient come
        -- from anywhere else, such as a session-level SET. With no counter
        -- row to lock, the row takes the miss path below.
        IF hit AND NOT tidings.cache_is_ahead() THEN
            SELECT r.last_seq, encode(r.last_hash, 'hex') || tidings.send_hint(r.recipient, r.hints_until)
              INTO NEW.seq, cached
              FROM tidings.recipients r
             WHERE r.recipient = NEW.recipient
               FOR UPDATE;
            hit := FOUND;
            PERFORM set_config('tidings.cached_seq', NEW.seq::text, true),
                    set_config('tidings.cached_hash', cached, true),
                    set_config('tidings.unwritten', '0', true)
              WHERE hit;
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
                   r.last_seq + 1, NEW.id, NEW.kind, NEW.payload, NEW.idempotency_key, now()))
         WHERE r.recipient = NEW.recipient
        RETURNING r.last_seq, r.last_hash, now(),
                  set_config('tidings.cached_recipient', r.recipient, true)
               || tidings.send_hint(r.recipient, r.hints_until)
             INTO NEW.seq, NEW.hash, NEW.created_at, cached;
        EXIT WHEN FOUND;
        PERFORM tidings.lock_counter(NEW.recipient); -- the recipient's first event
    END LOOP;
    RETURN NEW;
END;
$$;

-- 0005's trigger for read events, unchanged but for the hint: the counter
-- UPDATE returns the lease too.
CREATE OR REPLACE FUNCTION tidings.assign_read_seq() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    lease timestamptz;
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
    RETURNING r.last_seq, r.last_hash, r.hints_until INTO NEW.seq, NEW.hash, lease;
    PERFORM set_config('tidings.cached_recipient', NEW.recipient, true),
            set_config('tidings.cached_seq', NEW.seq::text, true),
            set_config('tidings.cached_hash', encode(NEW.hash, 'hex'), true),
            set_config('tidings.unwritten', '0', true),
            tidings.send_hint(NEW.recipient, lease);
    RETURN NEW;
END;
$$;
