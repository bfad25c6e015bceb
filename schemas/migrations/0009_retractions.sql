-- 0009: retractions (issue 15). A retraction records what was asked to be removed and why, the
-- documents it matched, and the plan made for every version they tainted; each step carried out
-- adds a row to retraction_results in the transaction of the version it made. A dataset version
-- made by removing documents lists them in dataset_removals.

CREATE TABLE retractions (
    retraction_id   VARCHAR PRIMARY KEY,   -- 12 hex digits
    created_at      TIMESTAMP NOT NULL,
    author          VARCHAR,
    reason          VARCHAR NOT NULL,
    target          VARCHAR NOT NULL,      -- as `prov taint` describes it
    target_json     VARCHAR NOT NULL,      -- dataset, shard, key, text (its length and exact hash only), near
    near            DOUBLE,                -- the Jaccard threshold for near-copies, if any
    plan_json       VARCHAR NOT NULL       -- the steps, parents first
);

-- What a retraction retracts: documents (doc_id set), or a whole shard (doc_id NULL, shard_index
-- set) or dataset version (both NULL).
CREATE TABLE retraction_documents (
    retraction_id   VARCHAR NOT NULL,
    dataset_id      VARCHAR NOT NULL,
    shard_index     INTEGER,
    doc_id          BIGINT,
    key             VARCHAR,
    jaccard         DOUBLE                 -- estimated Jaccard to the target (1 for the target itself)
);

CREATE TABLE retraction_results (
    retraction_id   VARCHAR NOT NULL,
    version_id      VARCHAR NOT NULL,      -- the tainted version
    action          VARCHAR NOT NULL,      -- remerge | rebase
    new_version_id  VARCHAR NOT NULL,
    exact           BOOLEAN NOT NULL,      -- false for a rebase: the model is approximate
    applied_at      TIMESTAMP NOT NULL,
    PRIMARY KEY (retraction_id, version_id)
);

CREATE TABLE dataset_removals (
    dataset_id      VARCHAR NOT NULL,      -- the version made without the documents
    from_dataset_id VARCHAR NOT NULL,      -- the version they were removed from
    doc_id          BIGINT NOT NULL,       -- the removed document, in from_dataset_id
    key             VARCHAR,
    retraction_id   VARCHAR,               -- the retraction it serves, if any
    reason          VARCHAR,
    created_at      TIMESTAMP NOT NULL
);

-- The proofs `prov audit retraction` made: whether no result (and no release) has retracted data
-- in its lineage, and what the samples reproduced.
CREATE TABLE retraction_audits (
    audit_id        VARCHAR PRIMARY KEY,   -- 32 hex digits
    retraction_id   VARCHAR NOT NULL,
    passed          BOOLEAN NOT NULL,
    report_json     VARCHAR NOT NULL,
    created_at      TIMESTAMP NOT NULL
);
