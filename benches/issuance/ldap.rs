//! Phase `ldap`: issuance and revocation of directory entries, the raw
//! LDAP operations against lessor, in the same run.
//!
//! The phase starts a `slapd` of its own (`tests/common/slapd.rs`:
//! `LESSOR_TEST_SLAPD` or `/usr/sbin/slapd`, its own cn=config and mdb
//! database for `dc=lessor,dc=test` in a temporary folder, free loopback
//! ports, stopped at the end). lessor's admin is the harness's
//! least-privileged `cn=lessor,dc=lessor,dc=test`, which may write under
//! `ou=people` only; its password is set to the one the bench put in
//! [`PASSWORD_ENV`] before its runtime started, since lessor reads it
//! through `password_env`.
//!
//! Both sides do the same work per credential: one add of
//!
//! ```text
//! dn: cn=<name>,ou=people,dc=lessor,dc=test
//! objectClass: inetOrgPerson
//! cn: <name>
//! sn: <name>
//! userPassword: {SSHA512}<salted hash of a fresh password>
//! ```
//!
//! as `cn=lessor` (the hash made the plugin's way, with
//! `lessor_ldap::PasswordHash`), and one delete of that DN to revoke. The
//! role has no `groups`: a group would add a modify of one shared
//! groupOfNames per issuance and per revocation on lessor's side, which
//! raw would then have to do too. In order, each with N concurrent tasks:
//! raw issuance for S seconds (N connections bound as `cn=lessor`), raw
//! revocation of every entry it made (N connections, one queue), lessor
//! issuance for S seconds (`POST /v1/creds/ldap_ro`, an in-process daemon
//! with N revocation workers and 2N connections), lessor revocation of
//! every lease it issued (`DELETE /v1/leases/{id}`, N tasks, one queue),
//! then raw issuance and revocation once more, so drift shows. Each side
//! starts from an `ou=people` holding none of the other's entries; after
//! each issuance every entry the side made must be there (searched as the
//! root DN), after each revocation none.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ldap3::{Ldap, Mod, Scope, SearchEntry};
use lessor::client::Client;
use tokio_util::sync::CancellationToken;

use crate::load::{drive, Op, Stats};
use crate::nodes::start_daemon;
use crate::redis_phase::{
    fresh, gather, lessor_round, print_ratios, print_state, server_pid, Kept, Params, Queue, Side,
    REVOKE_DEADLINE,
};
use crate::report::print_stats;
use crate::Result;

#[path = "../../tests/common/slapd.rs"]
mod slapd;

use slapd::{Slapd, ADMIN_DN, PEOPLE};

/// Where the phase charges the server's CPU.
const SERVER: &str = "slapd";
const ROLE: &str = "ldap_ro";

/// The variable holding the password `cn=lessor` gets: set by `main`
/// before the runtime starts, as setting it later would race the
/// runtime's threads.
pub const PASSWORD_ENV: &str = "LESSOR_BENCH_LDAP_PW";

/// One raw connection adding entries, keeping their DNs.
struct RawAdd {
    ldap: Ldap,
    prefix: String,
    made: Kept,
}

impl Op for RawAdd {
    async fn run(&mut self) -> std::result::Result<(), String> {
        let (name, password) = fresh(&self.prefix);
        let hashed = lessor_ldap::PasswordHash::Ssha512.hash(&password);
        let dn = format!("cn={name},{PEOPLE}");
        let one = |v: &str| HashSet::from([v.to_string()]);
        let attrs = vec![
            ("objectClass".to_string(), one("inetOrgPerson")),
            ("cn".to_string(), one(&name)),
            ("sn".to_string(), one(&name)),
            ("userPassword".to_string(), one(hashed.as_str())),
        ];
        let result = self.ldap.add(&dn, attrs).await.map_err(|e| e.to_string())?;
        if result.rc != 0 {
            return Err(format!("add: rc {}", result.rc));
        }
        self.made.lock().unwrap().push(dn);
        Ok(())
    }
}

/// One raw connection deleting entries from the queue.
struct RawDelete {
    ldap: Ldap,
    queue: Queue,
}

impl Op for RawDelete {
    async fn run(&mut self) -> std::result::Result<(), String> {
        let Some(dn) = self.queue.lock().unwrap().pop() else { return Err("queue empty".into()) };
        let result = self.ldap.delete(&dn).await.map_err(|e| e.to_string())?;
        match result.rc {
            0 => Ok(()),
            rc => Err(format!("delete: rc {rc}")),
        }
    }
}

/// A connection bound as lessor's admin.
async fn admin(server: &Slapd, password: &str) -> Result<Ldap> {
    let mut ldap = slapd::connect(&server.url()).await?;
    let bound = ldap.simple_bind(ADMIN_DN, password).await?;
    if bound.rc != 0 {
        return Err(format!("bind as {ADMIN_DN}: {bound}").into());
    }
    Ok(ldap)
}

/// How many of `dns` are entries right under `ou=people` (as the root DN,
/// which no size limit stops).
async fn present(server: &Slapd, dns: &[String]) -> Result<usize> {
    let ldap3::SearchResult(found, result) =
        server.root().await.search(PEOPLE, Scope::OneLevel, "(objectClass=*)", vec!["1.1"]).await?;
    if result.rc != 0 {
        return Err(format!("search {PEOPLE}: {result}").into());
    }
    let there: HashSet<String> =
        found.into_iter().map(|e| SearchEntry::construct(e).dn.to_ascii_lowercase()).collect();
    Ok(dns.iter().filter(|dn| there.contains(&dn.to_ascii_lowercase())).count())
}

async fn raw_issue(
    server: &Slapd,
    p: Params,
    password: &str,
    tag: &str,
    duration: Duration,
    pid: &[i32],
) -> Result<(Stats, Vec<String>)> {
    let mut ops = Vec::new();
    let mut kept = Vec::new();
    for _ in 0..p.n {
        let made: Kept = Arc::default();
        ops.push(RawAdd {
            ldap: admin(server, password).await?,
            prefix: format!("raw{tag}_"),
            made: made.clone(),
        });
        kept.push(made);
    }
    let stats = drive(ops, duration, pid, None).await;
    Ok((stats, gather(&kept)))
}

async fn raw_revoke(server: &Slapd, p: Params, password: &str, dns: &[String], pid: &[i32]) -> Result<Stats> {
    let queue: Queue = Arc::new(Mutex::new(dns.to_vec()));
    let mut ops = Vec::new();
    for _ in 0..p.n {
        ops.push(RawDelete { ldap: admin(server, password).await?, queue: queue.clone() });
    }
    Ok(drive(ops, REVOKE_DEADLINE, pid, Some(dns.len())).await)
}

/// Raw issuance then raw revocation of what it made, each checked.
async fn raw_round(
    server: &Slapd,
    p: Params,
    password: &str,
    tag: &str,
    label: &str,
    pid: &[i32],
) -> Result<(Stats, Stats)> {
    let (issue, dns) = raw_issue(server, p, password, tag, p.duration, pid).await?;
    print_stats(label, &issue, SERVER);
    print_state(label, "issuance", present(server, &dns).await?, dns.len(), true)?;
    let revoke = raw_revoke(server, p, password, &dns, pid).await?;
    print_stats(&format!("{label} revoke"), &revoke, SERVER);
    print_state(label, "revocation", present(server, &dns).await?, dns.len(), false)?;
    Ok((issue, revoke))
}

fn lessor_config(server: &Slapd, dir: &std::path::Path, p: Params) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("a string serializes");
    format!(
        r#"[server]
socket = {socket}
socket_mode = "0600"
store = {store}

[connections.directory]
plugin = "ldap"
url = {url}
password_env = {env}
bind_dn = {ADMIN_DN:?}
userdn = {PEOPLE:?}
max_connections = {max_connections}
revocation_workers = {n}

[roles.{ROLE}]
connection = "directory"
default_ttl = "1h"
max_ttl = "24h"
creation_ldif = """
dn: cn={{{{.Username}}}},{PEOPLE}
objectClass: inetOrgPerson
cn: {{{{.Username}}}}
sn: {{{{.Username}}}}
userPassword: {{{{.Password}}}}
"""
deletion_ldif = """
dn: cn={{{{.Username}}}},{PEOPLE}
changetype: delete
"""
"#,
        socket = q(&dir.join("lessor.sock").display().to_string()),
        store = q(&format!("sqlite://{}", dir.join("lessor.db").display())),
        url = q(&server.url()),
        env = q(PASSWORD_ENV),
        max_connections = 2 * p.n,
        n = p.n,
    )
}

pub async fn phase(p: Params) -> Result<()> {
    let password = std::env::var(PASSWORD_ENV)?;
    let server = Slapd::start().await;
    // cn=lessor gets the password lessor reads from the environment.
    let mods = vec![Mod::Replace("userPassword".to_string(), HashSet::from([password.clone()]))];
    let set = server.root().await.modify(ADMIN_DN, mods).await?;
    if set.rc != 0 {
        return Err(format!("set the password of {ADMIN_DN}: {set}").into());
    }
    let pid: Vec<i32> = server_pid("slapd", server.port).into_iter().collect();
    println!(
        "\nphase `ldap`: inetOrgPerson entries under {PEOPLE} on slapd at {} (its own, mdb); N={} for issuance \
         and revocation; role without groups{}",
        server.url(),
        p.n,
        if pid.is_empty() { "; server process not found, its CPU is not measured" } else { "" }
    );
    if !p.warmup.is_zero() {
        let (_, dns) = raw_issue(&server, p, &password, "w", p.warmup, &pid).await?;
        raw_revoke(&server, p, &password, &dns, &pid).await?;
    }
    let (raw, raw_revoked) = raw_round(&server, p, &password, "a", "raw", &pid).await?;

    let dir = tempfile::tempdir()?;
    let shutdown = CancellationToken::new();
    let running =
        start_daemon(&lessor_config(&server, dir.path(), p), "(bench ldap config)", shutdown.clone()).await?;
    let client = Client::new(running.socket.clone());
    let side =
        Side { label: "lessor", role: ROLE, user_field: "distinguished_name", pids: &pid, server: SERVER };
    let outcome = lessor_round(&client, p, side, |dns| {
        let server = &server;
        async move { present(server, &dns).await }
    })
    .await;
    shutdown.cancel();
    running.stopped().await;
    let (lessor, lessor_revoked) = outcome?;

    let (raw_after, raw_after_revoked) = raw_round(&server, p, &password, "b", "raw (again)", &pid).await?;
    print_ratios("issuance", &lessor, &[("vs raw", &raw), ("vs raw (again)", &raw_after)]);
    print_ratios(
        "revocation",
        &lessor_revoked,
        &[("vs raw", &raw_revoked), ("vs raw (again)", &raw_after_revoked)],
    );
    Ok(())
}
