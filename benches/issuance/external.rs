//! Phase `external`: PostgreSQL issuance and revocation through the
//! built-in plugin in process against the same plugin out of process, in
//! the same run.
//!
//! The phase starts a daemon of its own on the run's config
//! ([`nodes::lessor_config`]) plus `[plugins.pg_ext]`: this build's
//! `lessor` binary running `lessor plugin serve postgres`, pinned by its
//! sha256. Two connections have the same URL, admin and pool settings:
//! `bench` (`plugin = "postgres"`, in process) and `bench_ext` (`plugin =
//! "pg_ext"`, every call one gRPC request over the plugin's Unix socket).
//! Each has a role with `grp`'s statements, `inproc` and `remote` (names
//! of one length, so the usernames are too); their lines are labelled
//! `built-in` and `external`.
//!
//! The two sides take eight turns, built-in, external, external,
//! built-in, twice over, each turn `redis_phase::lessor_round` for S/4
//! seconds (a warm-up of its own, issuance by N tasks, then revocation of
//! every lease it issued by N tasks calling `DELETE /v1/leases/{id}`,
//! `pg_authid` checked after each), so drift and bursts of other load on
//! a shared machine fall on both sides alike. The ratio of each pair of
//! turns is printed, to show that spread; then the turns of a side are
//! added up and compared: the target is an external issuance rate at
//! least 0.9 × the built-in one. The CPU lines
//! charge the plugin's process (its pid from `GET /v1/plugins`) on both
//! sides: next to nothing while the built-in side runs, the plugin's whole
//! share of every credential (SCRAM verifier, SQL, gRPC) on the other.

use lessor::client::Client;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::load::Stats;
use crate::nodes::{self, connection_table, role_table, start_daemon, toml_str, HOUR};
use crate::redis_phase::{lessor_round, Params, Side};
use crate::report::{print_stats, print_versus, ratio};
use crate::setup::{roles_present, vacuum_catalogs};
use crate::{Result, Run};

/// The external plugin's name in the config.
const PLUGIN: &str = "pg_ext";
/// Where the CPU lines charge the plugin's process.
const PLUGIN_PROCESS: &str = "the plugin process";
/// The target: out-of-process issuance at least this share of
/// in-process issuance.
const TARGET: f64 = 0.9;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Way {
    InProcess,
    OutOfProcess,
}

/// The turns, in order: pairs of one turn of each side, each side first
/// in every other pair, so that drift and bursts of other load on a
/// shared machine fall on both sides alike.
const TURNS: [Way; 8] = {
    use Way::{InProcess as In, OutOfProcess as Out};
    [In, Out, Out, In, In, Out, Out, In]
};

impl Way {
    fn label(self) -> &'static str {
        match self {
            Way::InProcess => "built-in",
            Way::OutOfProcess => "external",
        }
    }

    fn role(self) -> &'static str {
        match self {
            Way::InProcess => "inproc",
            Way::OutOfProcess => "remote",
        }
    }
}

/// The run's config plus the external plugin, its connection and the
/// phase's two roles.
fn lessor_config(run: &Run<'_>, dir: &std::path::Path) -> Result<String> {
    let setup = run.setup;
    let command = env!("CARGO_BIN_EXE_lessor");
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::fs::File::open(command)?, &mut hasher)?;
    let mut text = nodes::lessor_config(setup, dir, run.args, "bench-external");
    text.push_str(&format!(
        "\n[plugins.{PLUGIN}]\ncommand = {}\nargs = [\"plugin\", \"serve\", \"postgres\"]\nsha256 = \"{}\"\n",
        toml_str(command),
        hex::encode(hasher.finalize())
    ));
    connection_table(&mut text, setup, run.args, "bench_ext", PLUGIN);
    let statements = setup.grp_statements();
    role_table(&mut text, setup, Way::InProcess.role(), "bench", &statements, HOUR);
    role_table(&mut text, setup, Way::OutOfProcess.role(), "bench_ext", &statements, HOUR);
    Ok(text)
}

/// The plugin's entry in `GET /v1/plugins`.
async fn plugin_status(client: &Client) -> Result<serde_json::Value> {
    let response = client.plugins().await?;
    let plugins = response.body["plugins"].as_array().cloned().unwrap_or_default();
    plugins
        .into_iter()
        .find(|p| p["name"] == PLUGIN)
        .ok_or_else(|| format!("GET /v1/plugins lists no {PLUGIN} (HTTP {})", response.status).into())
}

pub async fn phase(run: &Run<'_>) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = lessor_config(run, dir.path())?;
    let shutdown = CancellationToken::new();
    let running = start_daemon(&config, "(bench external config)", shutdown.clone()).await?;
    let client = Client::new(running.socket.clone());
    let outcome = measure(&client, run).await;
    shutdown.cancel();
    running.stopped().await;
    outcome
}

async fn measure(client: &Client, run: &Run<'_>) -> Result<()> {
    let Run { args, setup, su, duration, warmup, .. } = *run;
    // Each side gets S seconds of issuance in all.
    let turn = duration * 2 / TURNS.len() as u32;
    let status = plugin_status(client).await?;
    let pid = status["pid"].as_i64().ok_or("the plugin has no pid: it is not running")? as i32;
    println!(
        "\nphase `external`: role `grp`'s statements in process (connection bench, plugin postgres) and out of \
         process (connection bench_ext, plugin {PLUGIN}: {} plugin serve postgres, pid {pid}, {} {}); N={}, \
         {} turns of {:.1} s each ({} first)",
        status["command"].as_str().unwrap_or("?"),
        status["describes_as"].as_str().unwrap_or("?"),
        status["version"].as_str().unwrap_or("?"),
        args.n,
        TURNS.len(),
        turn.as_secs_f64(),
        TURNS[0].label(),
    );
    let p = Params { n: args.n, duration: turn, warmup };
    let mut turns: Vec<(Way, Stats, Stats)> = Vec::new();
    for way in TURNS {
        vacuum_catalogs(setup).await;
        let side = Side {
            label: way.label(),
            role: way.role(),
            user_field: "username",
            pids: &[pid],
            server: PLUGIN_PROCESS,
        };
        let (issued, revoked) = lessor_round(client, p, side, |users| roles_present(su, users)).await?;
        turns.push((way, issued, revoked));
    }

    let pairs: Vec<String> = turns
        .chunks(2)
        .map(|pair| {
            let rate = |way: Way| pair.iter().find(|t| t.0 == way).map_or(0.0, |t| t.1.throughput());
            format!("{:.2}", ratio(rate(Way::OutOfProcess), rate(Way::InProcess)))
        })
        .collect();
    println!("  external/built-in issuance rate, each pair of turns: {}", pairs.join(", "));
    let (inside, inside_revoked) = merged(&mut turns, Way::InProcess);
    let (outside, outside_revoked) = merged(&mut turns, Way::OutOfProcess);
    println!("  all turns of each side:");
    print_stats(Way::InProcess.label(), &inside, PLUGIN_PROCESS);
    print_stats(Way::OutOfProcess.label(), &outside, PLUGIN_PROCESS);
    print_stats(&format!("{} revoke", Way::InProcess.label()), &inside_revoked, PLUGIN_PROCESS);
    print_stats(&format!("{} revoke", Way::OutOfProcess.label()), &outside_revoked, PLUGIN_PROCESS);
    println!("  external/built-in, all turns of each side:");
    print_versus("issuance", &outside, &inside, Some(TARGET));
    print_versus("revocation", &outside_revoked, &inside_revoked, None);

    let after = plugin_status(client).await?;
    println!(
        "  plugin process after the phase: {}, pid {}, {} restarts",
        after["state"].as_str().unwrap_or("?"),
        after["pid"],
        after["restarts"]
    );
    Ok(())
}

/// `way`'s turns taken out of `turns` as one run: their issuances, their
/// revocations.
fn merged(turns: &mut Vec<(Way, Stats, Stats)>, way: Way) -> (Stats, Stats) {
    let (mine, others): (Vec<_>, Vec<_>) = std::mem::take(turns).into_iter().partition(|t| t.0 == way);
    *turns = others;
    let (issued, revoked): (Vec<_>, Vec<_>) = mine.into_iter().map(|(_, i, r)| (i, r)).unzip();
    (Stats::merged(issued), Stats::merged(revoked))
}
