-- tidings: a payload prints small (I10).
--
-- Invariant added here
--   I10 A notification's payload, as PostgreSQL prints it (`payload::text`),
--       takes at most 131,072 bytes (128 KiB). An append that would break
--       this fails with SQLSTATE 23514 (check_violation), constraint name
--       `notifications_payload_size`; POST /v1/notifications answers 400.
--
-- Why the printed size: it is what every reader carries - each hub fetch,
-- replay page, inbox page and SSE frame holds the payload as text - and
-- jsonb can print far larger than it was sent or is stored. A number is
-- kept in binary and printed in full, without an exponent: `[1e131071,
-- ...]` with 1,000 elements is 9 KB of JSON and 16 KB on disk, but prints
-- as 131 MB, and the append-only log would keep it for good. (Numbers
-- beyond numeric's range, `1e999999`, PostgreSQL refuses itself: 22003.)
--
-- Why 128 KiB: notifications are small (a title, a link, a few ids: usually
-- under 1 KiB), and the bound is paid many times over - a replay page holds
-- up to 500 events (at most 64 MiB), a hub fetch up to 64 per recipient (8
-- MiB). But tidings has promised from the start that a 100 KB payload
-- arrives intact (the test a_100_kb_payload_is_delivered_intact); 128 KiB
-- is the smallest power of two that keeps that promise.
--
-- The HTTP publisher refuses the same payloads before they reach the
-- database: src/publish.rs computes the printed size from the request's
-- JSON (keep its `MAX_PAYLOAD_TEXT` equal to the bound here).
--
-- Why in the trigger, not a CHECK constraint: PostgreSQL reads a CHECK's
-- expression from the catalog, parses, plans and compiles it again in
-- every statement that writes the table (see 0005). Counted with callgrind
-- (a single-user backend running single-row INSERT transactions in a loop,
-- as in BENCHMARKS.md, session 5, with a 73-byte payload; after 0009, no
-- lease, so no NOTIFY):
--
--   after 0009                                                304,800 instructions
--   CHECK (octet_length(payload::text) <= 131072) NOT VALID   331,800 (+8.8 %)
--     the same, folded into the two CHECKs already there       333,100
--   this test, first thing in assign_notification_seq          313,600 (+2.9 %)
--
-- (Printing a small payload is about 3,300 of those; parsing the CHECK's
-- stored expression alone was 12,800.) The trigger also tests before the
-- hash chain prints the payload, not after. It raises what a CHECK would:
-- SQLSTATE 23514 with the constraint name `notifications_payload_size`,
-- so callers can tell it apart, though `pg_constraint` has no such row.
-- (Nor do tidings-bench's baseline tables, made `LIKE tidings.notifications
-- INCLUDING ALL`, copy it: they copy CHECKs, not triggers, so the bench's
-- ratios count this test against tidings alone.)
--
-- Rows already in the log are neither scanned nor refused: the test runs
-- on appends only, so upgrading reads no old payload and takes no lock
-- beyond the moment CREATE OR REPLACE FUNCTION needs. The log is
-- append-only, so an oversized row from before could not be fixed anyway;
-- to find any, run (it reads every payload):
--   SELECT id, recipient, seq FROM tidings.notifications
--    WHERE octet_length(payload::text) > 131072;
--
-- Everything else is 0008's trigger, unchanged.

CREATE OR REPLACE FUNCTION tidings.assign_notification_seq() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    hit boolean;
    cached text;
BEGIN
    -- I10, before anything is locked or hashed. Keep 131072 equal to
    -- MAX_PAYLOAD_TEXT in src/publish.rs.
    IF octet_length(NEW.payload::text) > 131072 THEN
        RAISE EXCEPTION 'a notification''s payload may print as at most 131072 bytes; this one prints as %',
                octet_length(NEW.payload::text)
            USING ERRCODE = 'check_violation',
                  CONSTRAINT = 'notifications_payload_size',
                  TABLE = 'notifications', SCHEMA = 'tidings',
                  HINT = 'jsonb prints numbers in full: 1e6 prints as 1000000.';
    END IF;

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
