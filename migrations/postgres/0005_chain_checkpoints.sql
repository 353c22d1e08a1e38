-- Checkpoints anchor each writer's hash chain, so that a deleted tail, a dropped chain or a cut history is
-- visible to `audit verify` and not just an absence.
--
-- A writer writes one checkpoint when it starts (seq 0 or its head), one every
-- `audit.checkpoint_interval_seconds` while its chain grows, and one when it shuts down. `audit prune` writes
-- a `prune` checkpoint carrying the head at the cut, in the same transaction that deletes the rows up to it.
-- The table is append-only, and the decisions trigger now lets a row go only when a prune checkpoint of its
-- own writer covers it: history can be cut, never silently.
CREATE TABLE chain_checkpoints (
    id         bigserial PRIMARY KEY,
    writer_id  uuid NOT NULL,
    seq        bigint NOT NULL CHECK (seq >= 0),
    hash       text NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('start', 'periodic', 'shutdown', 'prune')),
    at         timestamptz NOT NULL,
    note       text
);
CREATE INDEX chain_checkpoints_writer ON chain_checkpoints (writer_id, seq);

CREATE FUNCTION chain_checkpoints_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'chain checkpoints are append-only';
END $$;
CREATE TRIGGER chain_checkpoints_append_only BEFORE UPDATE OR DELETE ON chain_checkpoints
    FOR EACH ROW EXECUTE FUNCTION chain_checkpoints_append_only();
CREATE TRIGGER chain_checkpoints_no_truncate BEFORE TRUNCATE ON chain_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION chain_checkpoints_append_only();

CREATE OR REPLACE FUNCTION decisions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND EXISTS (
        SELECT 1 FROM chain_checkpoints c
        WHERE c.writer_id = OLD.writer_id AND c.kind = 'prune' AND c.seq >= OLD.seq
    ) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'decisions are append-only';
END $$;
CREATE FUNCTION decisions_no_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'decisions are append-only';
END $$;
CREATE TRIGGER decisions_no_truncate BEFORE TRUNCATE ON decisions
    FOR EACH STATEMENT EXECUTE FUNCTION decisions_no_truncate();

-- What happened upstream is append-only too: an outcome row goes only with its pruned decision.
CREATE FUNCTION decision_outcomes_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND EXISTS (
        SELECT 1 FROM decisions d JOIN chain_checkpoints c
          ON c.writer_id = d.writer_id AND c.kind = 'prune' AND c.seq >= d.seq
        WHERE d.id = OLD.decision_id
    ) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'decision outcomes are append-only';
END $$;
CREATE TRIGGER decision_outcomes_append_only BEFORE UPDATE OR DELETE ON decision_outcomes
    FOR EACH ROW EXECUTE FUNCTION decision_outcomes_append_only();
CREATE TRIGGER decision_outcomes_no_truncate BEFORE TRUNCATE ON decision_outcomes
    FOR EACH STATEMENT EXECUTE FUNCTION decisions_no_truncate();
