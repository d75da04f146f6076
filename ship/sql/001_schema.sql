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
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'MW002';
END
$$;

-- No gap: a trail's first record has seq 1 and every other record's predecessor (seq - 1)
-- is in the table. Checked once per INSERT statement, after it, over the rows it inserted
-- (a transition table). Fast path, per trail in the statement: the inserted seqs are
-- distinct (primary key), so they are contiguous iff max - min + 1 = count, and then only the
-- lowest needs its predecessor — one index probe per statement instead of one per row. Only
-- when that fails is the first seq without its predecessor looked up, to name it. Rows are
-- never deleted and a row's predecessor must be visible (committed, or inserted by the same
-- statement) when it is checked, so committed rows never leave a gap. A seq already held is
-- not inserted (the shipper inserts with ON CONFLICT DO NOTHING, then checks the stored line
-- is the same bytes), so it is not in the transition table.
CREATE OR REPLACE FUNCTION map_wrapper_audit_refuse_gap() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    PERFORM 1 FROM (
        SELECT n.trail, min(n.seq) AS lo, max(n.seq) AS hi, count(*) AS cnt
            FROM map_wrapper_audit_new n GROUP BY n.trail) r
        WHERE r.hi - r.lo + 1 <> r.cnt
           OR NOT (r.lo = 1 OR EXISTS (
               SELECT 1 FROM map_wrapper_audit a WHERE a.trail = r.trail AND a.seq = r.lo - 1));
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT n.trail, n.seq INTO bad FROM map_wrapper_audit_new n
        WHERE NOT (n.seq = 1 OR EXISTS (
            SELECT 1 FROM map_wrapper_audit a WHERE a.trail = n.trail AND a.seq = n.seq - 1))
        ORDER BY n.seq LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'map_wrapper_audit: gap in trail %: seq % without seq %',
            bad.trail, bad.seq, bad.seq - 1
            USING ERRCODE = 'MW001';
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER map_wrapper_audit_no_update_delete
    BEFORE UPDATE OR DELETE ON map_wrapper_audit
    FOR EACH ROW EXECUTE FUNCTION map_wrapper_audit_refuse_change();
CREATE OR REPLACE TRIGGER map_wrapper_audit_no_truncate
    BEFORE TRUNCATE ON map_wrapper_audit
    FOR EACH STATEMENT EXECUTE FUNCTION map_wrapper_audit_refuse_change();
CREATE OR REPLACE TRIGGER map_wrapper_audit_no_gap
    AFTER INSERT ON map_wrapper_audit
    REFERENCING NEW TABLE AS map_wrapper_audit_new
    FOR EACH STATEMENT EXECUTE FUNCTION map_wrapper_audit_refuse_gap();

-- Nobody but the owner has rights by default; grant INSERT, SELECT to the shipper's role
-- and SELECT to auditors.
REVOKE ALL ON map_wrapper_audit FROM PUBLIC;
