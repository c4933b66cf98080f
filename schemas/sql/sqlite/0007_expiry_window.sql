-- The expiry window (DESIGN §8): start-up and the window's refills read
-- only what falls due soon, never every lease. Active leases by expiry
-- and by when their expiring warning falls (two thirds into the lease's
-- term: from its last renewal, `renewed_at`, or its issue; the expression
-- the store queries with, `WARNING_AT_SQL`), and the leases still settling
-- (a rollback or a retry), each in the order the reads page in. Leases
-- delivered to systemd units are found without reading the others.
ALTER TABLE leases ADD COLUMN renewed_at INTEGER;
CREATE INDEX leases_active_expiry ON leases (expires_at, id) WHERE state = 'active';
CREATE INDEX leases_active_warning ON leases (
    (coalesce(renewed_at, issued_at) + (expires_at - coalesce(renewed_at, issued_at)) * 2 / 3), id
) WHERE state = 'active';
CREATE INDEX leases_settling ON leases (id) WHERE state IN ('pending', 'revoking', 'irrevocable');
CREATE INDEX leases_owner_unit ON leases (owner_unit) WHERE owner_unit IS NOT NULL;
