-- map-wrapper-ship: the PostgreSQL copy of audit trails, schema version 1.
-- Idempotent: run it again and nothing changes. Needs PostgreSQL 14 or later
-- (CREATE OR REPLACE TRIGGER). Run it as the role that will own the table (not the
-- shipper's role), then grant the shipper INSERT and SELECT only (see ship/README.md).

-- One row per record: the trail id, the record's seq, the segment header lines that
-- precede the record in the trail (each ending with '\n'; empty for most records) and the
-- record's line (without '\n'), byte for byte, so that its hash still verifies.
CREATE TABLE IF NOT EXISTS map_wrapper_audit (
    trail      text        NOT NULL CHECK (trail ~ '^[A-Za-z0-9_-]{1,128}$'),
    seq        bigint      NOT NULL CHECK (seq >= 1),
    header     bytea       NOT NULL DEFAULT ''::bytea,
    line       bytea       NOT NULL,
    shipped_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (trail, seq)
);

-- Append-only: no UPDATE, DELETE or TRUNCATE, whoever asks (the owner included; only a
-- role that may ALTER the table can drop the trigger, and the hash chain shows what it did).
CREATE OR REPLACE FUNCTION map_wrapper_audit_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'map_wrapper_audit is append-only: % refused', TG_OP
        USING ERRCODE = 'MW002';
END
$$;

-- No gap: a trail's first record has seq 1 and each next one its last seq + 1. A seq it
-- already holds passes here and meets the primary key (the shipper inserts with
-- ON CONFLICT DO NOTHING, then checks the stored line is the same bytes).
CREATE OR REPLACE FUNCTION map_wrapper_audit_refuse_gap() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    last_seq bigint;
BEGIN
    SELECT seq INTO last_seq FROM map_wrapper_audit
        WHERE trail = NEW.trail ORDER BY seq DESC LIMIT 1;
    IF NEW.seq > COALESCE(last_seq, 0) + 1 THEN
        RAISE EXCEPTION 'map_wrapper_audit: gap in trail %: seq % after last seq %',
            NEW.trail, NEW.seq, COALESCE(last_seq, 0)
            USING ERRCODE = 'MW001';
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER map_wrapper_audit_no_update_delete
    BEFORE UPDATE OR DELETE ON map_wrapper_audit
    FOR EACH ROW EXECUTE FUNCTION map_wrapper_audit_refuse_change();
CREATE OR REPLACE TRIGGER map_wrapper_audit_no_truncate
    BEFORE TRUNCATE ON map_wrapper_audit
    FOR EACH STATEMENT EXECUTE FUNCTION map_wrapper_audit_refuse_change();
CREATE OR REPLACE TRIGGER map_wrapper_audit_no_gap
    BEFORE INSERT ON map_wrapper_audit
    FOR EACH ROW EXECUTE FUNCTION map_wrapper_audit_refuse_gap();

-- Nobody but the owner has rights by default; grant INSERT, SELECT to the shipper's role
-- and SELECT to auditors.
REVOKE ALL ON map_wrapper_audit FROM PUBLIC;
