-- map-wrapper-ship: the trails' signed checkpoints (schema version 2, after 001_schema.sql).
-- Idempotent, like 001. Run it as the owner role; grant the shipper INSERT and SELECT only.

-- One row per checkpoint note (C2SP tlog-checkpoint in a signed note, as the trail's
-- checkpoints.notes holds it), in the order stored: `pos` 1, 2, … per trail, set by the
-- trigger below. `origin`, `size` and `root` repeat the note's first three lines (a CHECK
-- holds them to the note) so that the server can refuse a checkpoint that goes backwards.
-- `note_time` is the note's `time` extension (-infinity when it has none).
CREATE TABLE IF NOT EXISTS map_wrapper_audit_checkpoints (
    trail      text        NOT NULL CHECK (trail ~ '^[A-Za-z0-9_-]{1,128}$'),
    pos        bigint      NOT NULL CHECK (pos >= 1),
    origin     text        NOT NULL,
    size       bigint      NOT NULL CHECK (size >= 0),
    root       text        NOT NULL,
    note_time  timestamptz NOT NULL DEFAULT '-infinity',
    note       text        NOT NULL,
    shipped_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (trail, pos),
    UNIQUE (trail, size, note_time),
    CHECK (split_part(note, E'\n', 1) = origin
           AND split_part(note, E'\n', 2) = size::text
           AND split_part(note, E'\n', 3) = root)
);

-- Forward only (the rule of map_wrapper::audit::anchor::check_forward), decided by the
-- server, one inserter per trail at a time (an advisory lock): against the latest row of the
-- trail, a checkpoint of another origin (MW005), of a smaller tree (MW003), or of the same
-- size with another root (MW004) is refused; one of the same tree whose time is not later (a
-- redelivery, an older heartbeat) is skipped (the INSERT succeeds and stores nothing); any
-- other gets the next `pos`.
CREATE OR REPLACE FUNCTION map_wrapper_audit_checkpoint_forward() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    held record;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('map_wrapper_audit_checkpoints'), hashtext(NEW.trail));
    SELECT c.pos, c.origin, c.size, c.root, c.note_time INTO held
        FROM map_wrapper_audit_checkpoints c WHERE c.trail = NEW.trail
        ORDER BY c.pos DESC LIMIT 1;
    IF NOT FOUND THEN
        NEW.pos := 1;
        RETURN NEW;
    END IF;
    IF NEW.origin <> held.origin THEN
        RAISE EXCEPTION 'checkpoint of origin % refused: the trail % holds checkpoints of %',
            NEW.origin, NEW.trail, held.origin USING ERRCODE = 'MW005';
    END IF;
    IF NEW.size < held.size THEN
        RAISE EXCEPTION 'checkpoint of % records refused: the trail % holds one of % records',
            NEW.size, NEW.trail, held.size USING ERRCODE = 'MW003';
    END IF;
    IF NEW.size = held.size AND NEW.root <> held.root THEN
        RAISE EXCEPTION 'checkpoint of % records refused: the trail % holds one of that size with another root (a fork)',
            NEW.size, NEW.trail USING ERRCODE = 'MW004';
    END IF;
    IF NEW.size = held.size AND NEW.note_time <= held.note_time THEN
        RETURN NULL;
    END IF;
    NEW.pos := held.pos + 1;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER map_wrapper_audit_checkpoints_forward
    BEFORE INSERT ON map_wrapper_audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION map_wrapper_audit_checkpoint_forward();
-- Append-only, as the record table (the same function, error MW002).
CREATE OR REPLACE TRIGGER map_wrapper_audit_checkpoints_no_update_delete
    BEFORE UPDATE OR DELETE ON map_wrapper_audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION map_wrapper_audit_refuse_change();
CREATE OR REPLACE TRIGGER map_wrapper_audit_checkpoints_no_truncate
    BEFORE TRUNCATE ON map_wrapper_audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION map_wrapper_audit_refuse_change();

REVOKE ALL ON map_wrapper_audit_checkpoints FROM PUBLIC;
