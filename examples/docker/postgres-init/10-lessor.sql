-- Initialises the docker-compose PostgreSQL for lessor (see docker-compose.yml).
-- The postgres image runs this once, when its data volume is first created,
-- as the superuser, connected to POSTGRES_DB ("app").
--
-- lessor_admin is the account lessor logs in with (connection pg_main). It is
-- not a superuser: CREATEROLE to create and drop the short-lived roles,
-- pg_signal_backend to end their sessions on revocation, and ADMIN on the
-- group roles that dynamic roles join.
\set ON_ERROR_STOP on

-- The password comes from the compose secret, never from this file.
\set admin_pw `cat /run/secrets/pg_admin_pw`

CREATE ROLE lessor_admin WITH LOGIN CREATEROLE PASSWORD :'admin_pw';
\unset admin_pw
GRANT pg_signal_backend TO lessor_admin;
-- PostgreSQL 16+: a CREATEROLE role gets ADMIN on the roles it creates, but
-- not their privileges. REASSIGN OWNED / DROP OWNED during revocation need
-- them, so let lessor_admin inherit from (and SET ROLE to) what it creates.
-- Consequence: while a lease exists, lessor_admin can also read what it reads.
ALTER ROLE lessor_admin SET createrole_self_grant = 'set, inherit';

-- The group that dynamic app_ro roles join (IN ROLE app_readers): read-only
-- access to the tables of schema public, present and future.
CREATE ROLE app_readers NOLOGIN;
GRANT CONNECT ON DATABASE app TO app_readers;
GRANT USAGE ON SCHEMA public TO app_readers;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO app_readers;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO app_readers;
-- lessor_admin may put roles into the group; it is not itself a reader.
GRANT app_readers TO lessor_admin WITH ADMIN TRUE, INHERIT FALSE, SET FALSE;

-- Something to read.
CREATE TABLE public.greetings (id integer PRIMARY KEY, text text NOT NULL);
INSERT INTO public.greetings VALUES (1, 'hello from the lessor example');
