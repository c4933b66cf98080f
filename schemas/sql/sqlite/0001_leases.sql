-- Leases: one row per credential lessor made, in every state of its life.
-- No secret is ever stored here: only what finds and removes the credential.
-- Times are Unix epoch milliseconds (UTC).
CREATE TABLE leases (
    id             TEXT    NOT NULL PRIMARY KEY,
    role           TEXT    NOT NULL,
    connection     TEXT    NOT NULL,
    username       TEXT    NOT NULL,
    state          TEXT    NOT NULL
        CHECK (state IN ('pending', 'active', 'revoking', 'revoked', 'irrevocable')),
    issued_at      INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    max_expires_at INTEGER NOT NULL,
    renewable      INTEGER NOT NULL CHECK (renewable IN (0, 1)),
    attempts       INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error     TEXT,
    owner_uid      INTEGER NOT NULL,
    owner_gid      INTEGER NOT NULL,
    owner_pid      INTEGER,
    plugin_data    TEXT    CHECK (plugin_data IS NULL OR json_valid(plugin_data)),
    revoked_at     INTEGER
) STRICT;

-- Start-up scans and purges select by state, in expiry order.
CREATE INDEX leases_state_expires_at ON leases (state, expires_at);
-- Operators look a backend user up by name.
CREATE INDEX leases_username ON leases (username);
