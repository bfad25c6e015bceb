-- 0002: model versions, their manifests (one row per parameter group) and tags.

CREATE TABLE versions (
    version_id    VARCHAR PRIMARY KEY,   -- 32 hex digits
    parents       VARCHAR[] NOT NULL,    -- none for a root, one for a fine-tune, several for a merge
    message       VARCHAR NOT NULL,
    author        VARCHAR,
    created_at    TIMESTAMP NOT NULL,
    run_id        VARCHAR,               -- the training run that produced it, if any
    n_params      BIGINT NOT NULL,       -- parameter groups in the version
    n_elements    BIGINT NOT NULL,
    full_bytes    BIGINT NOT NULL,       -- bytes of a full copy of the version
    stored_bytes  BIGINT NOT NULL        -- bytes of the objects this version's patches added
);

CREATE TABLE version_params (
    version_id  VARCHAR NOT NULL,
    name        VARCHAR NOT NULL,
    dtype       VARCHAR NOT NULL,
    shape       BIGINT[] NOT NULL,
    encoding    VARCHAR NOT NULL,        -- unchanged | sparse | low_rank | full | removed
    objects     MAP(VARCHAR, VARCHAR),   -- role of each tensor of the patch -> object address
    meta_json   VARCHAR,                 -- small metadata of the patch (e.g. the low-rank scale)
    nbytes      BIGINT NOT NULL,         -- bytes of the patch's tensors
    PRIMARY KEY (version_id, name)
);

CREATE TABLE tags (
    name        VARCHAR PRIMARY KEY,
    version_id  VARCHAR NOT NULL,
    created_at  TIMESTAMP NOT NULL
);
