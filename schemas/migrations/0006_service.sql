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
