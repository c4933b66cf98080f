//! Phase `redis`: issuance of Redis ACL users, the raw command against
//! lessor, in the same run.
//!
//! The phase starts a `redis-server` of its own (`LESSOR_TEST_REDIS_SERVER`
//! or `redis-server` on `PATH`; a free loopback port, no persistence,
//! stopped at the end) with lessor's admin holding only the commands the
//! plugin needs. Raw: N connections as that admin, each running the
//! plugin's command, `ACL SETUSER <fresh name> reset resetchannels -@all
//! ~cache:* +@read ><fresh password> on`, as fast as it can. lessor: N
//! tasks calling `POST /v1/creds/cache_ro` against a daemon started in
//! this process on the same server, then raw once more, so drift of a
//! shared machine shows.

use std::time::Duration;

use lessor::client::Client;
use rand::distr::{Alphanumeric, SampleString};
use tokio_util::sync::CancellationToken;

use crate::load::{drive, lessor_ops, Op};
use crate::nodes::start_daemon;
use crate::report::{ms, print_stats, ratio};
use crate::Result;

#[path = "../../tests/common/redis_server.rs"]
mod redis_server;

/// Where the phase charges the server's CPU (not measured: one process).
const SERVER: &str = "redis-server";
const ROLE: &str = "cache_ro";

/// What the phase needs from the command line.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub n: usize,
    pub duration: Duration,
    pub warmup: Duration,
}

/// One raw connection making users.
struct RawSetUser {
    conn: redis::aio::MultiplexedConnection,
    prefix: String,
}

impl Op for RawSetUser {
    async fn run(&mut self) -> std::result::Result<(), String> {
        let name =
            format!("{}{}", self.prefix, Alphanumeric.sample_string(&mut rand::rng(), 16).to_lowercase());
        let password = Alphanumeric.sample_string(&mut rand::rng(), 32);
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
        made.map(drop).map_err(|e| format!("{:?}", e.kind()))
    }
}

/// A connection as lessor's admin, which may run only what the plugin
/// needs (no PING, which the tests' login sends).
async fn admin(server: &redis_server::Server) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let info = redis::IntoConnectionInfo::into_connection_info(format!("redis://127.0.0.1:{}", server.port))?;
    let settings =
        info.redis_settings().clone().set_username("lessor_admin").set_password(&server.admin_password);
    redis::Client::open(info.set_redis_settings(settings))?.get_multiplexed_async_connection().await
}

pub async fn phase(p: Params) -> Result<()> {
    let server = redis_server::Server::start().await;
    println!(
        "\nphase `redis`: ACL users on redis-server at 127.0.0.1:{} (its own, no persistence)",
        server.port
    );
    let raw_ops = |tag: &'static str| {
        let server = &server;
        async move {
            let mut ops = Vec::new();
            for _ in 0..p.n {
                let conn = admin(server).await?;
                ops.push(RawSetUser { conn, prefix: format!("raw{tag}_") });
            }
            Ok::<_, redis::RedisError>(ops)
        }
    };
    if !p.warmup.is_zero() {
        drive(raw_ops("w").await?, p.warmup, &[], None).await;
    }
    let raw = drive(raw_ops("a").await?, p.duration, &[], None).await;
    print_stats("raw", &raw, SERVER);

    let dir = tempfile::tempdir()?;
    let password_file = dir.path().join("redis-admin.pw");
    std::fs::write(&password_file, &server.admin_password)?;
    std::fs::set_permissions(&password_file, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let config = format!(
        "[server]\nsocket = {:?}\nsocket_mode = \"0600\"\nstore = \"sqlite://{}\"\n\n\
         [connections.cache]\nplugin = \"redis\"\nurl = \"redis://lessor_admin@127.0.0.1:{}\"\npassword_file = {:?}\n\n\
         [roles.{ROLE}]\nconnection = \"cache\"\ndefault_ttl = \"1h\"\nmax_ttl = \"24h\"\nacl_rules = [\"~cache:*\", \"+@read\"]\n",
        dir.path().join("lessor.sock").display().to_string(),
        dir.path().join("lessor.db").display(),
        server.port,
        password_file.display().to_string(),
    );
    let shutdown = CancellationToken::new();
    let running = start_daemon(&config, "(bench redis config)", shutdown.clone()).await?;
    let clients = vec![Client::new(running.socket.clone())];
    if !p.warmup.is_zero() {
        drive(lessor_ops(&clients, p.n, ROLE), p.warmup, &[], None).await;
    }
    let lessor = drive(lessor_ops(&clients, p.n, ROLE), p.duration, &[], None).await;
    print_stats("lessor", &lessor, SERVER);
    shutdown.cancel();
    running.stopped().await;

    let raw_after = drive(raw_ops("b").await?, p.duration, &[], None).await;
    print_stats("raw (again)", &raw_after, SERVER);
    // No target: the raw command is a few microseconds in the server's
    // memory, so the ratio shows lessor's own cost per issuance (two
    // durable store writes, the socket, the caller's identity) rather than
    // a backend's.
    for (label, base) in [("vs raw", &raw), ("vs raw (again)", &raw_after)] {
        println!(
            "  ratios {label:<15} lessor/raw throughput {:.3}   lessor/raw p99 {:.1}",
            ratio(lessor.throughput(), base.throughput()),
            ratio(ms(lessor.percentile(99.0)), ms(base.percentile(99.0)))
        );
    }
    Ok(())
}
