-- 0008: datasets whose document rows are kept as Parquet files under the ledger folder
-- (.prov/documents/NAME/vVERSION-TAG/*.parquet) instead of inside the `documents` table. One row
-- per file; a connection sees the files' rows through a temporary view named `documents` that
-- unions them with the table, so every query reads both. Applied in one transaction with its
-- row in schema_migrations.

CREATE TABLE document_files (
    path          VARCHAR PRIMARY KEY,     -- relative to the ledger folder, '/'-separated
    dataset_id    VARCHAR NOT NULL,
    n_rows        BIGINT NOT NULL,
    n_bytes       BIGINT NOT NULL,         -- the file's size: a cut file is found without reading it
    xxh3_128      VARCHAR NOT NULL,        -- of the file's bytes (as objects are hashed); `prov verify --objects`
    first_doc_id  BIGINT,                  -- the smallest and largest doc_id in the file
    last_doc_id   BIGINT,
    created_at    TIMESTAMP NOT NULL
);
