-- Several live nodes on one store (DESIGN §8): who is alive, who works on
-- which lease, and a notification whenever a lease's schedule changes.

-- The store's clock in epoch milliseconds: what heartbeats and claims are
-- measured by, so that nodes whose clocks differ agree on them.
CREATE FUNCTION lessor_now_ms() RETURNS BIGINT LANGUAGE sql VOLATILE AS $$
    SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint
$$;

-- One row per node_id. `heartbeat_at` is the store's clock (epoch ms), so
-- nodes with skewed clocks still agree on who is alive.
CREATE TABLE nodes (
    node_id      TEXT    NOT NULL PRIMARY KEY,
    host         TEXT,
    pid          INTEGER,
    version      TEXT,
    started_at   BIGINT  NOT NULL,
    heartbeat_at BIGINT  NOT NULL
);

-- A claim: the node working on a lease now (revoking or renewing it) and
-- until when at most (the store's clock). A claim also ends when its
-- holder's heartbeat is older than the node timeout.
ALTER TABLE leases ADD COLUMN claimed_by  TEXT;
ALTER TABLE leases ADD COLUMN claim_until BIGINT;
-- When a `revoking` or `irrevocable` lease is next tried (epoch ms).
ALTER TABLE leases ADD COLUMN retry_at    BIGINT;

CREATE INDEX leases_retry_at ON leases (retry_at) WHERE state IN ('revoking', 'irrevocable');
CREATE INDEX leases_pending_node ON leases (node) WHERE state = 'pending';

-- Every node LISTENs on `lessor_leases` to learn the deadlines of the
-- other nodes' leases: "<state> <id> <node> <expires_at> <old expires_at>"
-- when a lease becomes active, is renewed, or ends.
CREATE FUNCTION lessor_lease_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('lessor_leases',
            concat_ws(' ', 'revoked', OLD.id, OLD.node, OLD.expires_at, OLD.expires_at));
        RETURN OLD;
    END IF;
    PERFORM pg_notify('lessor_leases',
        concat_ws(' ', NEW.state, NEW.id, NEW.node, NEW.expires_at, OLD.expires_at));
    RETURN NEW;
END
$$;

CREATE TRIGGER leases_changed AFTER UPDATE ON leases FOR EACH ROW
    WHEN ((NEW.state = 'active' AND (OLD.state <> 'active' OR OLD.expires_at <> NEW.expires_at))
          OR (NEW.state = 'revoked' AND OLD.state <> 'revoked'))
    EXECUTE FUNCTION lessor_lease_changed();

CREATE TRIGGER leases_deleted AFTER DELETE ON leases FOR EACH ROW
    WHEN (OLD.state <> 'revoked')
    EXECUTE FUNCTION lessor_lease_changed();
