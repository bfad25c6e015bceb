-- 0011: a run that logged its examples of a dataset is counted only on the shards it saw. Until
-- now the end of such a run also wrote a row of 0 examples for every other shard of the dataset,
-- so lineage listed those shards, taint of one of them named the run as "trained on it" (with 0
-- examples), and a data diff of two versions missed the shards only one of them saw. The end of
-- a run no longer writes them; this removes those written before. (A dataset the run declared
-- without logging is counted on every shard, by its epochs, as before.)

DELETE FROM run_shards WHERE logged AND examples = 0;
