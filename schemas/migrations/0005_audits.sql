-- 0005: stored audits (dedup, pre-merge gate, memorization) and the pairs a dedup audit found.
-- Applied in one transaction together with its row in schema_migrations.

CREATE TABLE audits (
    audit_id     VARCHAR PRIMARY KEY,   -- 32 hex digits
    kind         VARCHAR NOT NULL CHECK (kind IN ('dedup', 'merge', 'memorization')),
    target       VARCHAR NOT NULL,      -- what was audited, as given (dataset ids, version ids)
    params_json  VARCHAR NOT NULL,      -- threshold, banding, policy limits, ... as used
    passed       BOOLEAN,               -- merge gate: whether every policy limit held; NULL for reports
    report_json  VARCHAR NOT NULL,      -- the report, without the pair list
    created_at   TIMESTAMP NOT NULL
);

-- The candidate pairs a dedup audit confirmed, one row each (doc_a < doc_b): kept in the ledger
-- rather than in the report, so a large audit's pairs are read and exported by queries.
CREATE TABLE audit_pairs (
    audit_id   VARCHAR NOT NULL,
    doc_a      BIGINT NOT NULL,
    doc_b      BIGINT NOT NULL,
    matches    INTEGER NOT NULL,        -- signature positions that agree
    jaccard    DOUBLE NOT NULL,         -- matches / num_perm
    exact      DOUBLE,                  -- exact Jaccard of the shingle sets, where --verify read the text
    cluster    BIGINT NOT NULL          -- the smallest doc_id of the pair's connected component
);
