-- 0004: Fisher information stored with versions, and the receipts of merges.

-- The diagonal Fisher of a version's parameters, content-addressed like the parameters themselves:
-- kind 'full' (one object: the Fisher tensor) or 'topk' (objects 'indices' and 'values': the
-- largest entries; every other entry is taken as 0, i.e. the merge's floor eps).
CREATE TABLE version_fishers (
    version_id  VARCHAR NOT NULL,
    name        VARCHAR NOT NULL,
    kind        VARCHAR NOT NULL CHECK (kind IN ('full', 'topk')),
    objects     MAP(VARCHAR, VARCHAR) NOT NULL,
    meta_json   VARCHAR,                 -- e.g. the mode and number of examples it was estimated on
    PRIMARY KEY (version_id, name)
);

-- What made a merged version, enough to make it again bit for bit on the same device type.
CREATE TABLE merge_receipts (
    version_id      VARCHAR PRIMARY KEY,
    method          VARCHAR NOT NULL,    -- fisher | average | task_arithmetic | ties
    inputs          VARCHAR[] NOT NULL,  -- the merged versions, in order
    weights         DOUBLE[] NOT NULL,
    base_version    VARCHAR,             -- task_arithmetic and ties: the version task vectors start from
    eps             DOUBLE,
    normalize       BOOLEAN,
    density         DOUBLE,
    kernel          VARCHAR NOT NULL,    -- triton | torch, and the kernel module's version
    params_json     VARCHAR NOT NULL,    -- per parameter: the input and Fisher object addresses
    audit_id        VARCHAR,             -- the pre-merge audit it cites, if any
    created_at      TIMESTAMP NOT NULL
);
