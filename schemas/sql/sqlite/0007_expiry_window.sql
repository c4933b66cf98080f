-- The expiry window (DESIGN §8): start-up and the window's refills read
-- only what falls due soon, never every lease. Active leases by expiry
-- and by when their expiring warning falls (the expression the store
-- queries with, `WARNING_AT_SQL`), and the leases still settling (a
-- rollback or a retry), each in the order the reads page in.
CREATE INDEX leases_active_expiry ON leases (expires_at, id) WHERE state = 'active';
CREATE INDEX leases_active_warning ON leases ((issued_at + (expires_at - issued_at) * 2 / 3), id)
    WHERE state = 'active';
CREATE INDEX leases_settling ON leases (id) WHERE state IN ('pending', 'revoking', 'irrevocable');
