-- Two leases never share a username on one connection. Names carry at
-- least 8 random characters, so a collision is improbable; this makes it
-- impossible: the second issuance fails before touching the backend,
-- instead of a later rollback dropping the first lease's user.
CREATE UNIQUE INDEX leases_connection_username ON leases (connection, username);
