-- 0015: checkpoints of a run. A version committed as a checkpoint of a running run
-- (Run.checkpoint) is recorded with that run (versions.run_id) without ending it, and here with
-- the last step whose examples it was trained on: its lineage counts the run's logged examples of
-- steps up to that one only, and taint leaves it out for a document first seen at a later step.
-- The run's own version (its commit) has no row: it counts the whole run.
CREATE TABLE checkpoints (
    version_id  VARCHAR PRIMARY KEY,
    run_id      VARCHAR NOT NULL,
    step        BIGINT NOT NULL
);
