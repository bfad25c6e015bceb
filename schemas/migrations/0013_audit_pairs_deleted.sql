-- 0013: `prov audit delete --pairs-only` drops an audit's stored pairs and keeps its report (a
-- merge receipt may cite the report; the pairs of one gate or memorization audit of a large
-- lineage run to millions of rows). When they were dropped, so that reading them says so instead
-- of answering with no pairs, as if the audit had found none.

ALTER TABLE audits ADD COLUMN pairs_deleted_at TIMESTAMP;
