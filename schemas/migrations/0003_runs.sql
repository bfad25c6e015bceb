-- 0003: training runs and what they consumed.

CREATE TABLE runs (
    run_id        VARCHAR PRIMARY KEY,   -- 32 hex digits
    base_version  VARCHAR,               -- the version the run starts from (NULL: from scratch)
    message       VARCHAR NOT NULL,
    author        VARCHAR,
    params_json   VARCHAR NOT NULL,      -- hyper-parameters as given, JSON
    status        VARCHAR NOT NULL CHECK (status IN ('running', 'finished', 'failed')),
    error         VARCHAR,               -- why a failed run failed
    started_at    TIMESTAMP NOT NULL,
    ended_at      TIMESTAMP,
    version_id    VARCHAR,               -- the version the run produced, if any
    host          VARCHAR NOT NULL,      -- where the run's process runs, to tell an abandoned run
    pid           INTEGER NOT NULL,      -- 0: started from the CLI, ended explicitly
    n_logged      BIGINT NOT NULL DEFAULT 0  -- rows of run_examples, kept here so reading a run scans none
);

-- The datasets a run declared, with the epochs it declared over each (used for the shards of a
-- dataset of which no example was logged: seen in full, this many times).
CREATE TABLE run_datasets (
    run_id      VARCHAR NOT NULL,
    dataset_id  VARCHAR NOT NULL,
    epochs      DOUBLE NOT NULL,
    PRIMARY KEY (run_id, dataset_id)
);

-- Per shard of every declared dataset, written when the run ends: examples seen and epochs.
-- logged: true when counted from logged examples, false when assumed from the declared epochs.
CREATE TABLE run_shards (
    run_id       VARCHAR NOT NULL,
    dataset_id   VARCHAR NOT NULL,
    shard_index  INTEGER NOT NULL,
    examples     BIGINT NOT NULL,
    distinct_documents BIGINT NOT NULL,
    epochs       DOUBLE NOT NULL,
    logged       BOOLEAN NOT NULL,
    PRIMARY KEY (run_id, dataset_id, shard_index)
);

-- Which document was seen at which step: one row per logged example, no index (DuckDB's
-- columnar compression keeps a row to a few bytes).
CREATE TABLE run_examples (
    run_id  VARCHAR NOT NULL,
    step    BIGINT NOT NULL,
    doc_id  BIGINT NOT NULL
);
