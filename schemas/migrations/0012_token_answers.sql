-- 0012: the answer to creating a token through a ledger server holds the token's secret, and it
-- was kept, as every write's answer is for its Idempotency-Key, where a read token could select
-- it. Such answers now keep only that the token was made (status 0 and the token's name: a retry
-- is told so, and to revoke the token and create another if it lost the answer); this removes the
-- secrets kept before.

UPDATE idempotency
SET status = 0, content_type = 'application/json',
    body = encode(json_object('token', json_extract_string(decode(body), '$.name'))::VARCHAR)
WHERE method = 'POST' AND path = '/api/v1/tokens' AND status BETWEEN 200 AND 299;
