-- Static accounts: where each one's rotation stands (DESIGN §7), one row per
-- account. Passwords are stored only sealed (ChaCha20-Poly1305 under
-- server.seal_key_file, bound to account, version and username); the store
-- never sees a plaintext. Times are Unix epoch milliseconds (UTC).
CREATE TABLE static_accounts (
    name                  TEXT    NOT NULL PRIMARY KEY,
    -- The version of the current credential; 0 before the first rotation.
    version               INTEGER NOT NULL CHECK (version >= 0),
    current_username      TEXT,
    current_sealed        BLOB,
    rotated_at            INTEGER,
    -- The credential the current one replaced, working until then.
    previous_username     TEXT,
    previous_valid_until  INTEGER,
    -- Whether retiring it also ends its sessions (a rotation with no overlap).
    previous_end_sessions INTEGER NOT NULL DEFAULT 0 CHECK (previous_end_sessions IN (0, 1)),
    -- A rotation under way: the phase it reached, persisted before the
    -- next backend step, so a crash resumes it there.
    pending_version       INTEGER,
    pending_username      TEXT,
    pending_sealed        BLOB,
    pending_phase         TEXT CHECK (pending_phase IS NULL OR pending_phase IN ('created', 'set', 'tested')),
    pending_reason        TEXT,
    pending_overlap_ms    INTEGER,
    next_rotation_at      INTEGER,
    failures              INTEGER NOT NULL DEFAULT 0 CHECK (failures >= 0),
    last_error            TEXT,
    -- Which node runs the account's rotation now, and until when (a
    -- claim that expires), so that with a shared store exactly one does.
    claimed_by            TEXT,
    claim_until           INTEGER
) STRICT;
