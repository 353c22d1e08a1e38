-- Checkpoints anchoring each writer's hash chain (the Postgres migration 0005 explains them). A decision row
-- may be deleted only when a prune checkpoint of its writer covers it.
CREATE TABLE chain_checkpoints (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    writer_id  TEXT NOT NULL,
    seq        INTEGER NOT NULL CHECK (seq >= 0),
    hash       TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('start', 'periodic', 'shutdown', 'prune')),
    at         TEXT NOT NULL,
    note       TEXT
);
CREATE INDEX chain_checkpoints_writer ON chain_checkpoints (writer_id, seq);
CREATE TRIGGER chain_checkpoints_no_update BEFORE UPDATE ON chain_checkpoints BEGIN SELECT RAISE(ABORT, 'chain checkpoints are append-only'); END;
CREATE TRIGGER chain_checkpoints_no_delete BEFORE DELETE ON chain_checkpoints BEGIN SELECT RAISE(ABORT, 'chain checkpoints are append-only'); END;

DROP TRIGGER decisions_no_delete;
CREATE TRIGGER decisions_no_delete BEFORE DELETE ON decisions
    WHEN NOT EXISTS (
        SELECT 1 FROM chain_checkpoints c
        WHERE c.writer_id = OLD.writer_id AND c.kind = 'prune' AND c.seq >= OLD.seq
    )
BEGIN SELECT RAISE(ABORT, 'decisions are append-only'); END;

-- Outcomes are append-only too: a row goes only with its pruned decision.
CREATE TRIGGER decision_outcomes_no_update BEFORE UPDATE ON decision_outcomes BEGIN SELECT RAISE(ABORT, 'decision outcomes are append-only'); END;
CREATE TRIGGER decision_outcomes_no_delete BEFORE DELETE ON decision_outcomes
    WHEN NOT EXISTS (
        SELECT 1 FROM decisions d JOIN chain_checkpoints c
          ON c.writer_id = d.writer_id AND c.kind = 'prune' AND c.seq >= d.seq
        WHERE d.id = OLD.decision_id
    )
BEGIN SELECT RAISE(ABORT, 'decision outcomes are append-only'); END;
