-- 0001: the data side of the ledger: fingerprint configs, datasets, shards, documents.
-- Applied in one transaction together with its row in schema_migrations.

CREATE TABLE schema_migrations (
    version     INTEGER PRIMARY KEY,
    name        VARCHAR NOT NULL,
    applied_at  TIMESTAMP NOT NULL
);

CREATE TABLE ledger_meta (
    key    VARCHAR PRIMARY KEY,
    value  VARCHAR NOT NULL
);

CREATE TABLE fingerprint_configs (
    config_id        VARCHAR PRIMARY KEY,   -- FingerprintConfig.identity
    unit             VARCHAR NOT NULL,
    ngram            INTEGER NOT NULL,
    normalization    VARCHAR NOT NULL,
    hash             VARCHAR NOT NULL,
    scheme           VARCHAR NOT NULL,
    num_perm         INTEGER NOT NULL,
    seed             BIGINT NOT NULL,
    unicode_version  VARCHAR NOT NULL,      -- Unicode database of the Python that first used it
    created_at       TIMESTAMP NOT NULL
);

CREATE TABLE datasets (
    dataset_id          VARCHAR PRIMARY KEY,  -- NAME@VERSION
    name                VARCHAR NOT NULL,
    version             INTEGER NOT NULL,
    role                VARCHAR NOT NULL CHECK (role IN ('train', 'eval')),
    license             VARCHAR,              -- SPDX; NULL when unknown
    non_commercial      BOOLEAN,
    share_alike         BOOLEAN,
    attribution         BOOLEAN,
    model_generated     BOOLEAN,
    source              VARCHAR,
    creator             VARCHAR,
    description         VARCHAR,
    text_field          VARCHAR NOT NULL,
    id_field            VARCHAR,
    config_id           VARCHAR NOT NULL,
    config_json         VARCHAR NOT NULL,     -- the full FingerprintConfig, including lsh_threshold
    unicode_version     VARCHAR NOT NULL,     -- Unicode database of the Python that normalised the text
    bands               INTEGER NOT NULL,
    rows                INTEGER NOT NULL,
    content_hash        VARCHAR NOT NULL,
    n_shards            BIGINT NOT NULL,
    n_documents         BIGINT NOT NULL,
    n_bytes             BIGINT NOT NULL,
    n_tokens            BIGINT NOT NULL,
    n_invalid_replaced  BIGINT NOT NULL,
    n_invalid_skipped   BIGINT NOT NULL,
    created_at          TIMESTAMP NOT NULL,
    UNIQUE (name, version)
);

CREATE TABLE shards (
    dataset_id   VARCHAR NOT NULL,
    shard_index  INTEGER NOT NULL,
    shard_id     VARCHAR NOT NULL,   -- xxh3-128 hex of the bytes
    name         VARCHAR NOT NULL,
    uri          VARCHAR,
    format       VARCHAR NOT NULL,
    sha256       VARCHAR,
    n_bytes      BIGINT NOT NULL,
    n_documents  BIGINT NOT NULL,
    n_tokens     BIGINT NOT NULL,
    PRIMARY KEY (dataset_id, shard_index)
);

-- No primary key: an index over millions of rows costs memory on every insert. Uniqueness of
-- (dataset_id, key) is checked by a query before a registration commits.
CREATE TABLE documents (
    doc_id       BIGINT NOT NULL,
    dataset_id   VARCHAR NOT NULL,
    shard_index  INTEGER NOT NULL,
    row_index    BIGINT NOT NULL,
    line         BIGINT,
    key          VARCHAR NOT NULL,
    exact_hash   UBIGINT NOT NULL,
    token_count  INTEGER NOT NULL,
    n_bytes      INTEGER NOT NULL,
    signature    UINTEGER[] NOT NULL,
    band_keys    UBIGINT[] NOT NULL
);
