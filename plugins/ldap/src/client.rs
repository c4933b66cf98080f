//! The engine: [`LdapPlugin`] runs a role's LDIF, group changes, searches
//! and password changes over one connection bound as the admin (LDAP
//! multiplexes operations on a connection, so one serves concurrent
//! issuance), and tests logins over connections of their own.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ldap3::exop::WhoAmI;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Mod, Scope, SearchEntry};
use lessor_plugin::deadline::{self, Bounded};
use lessor_plugin::failure::{self, Context, Operation};
use lessor_plugin::redact::Redactor;
use lessor_plugin::{
    downcast_role, BackendUser, Capabilities, ConfigError, ConnectionContext, CreateRequest, Created,
    Credential, LeaseRef, Plugin, PluginError, RoleSettings,
};
use secrecy::{ExposeSecret, SecretString};
use tracing::debug;
use zeroize::Zeroizing;

use crate::config::{parse_connection, parse_role, Connection, LdapRole};
use crate::error::{failed, rc, refused};
use crate::ldif::{Ldif, Secrets};
use crate::password::unicode_pwd;
use crate::password::Schema;
use crate::template::Values;

mod entries;

use entries::Stored;

/// Usernames lessor makes: short enough for any directory's naming
/// attribute (AD's `sAMAccountName` aside, which takes 20: set the role's
/// username template to fit).
const MAX_USERNAME_LEN: usize = 64;

/// The attribute a group lists its members in (`groupOfNames`, AD groups).
const MEMBER: &[u8] = b"member";

pub struct LdapPlugin {
    name: String,
    conn: Connection,
    operation_timeout: Duration,
    /// The bind DN's password, with a generation that moves when it is
    /// switched (rotate-root), so the cached connection is bound anew.
    password: RwLock<(u64, SecretString)>,
    /// The admin's bound connection, made on first use and kept while open.
    admin: tokio::sync::Mutex<Option<(u64, Ldap)>>,
}

impl std::fmt::Debug for LdapPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapPlugin")
            .field("connection", &self.name)
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

/// How a DN is found from a name.
enum Lookup {
    Found(String),
    Missing,
}

impl LdapPlugin {
    pub fn new(ctx: ConnectionContext<'_>) -> Result<Self, ConfigError> {
        let conn = parse_connection(ctx.name, ctx.url, ctx.options)?;
        let password = ctx.password.ok_or_else(|| {
            ConfigError::new(
                format!("connections.{}.password_file", ctx.name),
                format!("required: the password of bind_dn {} (password_file or password_env)", conn.bind_dn),
            )
        })?;
        // The process's one rustls provider, as the other plugins use.
        lessor_plugin::tls::provider();
        Ok(Self {
            name: ctx.name.to_string(),
            conn,
            operation_timeout: ctx.operation_timeout,
            password: RwLock::new((0, password)),
            admin: tokio::sync::Mutex::new(None),
        })
    }

    /// A new connection to the server (TLS set up, nothing bound yet).
    async fn open(&self, cx: &Context<'_>) -> Result<Ldap, PluginError> {
        let mut settings =
            LdapConnSettings::new().set_conn_timeout(self.operation_timeout).set_starttls(self.conn.starttls);
        if let Some(config) = &self.conn.tls {
            settings = settings.set_config(config.clone());
        }
        let what = format!("connect to {}", self.conn.url);
        let (driver, ldap) = LdapConnAsync::with_settings(settings, &self.conn.url)
            .await
            .map_err(|e| failed(&e, &what, &self.conn.bind_dn, cx, &Redactor::default()))?;
        let connection = self.name.clone();
        tokio::spawn(async move {
            if let Err(e) = driver.drive().await {
                debug!(connection, error = %e, "LDAP connection ended");
            }
        });
        Ok(ldap)
    }

    /// A simple bind as `dn`; an empty password is refused, since LDAP
    /// takes it for an anonymous bind that "succeeds".
    async fn bind(
        &self,
        ldap: &mut Ldap,
        dn: &str,
        password: &str,
        cx: &Context<'_>,
    ) -> Result<(), PluginError> {
        let what = format!("bind as {dn}");
        if password.is_empty() {
            return Err(PluginError::Rejected {
                message: format!("{}: {what}: an empty password would be an anonymous bind", cx.prefix()),
            });
        }
        let redactor = Redactor::new([password]);
        let result = ldap
            .with_timeout(self.operation_timeout)
            .simple_bind(dn, password)
            .await
            .map_err(|e| failed(&e, &what, &self.conn.bind_dn, cx, &redactor))?;
        if result.rc != rc::SUCCESS {
            return Err(refused(&result, &what, &self.conn.bind_dn, cx, &redactor));
        }
        Ok(())
    }

    /// The admin's connection, bound with its current password.
    async fn admin(&self, cx: &Context<'_>) -> Result<Ldap, PluginError> {
        let mut cached = self.admin.lock().await;
        let (generation, password) = {
            let current = self.password.read().expect("password lock");
            (current.0, current.1.clone())
        };
        if let Some((made_with, ldap)) = cached.as_mut() {
            if *made_with == generation && !ldap.is_closed() {
                return Ok(ldap.clone());
            }
        }
        *cached = None;
        let mut ldap = self.open(cx).await?;
        self.bind(&mut ldap, &self.conn.bind_dn, password.expose_secret(), cx).await?;
        *cached = Some((generation, ldap.clone()));
        Ok(ldap)
    }

    /// Closes the admin's connection: operations waiting on it fail at
    /// once, and the next one connects anew.
    async fn close_admin(&self) {
        let taken = self.admin.lock().await.take();
        if let Some((_, mut ldap)) = taken {
            let _ = tokio::time::timeout(Duration::from_secs(1), ldap.unbind()).await;
        }
    }

    /// Runs `work` for at most `operation_timeout`. Past it, the admin's
    /// connection is closed (LDAP cannot cancel an update the server has
    /// begun; closing makes every wait on it end), and the operation fails
    /// as retryable.
    async fn bounded<T>(
        &self,
        cx: &Context<'_>,
        work: impl Future<Output = Result<T, PluginError>>,
    ) -> Result<T, PluginError> {
        match deadline::run(self.operation_timeout, work, || self.close_admin()).await {
            Bounded::Done(result) => result,
            Bounded::TimedOut { settled } => {
                Err(deadline::timed_out(&cx.prefix(), self.operation_timeout, settled))
            }
        }
    }

    /// The DN of `username`: itself when it is a DN, else the one entry
    /// under `userdn` whose `userattr` is `username`.
    async fn lookup(&self, ldap: &mut Ldap, username: &str, cx: &Context<'_>) -> Result<Lookup, PluginError> {
        if username.contains('=') {
            return Ok(Lookup::Found(username.to_string()));
        }
        let filter = format!("({}={})", self.conn.userattr, ldap3::ldap_escape(username));
        let what = format!("search {filter} under {}", self.conn.userdn);
        let (entries, _) = ldap
            .search(&self.conn.userdn, Scope::Subtree, &filter, vec!["1.1"])
            .await
            .and_then(|r| r.success())
            .map_err(|e| failed(&e, &what, &self.conn.bind_dn, cx, &Redactor::default()))?;
        match entries.len() {
            0 => Ok(Lookup::Missing),
            1 => Ok(Lookup::Found(SearchEntry::construct(entries.into_iter().next().unwrap()).dn)),
            n => Err(PluginError::Rejected {
                message: format!("{}: {what}: {n} entries match; a name must find one", cx.prefix()),
            }),
        }
    }

    async fn require(
        &self,
        ldap: &mut Ldap,
        username: &str,
        cx: &Context<'_>,
    ) -> Result<String, PluginError> {
        match self.lookup(ldap, username, cx).await? {
            Lookup::Found(dn) => Ok(dn),
            Lookup::Missing => Err(PluginError::Rejected {
                message: format!(
                    "{}: no entry under {} has {}={username}",
                    cx.prefix(),
                    self.conn.userdn,
                    self.conn.userattr
                ),
            }),
        }
    }

    /// The `userPassword` hash and the `unicodePwd` bytes `ldif` needs.
    async fn secrets_for(
        &self,
        ldif: &Ldif,
        password: &str,
    ) -> Result<(Option<Zeroizing<String>>, Option<Zeroizing<Vec<u8>>>), PluginError> {
        let hashed = match ldif.needs_hash() {
            true => Some(self.hash(password).await?),
            false => None,
        };
        let unicode = ldif.needs_unicode_pwd().then(|| unicode_pwd(password));
        Ok((hashed, unicode))
    }

    /// The connection's `password_hash` of `password`, off the async threads.
    async fn hash(&self, password: &str) -> Result<Zeroizing<String>, PluginError> {
        let scheme = self.conn.password_hash;
        let password = Zeroizing::new(password.to_string());
        tokio::task::spawn_blocking(move || scheme.hash(&password))
            .await
            .map_err(|e| PluginError::Internal { message: format!("hashing the password failed: {e}") })
    }
}

#[async_trait]
impl Plugin for LdapPlugin {
    fn name(&self) -> &'static str {
        crate::PLUGIN_NAME
    }

    fn capabilities(&self) -> Capabilities {
        // Renewal is the lease's only: an LDAP entry has no expiry of its own.
        Capabilities { renewable: true, revocable: true, max_username_len: MAX_USERNAME_LEN }
    }

    fn static_strategies(&self) -> &'static [&'static str] {
        &["single", "alternating"]
    }

    fn check_role(&self, role: &str, options: &toml::Table) -> Result<RoleSettings, ConfigError> {
        Ok(Arc::new(parse_role(role, options, self.conn.schema)?))
    }

    async fn verify(&self) -> Result<(), PluginError> {
        let cx = Context::new(Operation::Verify, None);
        self.bounded(&cx, async {
            let mut ldap = self.admin(&cx).await?;
            let what = format!("read {}", self.conn.userdn);
            ldap.search(&self.conn.userdn, Scope::Base, "(objectClass=*)", vec!["1.1"])
                .await
                .and_then(|r| r.success())
                .map_err(|e| failed(&e, &what, &self.conn.bind_dn, &cx, &Redactor::default()))?;
            Ok(())
        })
        .await
    }

    async fn create(&self, request: &CreateRequest<'_>) -> Result<Created, PluginError> {
        let username = request.username;
        let cx = Context::new(Operation::Create, Some(username));
        failure::check_username(username, MAX_USERNAME_LEN, b"-.", &cx)?;
        let role = downcast_role::<LdapRole>(request.settings)?;
        let password = request.password.expose_secret();
        let values = Values {
            username,
            password: Some(password),
            role: request.role,
            issued_at: Utc::now(),
            expires_at: request.expires_at,
        };
        let (hashed, unicode) = self.secrets_for(&role.creation, password).await?;
        let secrets = Secrets {
            hashed: hashed.as_ref().map(|h| h.as_str()),
            unicode_pwd: unicode.as_ref().map(|u| u.as_slice()),
        };
        let invalid =
            |message: String| PluginError::InvalidRole { message: format!("{}: {message}", cx.prefix()) };
        let ops = role.creation.render(&values, &secrets).map_err(invalid)?;
        let dn = role
            .creation
            .entry_dn(&values)
            .ok_or_else(|| PluginError::Internal { message: "creation_ldif adds no entry".into() })?
            .map_err(invalid)?;
        let redactor =
            Redactor::new([Some(password), hashed.as_ref().map(|h| h.as_str())].into_iter().flatten());
        let started = AtomicBool::new(false);
        let made = self.bounded(&cx, self.create_entry(role, ops, &dn, &started, &cx, &redactor)).await;
        if let Err(e) = made {
            // Nothing to undo when the first record was never sent (and a
            // first add refused as "already exists" is not ours to delete).
            if started.load(Ordering::SeqCst) {
                let rollback_values = Values { password: None, ..values };
                self.roll_back(role, &rollback_values, &dn, &cx).await;
            }
            return Err(e);
        }
        debug!(connection = %self.name, username, dn, "created");
        Ok(Created {
            credential: Credential::Directory {
                username: username.to_string(),
                distinguished_name: dn.clone(),
                password: request.password.clone(),
            },
            plugin_data: Some(serde_json::json!({ "dn": dn, "groups": role.groups })),
            expires_at: None,
        })
    }

    async fn renew(&self, _lease: &LeaseRef<'_>, _expires_at: DateTime<Utc>) -> Result<(), PluginError> {
        // An LDAP entry has no expiry to move: the lease's end is the only one.
        Ok(())
    }

    async fn revoke(&self, lease: &LeaseRef<'_>) -> Result<(), PluginError> {
        let cx = Context::new(Operation::Revoke, Some(lease.username));
        failure::check_username(lease.username, MAX_USERNAME_LEN, b"-.", &cx)?;
        let stored = Stored::read(lease.plugin_data);
        match lease.settings {
            Some(settings) => {
                let role = downcast_role::<LdapRole>(settings)?;
                self.bounded(&cx, self.revoke_with_role(role, lease, &stored, &cx)).await
            }
            None => self.bounded(&cx, self.revoke_default(lease.username, &stored, &cx)).await,
        }
    }

    async fn list_users(&self, prefix: &str) -> Result<Vec<BackendUser>, PluginError> {
        let cx = Context::new(Operation::ListUsers, None);
        self.bounded(&cx, self.users(prefix, &cx)).await
    }

    async fn set_password(&self, username: &str, password: &SecretString) -> Result<(), PluginError> {
        let cx = Context::new(Operation::SetPassword, Some(username));
        let password = password.expose_secret();
        if password.is_empty() {
            return Err(PluginError::Internal { message: format!("{}: an empty password", cx.prefix()) });
        }
        let (attribute, value): (&[u8], Zeroizing<Vec<u8>>) = match self.conn.schema {
            Schema::OpenLdap => {
                (b"userPassword", Zeroizing::new(self.hash(password).await?.as_bytes().to_vec()))
            }
            Schema::Ad => (b"unicodePwd", unicode_pwd(password)),
        };
        self.bounded(&cx, async {
            let mut ldap = self.admin(&cx).await?;
            let dn = self.require(&mut ldap, username, &cx).await?;
            let what = format!("modify {dn} (replace {})", String::from_utf8_lossy(attribute));
            let mods = vec![Mod::Replace(attribute.to_vec(), HashSet::from([value.to_vec()]))];
            let redactor = Redactor::new([password]);
            let result = ldap
                .modify(&dn, mods)
                .await
                .map_err(|e| failed(&e, &what, &self.conn.bind_dn, &cx, &redactor))?;
            if result.rc != rc::SUCCESS {
                return Err(refused(&result, &what, &self.conn.bind_dn, &cx, &redactor));
            }
            Ok(())
        })
        .await
    }

    async fn test_login(&self, username: &str, password: &SecretString) -> Result<(), PluginError> {
        let cx = Context::new(Operation::TestLogin, Some(username));
        let work = async {
            let dn = match username.contains('=') {
                true => username.to_string(),
                false => {
                    let mut admin = self.admin(&cx).await?;
                    self.require(&mut admin, username, &cx).await?
                }
            };
            // A connection of its own: the bind is the test.
            let mut ldap = self.open(&cx).await?;
            self.bind(&mut ldap, &dn, password.expose_secret(), &cx).await?;
            let what = format!("who am I, bound as {dn}");
            let (exop, _) = ldap
                .with_timeout(self.operation_timeout)
                .extended(WhoAmI)
                .await
                .and_then(|r| r.success())
                .map_err(|e| failed(&e, &what, &self.conn.bind_dn, &cx, &Redactor::default()))?;
            let authzid = exop.val.map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default();
            if authzid.is_empty() {
                return Err(PluginError::Rejected {
                    message: format!("{}: {what}: the server says the connection is anonymous", cx.prefix()),
                });
            }
            debug!(connection = %self.name, dn, authzid, "login tested");
            let _ = ldap.unbind().await;
            Ok(())
        };
        match deadline::run(self.operation_timeout, work, || async {}).await {
            Bounded::Done(result) => result,
            Bounded::TimedOut { settled } => {
                Err(deadline::timed_out(&cx.prefix(), self.operation_timeout, settled))
            }
        }
    }

    async fn end_sessions(&self, _username: &str) -> Result<(), PluginError> {
        // A bind lasts as long as its connection and a password change
        // does not end either: there is no session to end in LDAP terms.
        Ok(())
    }

    fn admin_username(&self) -> Option<String> {
        // rotate-root sets the bind DN's own userPassword through
        // set_password, which takes a DN as it is.
        Some(self.conn.bind_dn.clone())
    }

    fn use_admin_password(&self, _username: &str, password: &SecretString) -> Result<(), PluginError> {
        let mut current = self.password.write().expect("password lock");
        *current = (current.0 + 1, password.clone());
        debug!(connection = %self.name, "admin binds now use the rotated password");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_password() {
        let options: toml::Table =
            "bind_dn = \"cn=lessor,dc=x\"\nuserdn = \"ou=people,dc=x\"".parse().unwrap();
        let plugin = LdapPlugin::new(ConnectionContext {
            name: "dir",
            url: Some("ldap://127.0.0.1:389"),
            password: Some(SecretString::from("hunter2-secret".to_string())),
            max_connections: 1,
            operation_timeout: Duration::from_secs(5),
            options: &options,
        })
        .unwrap();
        let shown = format!("{plugin:?}");
        assert!(shown.contains("cn=lessor,dc=x") && !shown.contains("hunter2"), "{shown}");
    }
}
