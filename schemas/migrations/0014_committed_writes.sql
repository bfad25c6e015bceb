-- 0014: numbers for the write transactions. Each takes the next value just before it commits,
-- and the highest committed is recorded in .prov/writes.json after the commit: a database that
-- ends below it lost committed writes (a damaged or removed write-ahead log), and is refused.
CREATE SEQUENCE committed_writes START 1;
