-- A rotation claim carries a token, new with every claim granted: each
-- write of the account's state made under the claim applies only while the
-- row still has that token, so a node whose claim lapsed and was taken over
-- can no longer write (a fencing token).
ALTER TABLE static_accounts ADD COLUMN claim_token INTEGER;
