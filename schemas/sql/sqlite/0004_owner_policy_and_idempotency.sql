-- Who owns a lease now includes the policy that granted it, and a lease
-- issued for an Idempotency-Key carries that key's digest (SHA-256 of the
-- owner, the role and the key; never the key itself), so a repeated request
-- finds it again, across restarts too.
ALTER TABLE leases ADD COLUMN owner_policy TEXT;
ALTER TABLE leases ADD COLUMN idempotency TEXT;
CREATE INDEX leases_idempotency ON leases (idempotency) WHERE idempotency IS NOT NULL;
