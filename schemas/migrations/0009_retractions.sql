-- 0009: retractions (issue 15, work in progress). A retraction records what was asked to be
-- removed and why, the documents it matched, and the plan made for every version they tainted;
-- each step carried out adds a row to retraction_results, in the transaction of the version it made.

CREATE TABLE retractions (
    retraction_id   VARCHAR PRIMARY KEY,   -- 12 hex digits
    created_at      TIMESTAMP NOT NULL,
    author          VARCHAR,
    reason          VARCHAR NOT NULL,
    target          VARCHAR NOT NULL,      -- as `prov taint` describes it
    near            DOUBLE,                -- the Jaccard threshold for near-copies, if any
    documents_json  VARCHAR NOT NULL,      -- the matched documents: doc_id, dataset_id, key, jaccard
    plan_json       VARCHAR NOT NULL       -- the steps, parents first
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
