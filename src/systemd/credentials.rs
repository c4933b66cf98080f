//! The credentials socket (`server.credentials_socket`): systemd's
//! `LoadCredential=ID:/run/lessor/credentials.sock` (systemd.exec(5)).
//!
//! When a unit with that line starts, the service manager connects to the
//! socket from an abstract address it names
//! `\0<random>/unit/<unit>/<id>`, reads until the end of the stream, and
//! puts what it read in the unit's `$CREDENTIALS_DIRECTORY/<id>`. So:
//!
//! - The peer must be the service manager: uid 0 and PID 1 in the daemon's
//!   pid namespace, by the kernel's `SO_PEERCRED`. Anyone else is refused
//!   before a byte is read (root in a container, a root process that is not
//!   PID 1, any other user), and cannot name a unit it is not.
//! - The unit and id come from the peer's address, which only the service
//!   manager chose; `[credentials."ID"]` says what it is and which `units`
//!   may load it, and the policies are checked with the unit as the caller
//!   (`systemd_unit` keys), as any issuance's.
//! - A role's credential is a fresh lease for this start of the unit,
//!   recorded as delivered to the unit (`owner.unit`), renewed while the
//!   unit's cgroup holds a process and revoked when it holds none
//!   ([`super::units`]).
//! - A refusal closes the connection without a byte: the protocol has no
//!   way to say no, so the unit finds an empty credential (what systemd
//!   read) and the reason is in lessor's log and audit log, never in the
//!   unit's.
//! - A credential that cannot be written to the manager (it went away) is
//!   revoked at once, like any credential its caller never got.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use lessor_plugin::ConfigError;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::units::{self, Lifetimes};
use crate::audit::{Actor, Audit, Record};
use crate::broker::Broker;
use crate::config::{CredentialConfig, CredentialFormat, Duration};
use crate::lease::Lease;
use crate::policy::rules::Pattern;
use crate::policy::{Caller, Policies};
use crate::rotation::Rotator;
use crate::setup::Setup;

/// How long one delivery may take, from accept to the last byte written.
const DELIVERY_TIMEOUT: StdDuration = StdDuration::from_secs(60);
/// Deliveries running at once; more wait in the socket's queue.
const MAX_DELIVERIES: usize = 64;

/// One `[credentials."ID"]`, built.
#[derive(Debug)]
struct Entry {
    what: What,
    format: CredentialFormat,
    units: Vec<Pattern>,
    ttl: Option<Duration>,
}

#[derive(Debug)]
enum What {
    Role(String),
    /// A static account, and the plugin of its connection (which
    /// variables `format = "env"` writes).
    Static {
        name: String,
        plugin: &'static str,
    },
}

/// What the credentials socket serves, built from `[credentials]`.
#[derive(Debug, Default)]
pub struct Credentials {
    entries: BTreeMap<String, Entry>,
}

impl Credentials {
    /// Builds every `[credentials."ID"]` of a checked config: its unit
    /// globs compiled, its static account's plugin found.
    pub fn from_setup(setup: &Setup) -> Result<Self, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut entries = BTreeMap::new();
        for (id, config) in &setup.config.credentials {
            let key = format!("credentials.{id:?}");
            let mut units = Vec::new();
            for (i, glob) in config.units.iter().enumerate() {
                match Pattern::new(glob, false) {
                    Ok(pattern) => units.push(pattern),
                    Err(e) => errors.push(ConfigError::new(format!("{key}.units[{i}]"), e)),
                }
            }
            let what = match what(setup, config) {
                Some(what) => what,
                // The config check has said why.
                None => continue,
            };
            entries.insert(id.clone(), Entry { what, format: config.format, units, ttl: config.ttl });
        }
        if errors.is_empty() {
            Ok(Self { entries })
        } else {
            Err(errors)
        }
    }

    /// How far renewals move a lease delivered to a unit: the `ttl` of the
    /// `[credentials]` entry of its role whose `units` match the unit.
    pub fn increment(&self, lease: &Lease) -> Option<Duration> {
        let unit = lease.owner.unit.as_deref()?;
        self.entries
            .values()
            .filter(|e| matches!(&e.what, What::Role(role) if *role == lease.role))
            .find(|e| e.units.iter().any(|p| p.matches(unit)))
            .and_then(|e| e.ttl)
    }
}

fn what(setup: &Setup, config: &CredentialConfig) -> Option<What> {
    match (&config.role, &config.static_account) {
        (Some(role), None) => Some(What::Role(role.clone())),
        (None, Some(name)) => {
            let account = setup.config.static_accounts.get(name)?;
            let connection = setup.connections.get(&account.connection)?;
            Some(What::Static { name: name.clone(), plugin: connection.plugin.name() })
        }
        _ => None,
    }
}

/// What a delivery needs of the daemon.
pub struct Server {
    pub credentials: Credentials,
    pub broker: Arc<Broker>,
    pub rotator: Arc<Rotator>,
    pub policies: Policies,
    pub audit: Audit,
    pub lifetimes: Arc<Lifetimes>,
}

impl Server {
    /// Serves `listener` until `shutdown`.
    pub async fn serve(self: Arc<Self>, listener: UnixListener, shutdown: CancellationToken) {
        let running = Arc::new(tokio::sync::Semaphore::new(MAX_DELIVERIES));
        loop {
            let permit = tokio::select! {
                permit = running.clone().acquire_owned() => permit.expect("never closed"),
                _ = shutdown.cancelled() => return,
            };
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        rate_limited_warn(&format!("cannot accept on the credentials socket: {e}"));
                        tokio::time::sleep(StdDuration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => return,
            };
            let me = self.clone();
            self.broker.tasks().spawn(async move {
                if tokio::time::timeout(DELIVERY_TIMEOUT, me.deliver(stream)).await.is_err() {
                    warn!("a credential delivery took longer than {DELIVERY_TIMEOUT:?}; dropped");
                }
                drop(permit);
            });
        }
    }

    /// One connection: checked, answered, closed.
    async fn deliver(&self, stream: UnixStream) {
        let request = match Request::of(&stream) {
            Ok(request) => request,
            Err(why) => {
                rate_limited_warn(&format!("credentials socket: refused a connection: {why}"));
                drop(stream);
                return;
            }
        };
        let Request { unit, id } = &request;
        match self.answer(&request).await {
            Ok((mut text, lease, cgroup)) => {
                let written = async {
                    stream_write(&stream, &text).await?;
                    let mut stream = stream;
                    stream.shutdown().await
                };
                let written = written.await;
                text.clear();
                match (written, lease) {
                    (Err(e), Some(lease)) => {
                        warn!(unit = %unit, credential = %id, lease = %lease.id, error = %e, "the service manager went away before the credential was written; revoking it");
                        let _ = self.broker.revoke_ended(&lease.id).await;
                    }
                    (Err(e), None) => {
                        warn!(unit = %unit, credential = %id, error = %e, "cannot write the credential to the service manager")
                    }
                    (Ok(()), Some(lease)) => {
                        info!(unit = %unit, credential = %id, lease = %lease.id, "credential delivered");
                        match cgroup {
                            Some(cgroup) => {
                                let increment = self.credentials.entries.get(id.as_str()).and_then(|e| e.ttl);
                                self.lifetimes.bind(lease, cgroup, increment);
                            }
                            None => warn!(
                                unit = %unit, lease = %lease.id,
                                "the unit's cgroup was not found (no cgroup v2, or lessor sees another cgroup namespace): the lease is not renewed and ends at its TTL"
                            ),
                        }
                    }
                    (Ok(()), None) => info!(unit = %unit, credential = %id, "credential delivered"),
                }
            }
            Err(why) => {
                warn!(unit = %unit, credential = %id, "credentials socket: refused: {why}");
                drop(stream);
            }
        }
    }

    /// The credential's text, its lease (for a role) and the unit's
    /// cgroup; or why not. Audited either way (fail closed: an issuance
    /// whose record cannot be written is revoked).
    async fn answer(
        &self,
        request: &Request,
    ) -> Result<(Zeroizing<String>, Option<Lease>, Option<units::UnitCgroup>), String> {
        let Request { unit, id } = request;
        let entry = self
            .credentials
            .entries
            .get(id.as_str())
            .ok_or_else(|| format!("no [credentials.{id:?}] is configured"))?;
        if !entry.units.iter().any(|p| p.matches(unit)) {
            let denied = format!("unit {unit} is not in [credentials.{id:?}].units");
            self.record(&self.policies.unit_caller(unit, None), id, None, Some(&denied)).await;
            return Err(denied);
        }
        let name = unit.clone();
        let cgroup = tokio::task::spawn_blocking(move || units::locate(&name)).await.ok().flatten();
        let caller = self.policies.unit_caller(unit, cgroup.as_ref().map(|c| c.path.clone()));
        let delivered = match &entry.what {
            What::Role(role) => {
                match self.broker.issue_detached(role.clone(), entry.ttl, caller.clone()).await {
                    Ok(issued) => match crate::http::wire::issued(&issued) {
                        Some(body) => {
                            Ok((serde_json::to_value(body).unwrap_or_default(), Some(issued.lease)))
                        }
                        None => {
                            let _ = self.broker.revoke_ended(&issued.lease.id).await;
                            Err("the plugin made a credential of a kind that cannot be written".to_string())
                        }
                    },
                    Err(e) => Err(e.to_string()),
                }
            }
            What::Static { name, .. } => match self.rotator.get(name, &caller).await {
                Ok(info) => Ok((serde_json::to_value(info).unwrap_or_default(), None)),
                Err(e) => Err(e.to_string()),
            },
        };
        let (body, lease) = match delivered {
            Ok(delivered) => delivered,
            Err(why) => {
                self.record(&caller, id, None, Some(&why)).await;
                return Err(why);
            }
        };
        let plugin = match &entry.what {
            What::Role(_) => body.get("plugin").and_then(Value::as_str).unwrap_or("").to_string(),
            What::Static { plugin, .. } => plugin.to_string(),
        };
        let text = render(entry.format, &plugin, &body);
        let failed = match &text {
            Ok(_) => None,
            Err(e) => Some(e.clone()),
        };
        if !self.record(&caller, id, lease.as_ref(), failed.as_deref()).await || failed.is_some() {
            if let Some(lease) = &lease {
                let _ = self.broker.revoke_ended(&lease.id).await;
            }
            return Err(failed.unwrap_or_else(|| "the audit log cannot be written".into()));
        }
        Ok((text?, lease, cgroup))
    }

    /// One audit record of a delivery; whether it was written.
    async fn record(&self, caller: &Caller, id: &str, lease: Option<&Lease>, failed: Option<&str>) -> bool {
        let mut actor = Actor::from(caller.identity());
        let policies = caller.policy_names();
        if !policies.is_empty() {
            actor = actor.with_policy(policies.join(","));
        }
        let mut record = Record::new("credentials.load", actor).target(id.to_string());
        if let Some(lease) = lease {
            record = record.lease(lease.id.to_string());
        }
        record = match failed {
            Some(why) => record.status(403).denied("refused", why),
            None => record.status(200),
        };
        match self.audit.record(record).await {
            Ok(()) => true,
            Err(e) => {
                warn!(credential = %id, error = %e, "cannot write the audit record of a credential delivery; refusing it");
                false
            }
        }
    }
}

/// What the service manager asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Request {
    unit: String,
    id: String,
}

impl Request {
    /// The unit and credential id of a connection, if its peer is the
    /// service manager.
    fn of(stream: &UnixStream) -> Result<Self, String> {
        let cred = stream.peer_cred().map_err(|e| format!("no peer credentials: {e}"))?;
        if cred.uid() != 0 || cred.pid() != Some(1) {
            return Err(format!(
                "the peer is uid {} pid {}, not the service manager (uid 0, pid 1)",
                cred.uid(),
                cred.pid().map_or("unknown".into(), |p| p.to_string())
            ));
        }
        let address = stream.peer_addr().map_err(|e| format!("no peer address: {e}"))?;
        let name = address.as_abstract_name().ok_or("the peer is not bound to an abstract address")?;
        parse_address(name)
    }
}

/// `<random>/unit/<unit>/<id>`, the abstract address systemd binds.
fn parse_address(name: &[u8]) -> Result<Request, String> {
    let name = std::str::from_utf8(name).map_err(|_| "the peer's address is not UTF-8".to_string())?;
    let bad = || format!("the peer's address {name:?} is not <random>/unit/<unit>/<credential id>");
    let mut parts = name.split('/');
    let (Some(_random), Some("unit"), Some(unit), Some(id), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if !is_unit_name(unit) || !crate::config::credentials::is_valid_id(id) {
        return Err(bad());
    }
    Ok(Request { unit: unit.to_string(), id: id.to_string() })
}

/// A systemd unit name: `name.type`, in the characters systemd allows.
fn is_unit_name(unit: &str) -> bool {
    unit.len() <= 255
        && unit.rsplit_once('.').is_some_and(|(name, kind)| !name.is_empty() && !kind.is_empty())
        && unit
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.' | b'\\' | b'@' | b'-'))
}

/// The credential as the unit reads it.
fn render(format: CredentialFormat, plugin: &str, body: &Value) -> Result<Zeroizing<String>, String> {
    let credential = body.get("credential").ok_or("the answer has no credential")?;
    Ok(Zeroizing::new(match format {
        CredentialFormat::Json => serde_json::to_string_pretty(body).map_err(|e| e.to_string())? + "\n",
        CredentialFormat::Password => {
            let field =
                ["password", "secret_access_key"].into_iter().find_map(|f| credential.get(f)?.as_str());
            field.ok_or("the credential has no password; use format = \"env\" or \"json\"")?.to_string()
        }
        CredentialFormat::Env => {
            let mut vars = Vec::new();
            if let Some(lease_id) = body.get("lease_id").and_then(Value::as_str) {
                vars.push(("LESSOR_LEASE_ID", lease_id.to_string()));
            }
            vars.extend(lessor_client::env::credential_vars(plugin, credential)?);
            vars.iter()
                .map(|(var, value)| format!("{var}={}\n", lessor_client::env::shell_quote(value)))
                .collect()
        }
    }))
}

async fn stream_write(stream: &UnixStream, text: &str) -> std::io::Result<()> {
    let mut written = 0;
    let bytes = text.as_bytes();
    while written < bytes.len() {
        stream.writable().await?;
        match stream.try_write(&bytes[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A warning at most every 10 s: a flood of refused connections must not
/// flood the log.
fn rate_limited_warn(message: &str) {
    static LAST: AtomicI64 = AtomicI64::new(0);
    if crate::api::listen::now_due(&LAST) {
        warn!("{message} (further such warnings held back for 10 s)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_names_unit_and_id() {
        assert_eq!(
            parse_address(b"a1b2c3d4e5f60708/unit/billing-1.service/db.env").unwrap(),
            Request { unit: "billing-1.service".into(), id: "db.env".into() }
        );
        assert_eq!(parse_address(b"x/unit/web@2.service/pg").unwrap().unit, "web@2.service");
        for bad in [
            &b"x/unit/billing.service"[..],
            b"x/unit/billing.service/db.env/more",
            b"x/user/billing.service/db.env",
            b"x/unit/billing/db.env",
            b"x/unit/billing.service/.hidden",
            b"x/unit/bill ing.service/db",
            b"x/unit/billing.service/",
            b"\xff/unit/a.service/b",
        ] {
            assert!(parse_address(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn env_lines_quote_values_for_a_shell_and_environment_files() {
        let body = serde_json::json!({
            "lease_id": "app/abc",
            "plugin": "postgres",
            "credential": { "username": "v-app-1", "password": "it's $x" },
        });
        let text = render(CredentialFormat::Env, "postgres", &body).unwrap();
        assert_eq!(&*text, "LESSOR_LEASE_ID='app/abc'\nPGUSER='v-app-1'\nPGPASSWORD='it'\\''s $x'\n");
        assert_eq!(&*render(CredentialFormat::Password, "postgres", &body).unwrap(), "it's $x");
        let json: Value =
            serde_json::from_str(&render(CredentialFormat::Json, "postgres", &body).unwrap()).unwrap();
        assert_eq!(json, body);
        let aws = serde_json::json!({ "credential": { "access_key_id": "AKIA", "secret_access_key": "s" } });
        assert!(render(CredentialFormat::Env, "aws", &aws).unwrap().contains("AWS_SECRET_ACCESS_KEY='s'\n"));
    }
}
