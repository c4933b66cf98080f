-- The lease store on PostgreSQL, shared by every node of a fleet
-- (DESIGN §8). The same tables as the SQLite store's, plus the node that
-- issued each lease. No secret is ever stored here: static-account
-- passwords only sealed. Times are Unix epoch milliseconds (UTC), as in
-- the SQLite store, so both read and write them the same way.
CREATE TABLE leases (
    id             TEXT    NOT NULL PRIMARY KEY COLLATE "C",
    role           TEXT    NOT NULL,
    connection     TEXT    NOT NULL,
    username       TEXT    NOT NULL,
    state          TEXT    NOT NULL
        CHECK (state IN ('pending', 'active', 'revoking', 'revoked', 'irrevocable')),
    issued_at      BIGINT  NOT NULL,
    expires_at     BIGINT  NOT NULL,
    max_expires_at BIGINT  NOT NULL,
    renewable      BOOLEAN NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error     TEXT,
    owner_uid      BIGINT  NOT NULL,
    owner_gid      BIGINT  NOT NULL,
    owner_pid      INTEGER,
    owner_policy   TEXT,
    plugin_data    JSONB,
    revoked_at     BIGINT,
    idempotency    TEXT,
    -- The node whose daemon issued the lease (server.node_id).
    node           TEXT    NOT NULL,
    -- The order start-up scans in (the SQLite store's rowid).
    seq            BIGINT  GENERATED ALWAYS AS IDENTITY
);

CREATE INDEX leases_state_expires_at ON leases (state, expires_at);
CREATE INDEX leases_username ON leases (username);
CREATE UNIQUE INDEX leases_connection_username ON leases (connection, username);
CREATE INDEX leases_idempotency ON leases (idempotency) WHERE idempotency IS NOT NULL;
CREATE INDEX leases_unfinished_seq ON leases (seq) WHERE state <> 'revoked';

CREATE TABLE static_accounts (
    name                  TEXT    NOT NULL PRIMARY KEY,
    version               BIGINT  NOT NULL CHECK (version >= 0),
    current_username      TEXT,
    current_sealed        BYTEA,
    rotated_at            BIGINT,
    previous_username     TEXT,
    previous_valid_until  BIGINT,
    previous_end_sessions BOOLEAN NOT NULL DEFAULT false,
    pending_version       BIGINT,
    pending_username      TEXT,
    pending_sealed        BYTEA,
    pending_phase         TEXT CHECK (pending_phase IS NULL OR pending_phase IN ('created', 'set', 'tested')),
    pending_reason        TEXT,
    pending_overlap_ms    BIGINT,
    next_rotation_at      BIGINT,
    failures              INTEGER NOT NULL DEFAULT 0 CHECK (failures >= 0),
    last_error            TEXT,
    claimed_by            TEXT,
    claim_until           BIGINT
);
