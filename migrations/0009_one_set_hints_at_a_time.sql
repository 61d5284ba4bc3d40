-- tidings: `tidings.set_hints` callers take turns.
--
-- set_hints (0005) redefines `tidings.send_hint` with CREATE OR REPLACE
-- FUNCTION, which locks nothing: two sessions calling it at once both
-- update send_hint's pg_proc row, and the later one fails with "tuple
-- concurrently updated" (27 of 240 calls from 8 concurrent sessions, on
-- PostgreSQL 15). Nothing else changes: the same two definitions, the
-- same rights (CREATE OR REPLACE keeps 0005's REVOKE from PUBLIC).
--
-- The lock is a transaction-level advisory lock, so it is held until the
-- caller's transaction ends, with the new definition committed or rolled
-- back; the next caller then replaces that one. Its key is
-- hashtext('tidings.set_hints'), a value another user of advisory locks in
-- the same database would have to pick on purpose; if one did, the two
-- would only wait for each other.
CREATE OR REPLACE FUNCTION tidings.set_hints(enabled boolean) RETURNS void
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
