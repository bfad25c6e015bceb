-- 0007: the files of a Hugging Face checkpoint folder beside its tensors (config.json,
-- generation_config.json, the tokenizer's files), one row per file of the folder a version was
-- committed from. A stored file's bytes are an object (a uint8 tensor) in the object store; a file
-- the commit left out has no object and says why. Applied in one transaction with its row in
-- schema_migrations.

CREATE TABLE version_files (
    version_id  VARCHAR NOT NULL,
    name        VARCHAR NOT NULL,        -- the file's name in the folder
    size        BIGINT NOT NULL,         -- bytes
    object      VARCHAR,                 -- address of the object holding its bytes; NULL: not stored
    skipped     VARCHAR,                 -- why it was not stored (a pickle, optimizer state, ...)
    PRIMARY KEY (version_id, name),
    CHECK ((object IS NULL) <> (skipped IS NULL))
);
