-- tidings: a single-row INSERT does less. The same invariants (I1-I9, C1)
-- and the same hashes; three things change in how they are computed.
--
-- Counted with callgrind (a single-user backend running single-row INSERT
-- transactions in a loop, BENCHMARKS.md, session 5), one transaction:
--
--   after 0006                                           481,900 instructions
--   1. canonical text with json_build_array              472,100
--   2. + a miss caches only the recipient, created_at    450,800
--        comes from the counter UPDATE
--   3. + the common-case test reads `unwritten` directly 449,400 (-6.7 % in all)
--
--   for comparison: the least gapless sequence (one counter UPDATE that
--   numbers the row and sends the hint) 374,000; a bare NOTIFY 285,000.
--
-- A sorted 10,000-row INSERT ... SELECT: 1,738 -> 1,728 million (2. reads,
-- locks and hints the counter row once per run of a recipient's rows;
-- 1. saves more).
--
-- Why it matters: `tidings-bench ingest` with 8 writers is CPU-bound on
-- this machine, and each writer's CPU lengthens every hand-over of the
-- NOTIFY lock (0005).

-- 1. The canonical encodings (I8) are built with json_build_array instead
--    of jsonb_build_array(...)::text. The text is the same byte for byte:
--    json_build_array prints each argument as jsonb prints it inside an
--    array (strings escaped by the same routine, integers in the same
--    digits, a jsonb argument - the payload, the read ids - through jsonb's
--    own output, elements separated by ", "), and it skips building a jsonb
--    value only to print it. `tidings verify` still rebuilds the text with
--    jsonb_build_array, so every verified chain checks that this holds
--    (the test suite verifies chains of payloads with escapes, unicode and
--    nesting); 50,000 random rows compared equal when this was written.
CREATE OR REPLACE FUNCTION tidings.notification_text(recipient text, seq bigint, id bigint, kind text,
        payload jsonb, idempotency_key uuid, created_at timestamptz) RETURNS bytea
LANGUAGE sql STABLE AS $$
    SELECT convert_to(json_build_array('notification', recipient, seq, id, kind, payload,
        idempotency_key, (extract(epoch FROM created_at) * 1000000)::bigint)::text, 'UTF8');
$$;

CREATE OR REPLACE FUNCTION tidings.read_text(recipient text, seq bigint, id bigint,
        notification_ids bigint[], created_at timestamptz) RETURNS bytea
LANGUAGE sql STABLE AS $$
    SELECT convert_to(json_build_array('read', recipient, seq, id, to_jsonb(notification_ids),
        (extract(epoch FROM created_at) * 1000000)::bigint)::text, 'UTF8');
$$;

-- 2. The cache (0003) is filled lazily. A miss - the common case, and the
--    whole of a single-row INSERT - sets only `tidings.cached_recipient`
--    (and sends the hint), not the cached seq, hash and `unwritten` count:
--    three settings fewer, each saved for the rollback at transaction end.
--    The cached seq and hash now mean something only while `unwritten` is
--    positive. So a hit with nothing unwritten - the second row of a
--    recipient's run - first reads the seq and hash from the counter row,
--    which is exact then: the miss's UPDATE, or write_cache, wrote it, and
--    this transaction holds its lock. (That read locks the row and hints
--    again all the same, so that a cached recipient set by hand cannot
--    skip a seq or a hint.) `unwritten` goes positive only on a hit, and
--    back to '0' whenever write_cache writes the row (C1 unchanged); a
--    miss for another recipient while the cache is ahead writes it first,
--    as before.
--
--    `created_at` (I8's time) is `now()` either way; the common path takes
--    it from the UPDATE that hashes it instead of a separate assignment.
--
-- 3. The common-case test reads `unwritten` as write_counter does (0006),
--    not through tidings.cache_is_ahead(): the same meaning, one call less.
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
            SELECT r.last_seq, encode(r.last_hash, 'hex') || tidings.send_hint(r.recipient)
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
               || tidings.send_hint(r.recipient)
             INTO NEW.seq, NEW.hash, NEW.created_at, cached;
        EXIT WHEN FOUND;
        PERFORM tidings.lock_counter(NEW.recipient); -- the recipient's first event
    END LOOP;
    RETURN NEW;
END;
$$;
