-- The systemd unit a lease's credential was delivered to through
-- LoadCredential= (the credentials socket): the lease lives while the
-- unit's processes run. NULL for leases issued over the API socket.
ALTER TABLE leases ADD COLUMN owner_unit TEXT;
