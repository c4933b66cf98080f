//! The conformance kit behind `lessor plugin test`: the plugin contract,
//! run through the `Plugin` trait against a configured connection and its
//! real backend, so a built-in plugin, one served out of process and one
//! written in another language are held to the same checks. Every step
//! that makes something in the backend takes it away again.

use std::fmt::Write as _;

use chrono::Utc;
use lessor_plugin::{names, CreateRequest, Credential, LeaseRef, Plugin, PluginError};
use secrecy::SecretString;

use super::Failure;
use crate::setup::{Role, Setup};

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Pass,
    Fail,
    /// Not offered by the plugin (or not applicable to its credentials).
    Skip,
}

/// The checks run and what each found.
#[derive(Debug, Default)]
pub(super) struct Report {
    rows: Vec<(String, Verdict, String)>,
}

impl Report {
    fn record(&mut self, step: &str, verdict: Verdict, detail: impl Into<String>) {
        self.rows.push((step.to_string(), verdict, super::one_line(&detail.into())));
    }

    /// Records `result` as a pass, a skip when the plugin does not do it,
    /// or a failure; returns whether it passed.
    fn expect_ok(&mut self, step: &str, result: Result<(), PluginError>) -> bool {
        match result {
            Ok(()) => self.record(step, Verdict::Pass, ""),
            Err(PluginError::Unsupported { operation }) => {
                self.record(step, Verdict::Skip, format!("{operation} not offered"))
            }
            Err(e) => self.record(step, Verdict::Fail, e.to_string()),
        }
        matches!(self.rows.last(), Some((_, Verdict::Pass, _)))
    }

    pub fn passed(&self) -> bool {
        !self.rows.iter().any(|(_, v, _)| *v == Verdict::Fail)
    }

    pub fn table(&self) -> String {
        let width = self.rows.iter().map(|(s, _, _)| s.len()).max().unwrap_or(4).max(4);
        let mut text = format!("{:<width$}  RESULT  DETAIL\n", "STEP");
        for (step, verdict, detail) in &self.rows {
            let word = match verdict {
                Verdict::Pass => "ok",
                Verdict::Fail => "FAIL",
                Verdict::Skip => "skip",
            };
            let _ = writeln!(text, "{step:<width$}  {word:<6}  {detail}");
        }
        let failed = self.rows.iter().filter(|(_, v, _)| *v == Verdict::Fail).count();
        let _ = writeln!(text, "\n{} checks, {failed} failed", self.rows.len());
        text
    }
}

/// A credential the kit made, and what it takes to revoke it.
struct Made {
    lease_id: String,
    username: String,
    password: SecretString,
    credential: Credential,
    plugin_data: Option<serde_json::Value>,
}

impl Made {
    fn lease<'a>(&'a self, role: &'a Role) -> LeaseRef<'a> {
        LeaseRef {
            lease_id: &self.lease_id,
            role: &role.name,
            settings: Some(&role.settings),
            username: &self.username,
            plugin_data: self.plugin_data.as_ref(),
        }
    }
}

/// Runs the contract against `connection` with `role` (its first role
/// when `None`).
pub(super) async fn run(setup: &Setup, connection: &str, role: Option<&str>) -> Result<Report, Failure> {
    let conn = setup
        .connections
        .get(connection)
        .ok_or_else(|| Failure::new(format!("no connection {connection:?} in the config")))?;
    let role = match role {
        Some(name) => setup
            .roles
            .get(name)
            .filter(|r| r.connection == connection)
            .ok_or_else(|| Failure::new(format!("no role {name:?} on connection {connection:?}")))?,
        None => setup.roles.values().find(|r| r.connection == connection).ok_or_else(|| {
            Failure::new(format!("no role on connection {connection:?}: add one, or name one with --role"))
        })?,
    };
    let plugin = conn.plugin.as_ref();
    let mut report = Report::default();
    report.expect_ok("verify", plugin.verify().await);
    let options = setup.config.roles.get(&role.name).map(|r| r.options.clone()).unwrap_or_default();
    bad_options(&mut report, plugin, role, &options);
    unknown_user(&mut report, plugin, role).await;
    let Some(made) = create(&mut report, plugin, role).await else { return Ok(report) };
    let logs_in = login(plugin, &made).await;
    let logged_in = report.expect_ok("the credential logs in", logs_in);
    if let Some(listing) = listed(plugin, role, &made.username).await {
        match listing {
            Ok(true) => report.record("list_users lists it", Verdict::Pass, ""),
            Ok(false) => {
                report.record("list_users lists it", Verdict::Fail, format!("{} not listed", made.username))
            }
            Err(e) => report.record("list_users lists it", Verdict::Fail, e.to_string()),
        }
    }
    if role.capabilities.renewable {
        let until = Utc::now() + chrono::Duration::hours(2);
        report.expect_ok("renew", plugin.renew(&made.lease(role), until).await);
    } else {
        report.record("renew", Verdict::Skip, "the role is not renewable");
    }
    let revoked = report.expect_ok("revoke", plugin.revoke(&made.lease(role)).await);
    if revoked && logged_in {
        match login(plugin, &made).await {
            Err(PluginError::Unsupported { .. }) => {}
            Ok(()) => {
                report.record("after revoke it no longer logs in", Verdict::Fail, "the login still works")
            }
            Err(_) => report.record("after revoke it no longer logs in", Verdict::Pass, ""),
        }
    }
    if revoked {
        if let Some(listing) = listed(plugin, role, &made.username).await {
            match listing {
                Ok(false) => report.record("after revoke list_users does not list it", Verdict::Pass, ""),
                Ok(true) => report.record(
                    "after revoke list_users does not list it",
                    Verdict::Fail,
                    format!("{} still listed", made.username),
                ),
                Err(e) => {
                    report.record("after revoke list_users does not list it", Verdict::Fail, e.to_string())
                }
            }
        }
        report.expect_ok("revoke again is success", plugin.revoke(&made.lease(role)).await);
    }
    static_password(&mut report, plugin, role).await;
    Ok(report)
}

/// Options with a key no plugin knows are refused, the key named.
fn bad_options(report: &mut Report, plugin: &dyn Plugin, role: &Role, options: &toml::Table) {
    const KEY: &str = "lessor_conformance_no_such_key";
    let mut bad = options.clone();
    bad.insert(KEY.into(), toml::Value::Boolean(true));
    let step = "bad role options are refused, the key named";
    match plugin.check_role(&role.name, &bad) {
        Ok(_) => report.record(step, Verdict::Fail, format!("{KEY} = true was accepted")),
        Err(e) if e.key.contains(KEY) || e.message.contains(KEY) => {
            report.record(step, Verdict::Pass, e.to_string())
        }
        Err(e) => report.record(step, Verdict::Fail, format!("the error does not name {KEY}: {e}")),
    }
    let step = "the role's own options are accepted";
    match plugin.check_role(&role.name, options) {
        Ok(_) => report.record(step, Verdict::Pass, ""),
        Err(e) => report.record(step, Verdict::Fail, e.to_string()),
    }
}

/// Revoking a user that never existed is "already gone": success.
async fn unknown_user(report: &mut Report, plugin: &dyn Plugin, role: &Role) {
    let username = role.username.generate(&role.name);
    let lease = LeaseRef {
        lease_id: "conformance/never-issued",
        role: &role.name,
        settings: Some(&role.settings),
        username: &username,
        plugin_data: None,
    };
    report.expect_ok("revoke of an unknown user is success", plugin.revoke(&lease).await);
}

async fn create(report: &mut Report, plugin: &dyn Plugin, role: &Role) -> Option<Made> {
    let username = role.username.generate(&role.name);
    let password = names::password(role.password_length);
    let lease_id = format!("{}/conformance{}", role.name, Utc::now().timestamp_millis());
    let request = CreateRequest {
        role: &role.name,
        settings: &role.settings,
        lease_id: &lease_id,
        username: &username,
        password: &password,
        expires_at: Utc::now() + chrono::Duration::hours(1),
    };
    match plugin.create(&request).await {
        Ok(created) => {
            report.record("create", Verdict::Pass, username.clone());
            Some(Made {
                lease_id,
                username,
                password,
                credential: created.credential,
                plugin_data: created.plugin_data,
            })
        }
        Err(e) => {
            report.record("create", Verdict::Fail, e.to_string());
            // Whatever it left behind goes, as the broker's rollback would.
            let lease = LeaseRef {
                lease_id: &lease_id,
                role: &role.name,
                settings: Some(&role.settings),
                username: &username,
                plugin_data: None,
            };
            let _ = plugin.revoke(&lease).await;
            None
        }
    }
}

/// Uses the credential through the plugin: `test_login` for a login and
/// password, `test_key` for an access key without a session token.
async fn login(plugin: &dyn Plugin, made: &Made) -> Result<(), PluginError> {
    match &made.credential {
        Credential::Database { username, password } | Credential::Directory { username, password, .. } => {
            plugin.test_login(username, password).await
        }
        Credential::Aws { access_key_id, secret_access_key, session_token: None, .. } => {
            plugin.test_key(access_key_id, secret_access_key).await
        }
        _ => Err(PluginError::Unsupported { operation: "test_login of a session credential" }),
    }
}

/// Whether `list_users` lists `username`; `None` when the plugin does not list.
async fn listed(plugin: &dyn Plugin, role: &Role, username: &str) -> Option<Result<bool, PluginError>> {
    let prefix = role.username.prefix(&role.name);
    match plugin.list_users(&prefix).await {
        Err(PluginError::Unsupported { .. }) => None,
        Ok(users) => Some(Ok(users.iter().any(|u| u.name == username))),
        Err(e) => Some(Err(e)),
    }
}

/// For a plugin that rotates static accounts: a fresh credential's
/// password set anew logs in, and the old one no longer does.
async fn static_password(report: &mut Report, plugin: &dyn Plugin, role: &Role) {
    let offers = plugin.static_strategies().iter().any(|s| matches!(*s, "single" | "alternating"));
    if !offers {
        report.record("set_password", Verdict::Skip, "no single or alternating strategy offered");
        return;
    }
    let mut scratch = Report::default();
    let Some(made) = create(&mut scratch, plugin, role).await else {
        report.record("set_password", Verdict::Fail, "could not create a user to set a password on");
        return;
    };
    let new = names::password(role.password_length);
    if report.expect_ok("set_password", plugin.set_password(&made.username, &new).await) {
        report.expect_ok("the new password logs in", plugin.test_login(&made.username, &new).await);
        match plugin.test_login(&made.username, &made.password).await {
            Ok(()) => report.record("the old password no longer logs in", Verdict::Fail, "it still does"),
            Err(_) => report.record("the old password no longer logs in", Verdict::Pass, ""),
        }
    }
    if let Err(e) = plugin.revoke(&made.lease(role)).await {
        report.record("set_password: clean-up revoke", Verdict::Fail, e.to_string());
    }
}
