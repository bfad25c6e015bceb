-- 0010: an Idempotency-Key answers again only the request it was first sent with. The SHA-256 of
-- that request's body is kept with its answer; a retry whose body differs (or that another token
-- sends) is refused instead of being answered with the first write's result while its own is
-- dropped. NULL for answers stored before this migration and for the mark a write's transaction
-- leaves before its answer is stored.

ALTER TABLE idempotency ADD COLUMN request_sha256 VARCHAR;
