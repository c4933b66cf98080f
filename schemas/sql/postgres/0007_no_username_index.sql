-- The index on every lease's username goes. An activation is not a HOT
-- update (its state is in the partial indexes' predicates), so each
-- issuance entered it twice, on the server that also makes the roles. Its
-- one reader, tidy's question of which users a lease still covers, now
-- looks each username up under each connection through the unique index
-- on (connection, username), finding the connections by skipping through
-- that index's first column.
DROP INDEX leases_username;
