//! Phase `redis`: issuance and revocation of Redis ACL users, the raw
//! commands against lessor, in the same run.
//!
//! The phase starts a `redis-server` of its own (`LESSOR_TEST_REDIS_SERVER`
//! or `redis-server` on `PATH`; a free loopback port, no persistence,
//! stopped at the end) with lessor's admin holding only the commands the
//! plugin needs. In order, each with N concurrent tasks:
//! - raw issuance: N connections as that admin, each running the plugin's
//!   command, `ACL SETUSER <fresh name> reset resetchannels -@all
//!   ~cache:* +@read ><fresh password> on`, for S seconds;
//! - raw revocation: every user just made, taken from one queue by N
//!   connections, each running the plugin's revocation, `CLIENT KILL USER`
//!   then `ACL DELUSER`;
//! - lessor issuance: N tasks calling `POST /v1/creds/cache_ro` against a
//!   daemon started in this process on the same server, for S seconds;
//! - lessor revocation: every lease just issued, taken from one queue by N
//!   tasks calling `DELETE /v1/leases/{id}` (the daemon has N revocation
//!   workers, so N revocations reach the server at once, as raw's N
//!   connections do);
//! - raw issuance and revocation once more, so drift of a shared machine
//!   shows.
//!
//! Each side starts from a server holding none of the other's users.
//! After each issuance `ACL USERS` must hold every user the side made,
//! after each revocation none of them.
//!
//! The lessor ops that keep what they issued ([`LessorIssue`]), revoke
//! from a queue ([`LessorRevoke`]) and the printing of both sides are
//! shared with phase `ldap`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lessor::client::Client;
use rand::distr::{Alphanumeric, SampleString};
use tokio_util::sync::CancellationToken;

use crate::load::{drive, lessor_ops, Op, Stats};
use crate::nodes::start_daemon;
use crate::report::{ms, print_stats, ratio};
use crate::{scrape, Result};

#[path = "../../tests/common/redis_server.rs"]
mod redis_server;

/// Where the phase charges the server's CPU.
const SERVER: &str = "redis-server";
const ROLE: &str = "cache_ro";
/// How long a revocation run may take before the phase gives up on it
/// (what is left is then reported by the check that follows).
pub const REVOKE_DEADLINE: Duration = Duration::from_secs(600);

/// What the phase (and phase `ldap`) needs from the command line.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub n: usize,
    pub duration: Duration,
    pub warmup: Duration,
}

// ---------------------------------------------------------------------------
// Shared with phase `ldap`

/// What one task made: names or lease ids, in a list of its own so the
/// tasks never wait on each other to record.
pub type Kept = Arc<Mutex<Vec<String>>>;

/// Everything `kept` holds, in one list.
pub fn gather(kept: &[Kept]) -> Vec<String> {
    kept.iter().flat_map(|k| std::mem::take(&mut *k.lock().unwrap())).collect()
}

/// The names, lease ids or DNs a revocation run works through: each task
/// takes the next one.
pub type Queue = Arc<Mutex<Vec<String>>>;

/// A lease lessor issued: its id, and the backend user it stands for.
#[derive(Debug, Clone)]
pub struct Issued {
    pub lease_id: String,
    /// `credential.username`, or `credential.distinguished_name` for LDAP.
    pub user: String,
}

/// `POST /v1/creds/{role}` on a fresh socket connection, as
/// `load::LessorCreate`, keeping each lease's id and user.
pub struct LessorIssue {
    client: Client,
    role: String,
    /// Which field of `credential` names the backend user.
    user_field: &'static str,
    issued: Arc<Mutex<Vec<Issued>>>,
}

impl Op for LessorIssue {
    async fn run(&mut self) -> std::result::Result<(), String> {
        let response = self.client.creds(&self.role, None).await.map_err(|e| format!("client: {e}"))?;
        if response.status != 200 {
            let code = response.api_error().map(|e| e.code).unwrap_or_default();
            return Err(format!("HTTP {} {code}", response.status));
        }
        let field = |v: &serde_json::Value| v.as_str().map(str::to_string);
        let (Some(lease_id), Some(user)) =
            (field(&response.body["lease_id"]), field(&response.body["credential"][self.user_field]))
        else {
            return Err("an answer without lease_id or credential".into());
        };
        self.issued.lock().unwrap().push(Issued { lease_id, user });
        Ok(())
    }
}

/// Where one issuing op keeps the leases it made.
pub type Leases = Arc<Mutex<Vec<Issued>>>;

/// N issuing ops on `client`, and where each keeps its leases.
pub fn lessor_issue_ops(
    client: &Client,
    n: usize,
    role: &str,
    user_field: &'static str,
) -> (Vec<LessorIssue>, Vec<Leases>) {
    let kept: Vec<_> = (0..n).map(|_| Arc::new(Mutex::new(Vec::new()))).collect();
    let ops = kept
        .iter()
        .map(|issued| LessorIssue {
            client: client.clone(),
            role: role.to_string(),
            user_field,
            issued: issued.clone(),
        })
        .collect();
    (ops, kept)
}

/// `DELETE /v1/leases/{id}` of the next lease in the queue; anything but
/// 200 with outcome `revoked` is an error.
pub struct LessorRevoke {
    client: Client,
    queue: Queue,
}

impl Op for LessorRevoke {
    async fn run(&mut self) -> std::result::Result<(), String> {
        let Some(id) = self.queue.lock().unwrap().pop() else { return Err("queue empty".into()) };
        let response = self.client.revoke(&id).await.map_err(|e| format!("client: {e}"))?;
        let outcome = response.body["outcome"].as_str().unwrap_or_default();
        if response.status == 200 && outcome == "revoked" {
            Ok(())
        } else {
            let code = response.api_error().map(|e| e.code).unwrap_or_default();
            Err(format!("HTTP {} {code}{outcome}", response.status))
        }
    }
}

/// Revokes every lease of `issued` through lessor, N tasks taking them
/// from one queue; the daemon's metrics around it.
pub async fn lessor_revoke(
    client: &Client,
    n: usize,
    issued: &[Issued],
    backends: &[i32],
) -> Result<(Stats, scrape::Metrics, scrape::Metrics)> {
    let queue: Queue = Arc::new(Mutex::new(issued.iter().map(|i| i.lease_id.clone()).collect()));
    let ops = (0..n).map(|_| LessorRevoke { client: client.clone(), queue: queue.clone() }).collect();
    let before = scrape::metrics(client).await?;
    let stats = drive(ops, REVOKE_DEADLINE, backends, Some(issued.len())).await;
    let after = scrape::metrics(client).await?;
    Ok((stats, before, after))
}

/// What one lessor round issues and how it reports: `label` heads its
/// lines, `role` is what it issues, `user_field` the credential field the
/// backend knows a user by, and `pids` the processes charged as `server`
/// in its CPU figures (the backend's, or a plugin's).
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    pub label: &'a str,
    pub role: &'a str,
    pub user_field: &'static str,
    pub pids: &'a [i32],
    pub server: &'a str,
}

/// lessor's side on a running daemon: a warm-up (revoked), issuance for
/// the phase's duration, then revocation of all it issued, with the
/// backend checked after each (`present`: how many of the names it holds).
pub async fn lessor_round<F, Fut>(
    client: &Client,
    p: Params,
    side: Side<'_>,
    present: F,
) -> Result<(Stats, Stats)>
where
    F: Fn(Vec<String>) -> Fut,
    Fut: std::future::Future<Output = Result<usize>>,
{
    let Side { label, role, user_field, pids, server } = side;
    if !p.warmup.is_zero() {
        drive(lessor_ops(std::slice::from_ref(client), p.n, role), p.warmup, pids, None).await;
        revoke_warmup(client, role).await?;
    }
    let (ops, kept) = lessor_issue_ops(client, p.n, role, user_field);
    let before = scrape::metrics(client).await?;
    let lessor = drive(ops, p.duration, pids, None).await;
    let after = scrape::metrics(client).await?;
    let issued: Vec<Issued> = kept.iter().flat_map(|k| std::mem::take(&mut *k.lock().unwrap())).collect();
    let users: Vec<String> = issued.iter().map(|i| i.user.clone()).collect();
    print_stats(label, &lessor, server);
    print_internals("issuance", lessor.ok(), &before, &after);
    print_state(label, "issuance", present(users.clone()).await?, users.len(), true)?;
    let (revoked, before, after) = lessor_revoke(client, p.n, &issued, pids).await?;
    print_stats(&format!("{label} revoke"), &revoked, server);
    print_internals("revocation", revoked.ok(), &before, &after);
    print_state(label, "revocation", present(users.clone()).await?, users.len(), false)?;
    Ok((lessor, revoked))
}

/// Revokes the warm-up's leases of `role` (`POST /v1/leases/revoke`; the
/// bench runs as the daemon's user, an admin), so the measured side starts
/// on a backend without them.
pub async fn revoke_warmup(client: &Client, role: &str) -> Result<()> {
    let response = client.revoke_prefix(&format!("{role}/"), false).await?;
    match response.status {
        200 => Ok(()),
        status => Err(format!("revoking the warm-up's leases: HTTP {status}").into()),
    }
}

/// What lessor did inside for `what` (issuance or revocation), from two
/// scrapes of its metrics: store commits per operation and their time.
pub fn print_internals(what: &str, ops: usize, before: &scrape::Metrics, after: &scrape::Metrics) {
    let delta = |name: &str| after.since(before, name);
    let commits = delta("lessor_store_commits_total");
    let commit_count = delta("lessor_store_commit_duration_seconds_count");
    println!(
        "  {:<16}   lessor internals: {commits:.0} store commits for {ops} {what}s ({:.2} per {what}), \
         mean commit {:.2} ms; {:.0} transient retries, {:.0} revoke failures",
        "",
        commits / ops.max(1) as f64,
        delta("lessor_store_commit_duration_seconds_sum") * 1000.0 / commit_count.max(1.0),
        delta("lessor_transient_retries_total"),
        delta("lessor_revoke_failures_total"),
    );
}

/// lessor's figures for `what` against each raw baseline.
pub fn print_ratios(what: &str, lessor: &Stats, bases: &[(&str, &Stats)]) {
    for (label, base) in bases {
        println!(
            "  ratios {what:<10} {label:<15} lessor/raw throughput {:.3}   lessor/raw p99 {:.1}",
            ratio(lessor.throughput(), base.throughput()),
            ratio(ms(lessor.percentile(99.0)), ms(base.percentile(99.0)))
        );
    }
}

/// The server process listening on `port` of 127.0.0.1, named `comm`,
/// for its CPU time (found by its command line, which names the address).
pub fn server_pid(comm: &str, port: u16) -> Option<i32> {
    let address = format!("127.0.0.1:{port}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
        let name = std::fs::read_to_string(entry.path().join("comm")).ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        // The address, and not the start of a longer port.
        let listens = cmdline
            .match_indices(&address)
            .any(|(at, _)| !cmdline[at + address.len()..].starts_with(|c: char| c.is_ascii_digit()));
        (name.trim() == comm && listens).then_some(pid)
    })
}

/// The backend's verdict on a side: `present` of `total` users found.
pub fn print_state(label: &str, after: &str, present: usize, total: usize, want_all: bool) -> Result<()> {
    let ok = if want_all { present == total } else { present == 0 };
    println!(
        "  {label:<16}   backend after {after}: {present} of its {total} users there ({})",
        if ok { "as it should" } else { "WRONG" }
    );
    if ok {
        Ok(())
    } else {
        Err(format!("{label}: {present} of {total} users there after {after}").into())
    }
}

/// A fresh user name under `prefix` and a password for it, as a raw op
/// makes one per credential.
pub fn fresh(prefix: &str) -> (String, String) {
    let name = format!("{prefix}{}", Alphanumeric.sample_string(&mut rand::rng(), 16).to_lowercase());
    (name, Alphanumeric.sample_string(&mut rand::rng(), 32))
}

// ---------------------------------------------------------------------------
// Redis

/// One raw connection making users, keeping their names.
struct RawSetUser {
    conn: redis::aio::MultiplexedConnection,
    prefix: String,
    made: Kept,
}

impl Op for RawSetUser {
    async fn run(&mut self) -> std::result::Result<(), String> {
        let (name, password) = fresh(&self.prefix);
        let made: redis::RedisResult<String> = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&name)
            .arg("reset")
            .arg("resetchannels")
            .arg("-@all")
            .arg("~cache:*")
            .arg("+@read")
            .arg(format!(">{password}"))
            .arg("on")
            .query_async(&mut self.conn)
            .await;
        made.map_err(|e| format!("{:?}", e.kind()))?;
        self.made.lock().unwrap().push(name);
        Ok(())
    }
}

/// One raw connection revoking users from the queue: the plugin's
/// `CLIENT KILL USER` then `ACL DELUSER`.
struct RawDelUser {
    conn: redis::aio::MultiplexedConnection,
    queue: Queue,
}

impl Op for RawDelUser {
    async fn run(&mut self) -> std::result::Result<(), String> {
        let Some(name) = self.queue.lock().unwrap().pop() else { return Err("queue empty".into()) };
        let kind = |e: redis::RedisError| format!("{:?}", e.kind());
        let _killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("USER")
            .arg(&name)
            .query_async(&mut self.conn)
            .await
            .map_err(kind)?;
        let deleted: i64 =
            redis::cmd("ACL").arg("DELUSER").arg(&name).query_async(&mut self.conn).await.map_err(kind)?;
        match deleted {
            1 => Ok(()),
            _ => Err("ACL DELUSER deleted nothing".into()),
        }
    }
}

/// lessor's admin as a client, which may run only what the plugin needs
/// (no PING, which the tests' login sends).
fn admin_client(server: &redis_server::Server) -> redis::RedisResult<redis::Client> {
    let info = redis::IntoConnectionInfo::into_connection_info(format!("redis://127.0.0.1:{}", server.port))?;
    let settings =
        info.redis_settings().clone().set_username("lessor_admin").set_password(&server.admin_password);
    redis::Client::open(info.set_redis_settings(settings))
}

/// A connection as lessor's admin.
async fn admin(server: &redis_server::Server) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    admin_client(server)?.get_multiplexed_async_connection().await
}

/// How many of `names` `ACL USERS` lists. The answer lists hundreds of
/// thousands of users after a raw run and takes longer than the client's
/// default 500 ms response timeout, so this connection has none.
async fn present(server: &redis_server::Server, names: &[String]) -> Result<usize> {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let mut conn = admin_client(server)?.get_multiplexed_async_connection_with_config(&config).await?;
    let users: Vec<String> = redis::cmd("ACL").arg("USERS").query_async(&mut conn).await?;
    let users: HashSet<String> = users.into_iter().collect();
    Ok(names.iter().filter(|n| users.contains(*n)).count())
}

/// Raw issuance for `duration` on N connections (users named
/// `raw<tag>_…`); the figures and every name made.
async fn raw_issue(
    server: &redis_server::Server,
    p: Params,
    tag: &str,
    duration: Duration,
    pid: &[i32],
) -> Result<(Stats, Vec<String>)> {
    let mut ops = Vec::new();
    let mut kept = Vec::new();
    for _ in 0..p.n {
        let made: Kept = Arc::default();
        ops.push(RawSetUser { conn: admin(server).await?, prefix: format!("raw{tag}_"), made: made.clone() });
        kept.push(made);
    }
    let stats = drive(ops, duration, pid, None).await;
    Ok((stats, gather(&kept)))
}

/// Raw revocation of every one of `names` on N connections.
async fn raw_revoke(server: &redis_server::Server, n: usize, names: &[String], pid: &[i32]) -> Result<Stats> {
    let queue: Queue = Arc::new(Mutex::new(names.to_vec()));
    let mut ops = Vec::new();
    for _ in 0..n {
        ops.push(RawDelUser { conn: admin(server).await?, queue: queue.clone() });
    }
    Ok(drive(ops, REVOKE_DEADLINE, pid, Some(names.len())).await)
}

/// Raw issuance then raw revocation of what it made, each checked.
async fn raw_round(
    server: &redis_server::Server,
    p: Params,
    tag: &str,
    label: &str,
    pid: &[i32],
) -> Result<(Stats, Stats)> {
    let (issue, names) = raw_issue(server, p, tag, p.duration, pid).await?;
    print_stats(label, &issue, SERVER);
    print_state(label, "issuance", present(server, &names).await?, names.len(), true)?;
    let revoke = raw_revoke(server, p.n, &names, pid).await?;
    print_stats(&format!("{label} revoke"), &revoke, SERVER);
    print_state(label, "revocation", present(server, &names).await?, names.len(), false)?;
    Ok((issue, revoke))
}

pub async fn phase(p: Params) -> Result<()> {
    let server = redis_server::Server::start().await;
    let pid: Vec<i32> = server_pid("redis-server", server.port).into_iter().collect();
    println!(
        "\nphase `redis`: ACL users on redis-server at 127.0.0.1:{} (its own, no persistence); \
         N={} for issuance and revocation{}",
        server.port,
        p.n,
        if pid.is_empty() { "; server process not found, its CPU is not measured" } else { "" }
    );
    if !p.warmup.is_zero() {
        let (_, names) = raw_issue(&server, p, "w", p.warmup, &pid).await?;
        raw_revoke(&server, p.n, &names, &pid).await?;
    }
    let (raw, raw_revoked) = raw_round(&server, p, "a", "raw", &pid).await?;

    let dir = tempfile::tempdir()?;
    let password_file = dir.path().join("redis-admin.pw");
    std::fs::write(&password_file, &server.admin_password)?;
    std::fs::set_permissions(&password_file, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    // N revocation workers, so lessor revokes N at a time as raw does, and
    // 2N connections, so issuance keeps N (the defaults, 12 and 4, give
    // issuance 8 and revocation 4).
    let config = format!(
        "[server]\nsocket = {:?}\nsocket_mode = \"0600\"\nstore = \"sqlite://{}\"\n\n\
         [connections.cache]\nplugin = \"redis\"\nurl = \"redis://lessor_admin@127.0.0.1:{}\"\npassword_file = {:?}\n\
         max_connections = {}\nrevocation_workers = {}\n\n\
         [roles.{ROLE}]\nconnection = \"cache\"\ndefault_ttl = \"1h\"\nmax_ttl = \"24h\"\nacl_rules = [\"~cache:*\", \"+@read\"]\n",
        dir.path().join("lessor.sock").display().to_string(),
        dir.path().join("lessor.db").display(),
        server.port,
        password_file.display().to_string(),
        2 * p.n,
        p.n,
    );
    let shutdown = CancellationToken::new();
    let running = start_daemon(&config, "(bench redis config)", shutdown.clone()).await?;
    let client = Client::new(running.socket.clone());
    let side = Side { label: "lessor", role: ROLE, user_field: "username", pids: &pid, server: SERVER };
    let outcome = lessor_round(&client, p, side, |users| {
        let server = &server;
        async move { present(server, &users).await }
    })
    .await;
    shutdown.cancel();
    running.stopped().await;
    let (lessor, lessor_revoked) = outcome?;

    let (raw_after, raw_after_revoked) = raw_round(&server, p, "b", "raw (again)", &pid).await?;
    // No target: the raw commands are a few microseconds in the server's
    // memory, so the ratios show lessor's own cost per operation (durable
    // store writes, the socket, the caller's identity) rather than a
    // backend's.
    print_ratios("issuance", &lessor, &[("vs raw", &raw), ("vs raw (again)", &raw_after)]);
    print_ratios(
        "revocation",
        &lessor_revoked,
        &[("vs raw", &raw_revoked), ("vs raw (again)", &raw_after_revoked)],
    );
    Ok(())
}
