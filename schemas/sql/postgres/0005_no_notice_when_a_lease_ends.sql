-- A lease that ends is no longer announced. No node acts on the notice (a
-- deadline another node holds for the lease wakes a sweep that reads the
-- store and finds nothing due), and a drain sent one per lease to every
-- node's listener. A lease that becomes active or is renewed still is.
DROP TRIGGER leases_deleted ON leases;
DROP TRIGGER leases_changed ON leases;
CREATE TRIGGER leases_changed AFTER UPDATE ON leases FOR EACH ROW
    WHEN (NEW.state = 'active' AND (OLD.state <> 'active' OR OLD.expires_at <> NEW.expires_at))
    EXECUTE FUNCTION lessor_lease_changed();
