//! The run's PostgreSQL side: the names it creates, the fixtures (a
//! CREATEROLE admin, its database, the group role), the cleanup that drops
//! them, and the SQL helpers every PostgreSQL phase shares (connections,
//! counting and creating roles, keeping the role catalogs vacuumed).

use chrono::{DateTime, Utc};
use rand::Rng;
use tokio_postgres::config::Host;
use tokio_postgres::NoTls;

use crate::Result;

/// The server's address, refusing anything but the loopback interface.
pub fn local_target(config: &tokio_postgres::Config) -> Result<(String, u16), String> {
    let host = match config.get_hosts() {
        [Host::Tcp(h)] if h == "127.0.0.1" || h == "localhost" => "127.0.0.1".to_string(),
        [] => "127.0.0.1".to_string(),
        other => return Err(format!("LESSOR_TEST_PG_URL must point at 127.0.0.1 (got {other:?})")),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    Ok((host, port))
}

/// Every name the run creates, all derived from one random run id.
#[derive(Debug, Clone)]
pub struct Names {
    /// Prefix of every role the run creates, admin included.
    pub prefix: String,
    pub admin: String,
    pub database: String,
    pub readers: String,
}

impl Names {
    pub fn new(run: &str) -> Self {
        Self {
            prefix: format!("lb_{run}_"),
            admin: format!("lb_{run}_admin"),
            database: format!("lb_{run}_db"),
            readers: format!("bench_readers_{run}"),
        }
    }

    /// Prefix of the roles minted for `kind` (lessor role name, or `raw…`).
    pub fn minted(&self, kind: &str) -> String {
        format!("{}{kind}_", self.prefix)
    }
}

#[derive(Debug, Clone)]
pub struct Setup {
    pub superuser: tokio_postgres::Config,
    pub host: String,
    pub port: u16,
    pub names: Names,
    pub admin_password: String,
    pub password_env: String,
}

impl Setup {
    pub fn admin_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(&self.names.admin)
            .password(&self.admin_password)
            .dbname(&self.names.database)
            .application_name("lessor-bench-raw");
        c
    }

    pub fn grp_statements(&self) -> Vec<String> {
        vec![format!(
            "CREATE ROLE \"{{{{name}}}}\" WITH LOGIN PASSWORD '{{{{password}}}}' VALID UNTIL '{{{{expiration}}}}' IN ROLE {}",
            self.names.readers
        )]
    }

    pub fn direct_statements(&self) -> Vec<String> {
        vec![
            "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'"
                .to_string(),
            "GRANT SELECT ON t2 TO \"{{name}}\"".to_string(),
        ]
    }
}

pub async fn connect(config: &tokio_postgres::Config) -> Result<tokio_postgres::Client> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

pub async fn create_fixtures(setup: &Setup) -> Result<()> {
    let su = connect(&setup.superuser).await?;
    let n = &setup.names;
    su.batch_execute(&format!(
        "CREATE ROLE {} WITH LOGIN CREATEROLE PASSWORD '{}'; GRANT pg_signal_backend TO {};",
        n.admin, setup.admin_password, n.admin
    ))
    .await?;
    su.batch_execute(&format!("CREATE DATABASE {} OWNER {}", n.database, n.admin)).await?;
    // Everything else as the admin, so it owns (and on PostgreSQL 16+ holds
    // ADMIN OPTION on) what lessor will use.
    let admin = connect(&setup.admin_config()).await?;
    admin
        .batch_execute(&format!(
            "CREATE ROLE {r} NOLOGIN; CREATE TABLE t (id int); GRANT SELECT ON t TO {r}; CREATE TABLE t2 (id int);",
            r = n.readers
        ))
        .await?;
    Ok(())
}

/// Drops the database, then every role of the run (minted ones first, the
/// group role, the admin last). Returns how many roles were dropped.
pub async fn cleanup(setup: &Setup) -> Result<usize> {
    let su = connect(&setup.superuser).await?;
    let n = &setup.names;
    su.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", n.database)).await?;
    // Phase `window`'s store, if the phase stopped before dropping it.
    su.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", crate::window::database(setup)))
        .await?;
    let rows = su
        .query(
            "SELECT rolname::text FROM pg_roles WHERE starts_with(rolname::text, $1) AND rolname::text <> $2 \
             ORDER BY 1",
            &[&n.prefix, &n.admin],
        )
        .await?;
    let mut minted: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    minted.push(n.readers.clone());
    minted.push(n.admin.clone());
    let mut dropped = 0;
    for chunk in minted.chunks(500) {
        let list = chunk.iter().map(|r| format!("\"{r}\"")).collect::<Vec<_>>().join(", ");
        su.batch_execute(&format!("DROP ROLE IF EXISTS {list}")).await?;
        dropped += chunk.len();
    }
    Ok(dropped)
}

/// `VACUUM`s the shared catalogs that role churn bloats, so every measured
/// phase starts from the same state: with autovacuum off (as on the
/// machine these figures come from) each run leaves tens of thousands of dead
/// tuples in `pg_authid` and `pg_auth_members`, and later phases would pay
/// for earlier ones. Needs a superuser; skipped with a note otherwise.
pub async fn vacuum_catalogs(setup: &Setup) {
    let outcome = async {
        let su = connect(&setup.superuser).await?;
        su.batch_execute("VACUUM pg_catalog.pg_authid, pg_catalog.pg_auth_members, pg_catalog.pg_shdepend")
            .await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    }
    .await;
    if let Err(e) = outcome {
        eprintln!("note: VACUUM of the role catalogs failed ({e}); figures may drift as they bloat");
    }
}

/// How many roles start with `prefix`. A range on `pg_authid`'s name index
/// (`name` sorts bytewise), so polling it every few milliseconds does not
/// scan the catalog and slow down the revocations being measured.
pub async fn count_roles(su: &tokio_postgres::Client, prefix: &str) -> Result<i64> {
    let upper = prefix_upper_bound(prefix).ok_or("prefix has no upper bound")?;
    Ok(su
        .query_one(
            "SELECT count(*) FROM pg_authid WHERE rolname >= $1::text::name AND rolname < $2::text::name",
            &[&prefix, &upper],
        )
        .await?
        .get(0))
}

/// How many of `names` are roles (a lookup on `pg_authid`'s name index).
pub async fn roles_present(su: &tokio_postgres::Client, names: Vec<String>) -> Result<usize> {
    let row = su
        .query_one("SELECT count(*) FROM pg_authid WHERE rolname = ANY($1::text[]::name[])", &[&names])
        .await?;
    Ok(row.get::<_, i64>(0).try_into()?)
}

/// The least string greater than every string starting with `prefix`
/// (ASCII prefixes only, which the run's names are).
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            return String::from_utf8(bytes).ok();
        }
    }
    None
}

/// One role made directly: BEGIN, the creation `statements` for a fresh
/// name under `prefix` with `password`, valid for an hour; COMMIT. Returns
/// the name.
pub async fn create_role(
    client: &mut tokio_postgres::Client,
    prefix: &str,
    statements: &[String],
    password: &str,
) -> std::result::Result<String, tokio_postgres::Error> {
    let name = format!("{prefix}{}", lower(16));
    let expires = expiration(Utc::now() + chrono::Duration::hours(1));
    let tx = client.transaction().await?;
    for template in statements {
        // On error the transaction is dropped, which rolls it back.
        tx.batch_execute(&render(template, &name, password, &expires)).await?;
    }
    tx.commit().await?;
    Ok(name)
}

/// `len` random lower-case letters and digits.
pub fn lower(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

fn expiration(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S+00").to_string()
}

fn render(template: &str, name: &str, password: &str, expiration: &str) -> String {
    template.replace("{{name}}", name).replace("{{password}}", password).replace("{{expiration}}", expiration)
}

pub fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}
