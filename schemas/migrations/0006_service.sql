-- The ledger as a service (prov serve): API tokens, the access log of every write, and the
-- responses of idempotent writes, so that a retried request applies once.

CREATE TABLE tokens (
    name            VARCHAR PRIMARY KEY,
    scope           VARCHAR NOT NULL,      -- read | write | admin
    token_hash      VARCHAR NOT NULL UNIQUE,  -- sha256 of the token; the token itself is never stored
    created_at      TIMESTAMP NOT NULL,
    expires_at      TIMESTAMP,             -- NULL: never
    revoked_at      TIMESTAMP
);

CREATE TABLE access_log (
    logged_at       TIMESTAMP NOT NULL,
    token           VARCHAR,               -- the token's name (NULL: a server without auth)
    method          VARCHAR NOT NULL,
    path            VARCHAR NOT NULL,
    status          INTEGER NOT NULL,
    idempotency_key VARCHAR,
    seconds         DOUBLE NOT NULL
);

CREATE TABLE idempotency (
    idempotency_key VARCHAR PRIMARY KEY,   -- the client's Idempotency-Key
    token           VARCHAR,
    method          VARCHAR NOT NULL,
    path            VARCHAR NOT NULL,
    status          INTEGER NOT NULL,
    content_type    VARCHAR,
    body            BLOB NOT NULL,
    created_at      TIMESTAMP NOT NULL
);

-- OpenLineage RunEvents received on POST /api/v1/lineage: each OpenLineage run is a provenance
-- run (created by its first event, ended by COMPLETE, FAIL or ABORT).
CREATE TABLE openlineage_runs (
    ol_run_id       VARCHAR PRIMARY KEY,   -- the event's run.runId (a UUID)
    run_id          VARCHAR NOT NULL,      -- the provenance run
    job_namespace   VARCHAR NOT NULL,
    job_name        VARCHAR NOT NULL,
    last_event      VARCHAR NOT NULL,      -- START | RUNNING | COMPLETE | FAIL | ABORT | OTHER
    last_event_time TIMESTAMP
);

-- Every input a run named by OpenLineage namespace and name; dataset_id is the registered dataset
-- it was matched to, NULL when none matched (lineage reports those as unregistered inputs).
CREATE TABLE run_inputs (
    run_id          VARCHAR NOT NULL,
    namespace       VARCHAR NOT NULL,
    name            VARCHAR NOT NULL,
    dataset_id      VARCHAR,
    PRIMARY KEY (run_id, namespace, name)
);
