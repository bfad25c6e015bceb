-- 0013: `prov audit delete --pairs-only` drops an audit's stored pairs and keeps its report (a
-- merge receipt may cite the report; the pairs of one gate or memorization audit of a large
-- lineage run to millions of rows). When they were dropped, so that reading them says so instead
-- of answering with no pairs, as if the audit had found none.

ALTER TABLE audits ADD COLUMN pairs_deleted_at TIMESTAMP;

-- A merge's `--audit` was kept as typed: often the 12-digit prefix `prov audit list` prints. A
-- receipt now cites an audit by its full id (what `prov audit delete` and `prov verify` match);
-- a receipt whose text is a prefix of exactly one stored audit (4 hex digits or more) gets that
-- audit's id. Text that names no audit stays as it was, and `prov verify` reports it.
UPDATE merge_receipts SET audit_id = (
    SELECT min(a.audit_id) FROM audits a WHERE starts_with(a.audit_id, lower(merge_receipts.audit_id)))
WHERE audit_id IS NOT NULL AND length(audit_id) >= 4 AND regexp_full_match(audit_id, '[0-9a-fA-F]+')
  AND audit_id NOT IN (SELECT audit_id FROM audits)
  AND (SELECT count(*) FROM audits a WHERE starts_with(a.audit_id, lower(merge_receipts.audit_id))) = 1;
