-- The expiry window (DESIGN §8): a node's start-up reads only its own
-- leases that are still settling and the leases falling due soon, and its
-- refills only the next stretch of time, so neither grows with the fleet.
-- Active leases by expiry (every node's: a node also keeps the others'
-- deadlines that fall due soon) and, per node, by when their expiring
-- warning falls (two thirds into the lease's term: from its last renewal,
-- `renewed_at`, or its issue; the expression the store queries with,
-- `WARNING_AT_SQL`), each in the order the reads page in. Both carry what
-- the window reads, so it is read without visiting the table (once vacuum
-- has marked its pages all-visible). Leases delivered to systemd units are found without
-- reading the others.
ALTER TABLE leases ADD COLUMN renewed_at BIGINT;
CREATE INDEX leases_active_expiry ON leases (expires_at, id)
    INCLUDE (node, issued_at, attempts, renewed_at) WHERE state = 'active';
CREATE INDEX leases_active_warning ON leases (
    node, (coalesce(renewed_at, issued_at) + (expires_at - coalesce(renewed_at, issued_at)) * 2 / 3), id
) INCLUDE (issued_at, expires_at, attempts, renewed_at) WHERE state = 'active';
CREATE INDEX leases_owner_unit ON leases (node, owner_unit) WHERE owner_unit IS NOT NULL;
-- What the new indexes make redundant goes, so an issuance updates no more
-- indexes than before: the scan by insertion order, and the index on every
-- lease's state and expiry (active leases by expiry are above, retries
-- have `leases_retry_at`, and the purge of revoked leases gets its own).
-- A node's leases still settling are found through `leases_pending_node`
-- and `leases_retry_at`: an index of their own, which every issuance
-- enters while `pending`, cost a third of the store's issuance rate.
CREATE INDEX leases_revoked_at ON leases (revoked_at) WHERE state = 'revoked';
DROP INDEX leases_unfinished_seq;
DROP INDEX leases_state_expires_at;
