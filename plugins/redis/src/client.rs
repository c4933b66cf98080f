//! The engine: [`RedisPlugin`] runs the ACL commands on every node of the
//! connection, over one auto-reconnecting connection of the admin user
//! each (see [`crate::node`]).

use std::fmt;
use std::future::Future;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use lessor_plugin::failure::{self, Context, Operation};
use lessor_plugin::redact::Redactor;
use lessor_plugin::tls::{TlsFiles, TlsMode, TlsSettings};
use lessor_plugin::{
    downcast_role, BackendUser, Capabilities, ConfigError, ConnectionContext, CreateRequest, Created,
    Credential, LeaseRef, Plugin, PluginError, RoleSettings,
};
use redis::aio::ConnectionManager;
use redis::{ErrorKind, IntoConnectionInfo, RedisError};
use secrecy::{ExposeSecret, SecretString};
use tracing::debug;

use crate::config::{parse_connection, parse_role, RedisConnectionOptions, RedisRole};
use crate::node::{Node, Tls};

/// Usernames lessor makes: ACL names take any bytes, these stay readable
/// in `ACL LIST` and safe in every client.
const MAX_USERNAME_LEN: usize = 64;

pub struct RedisPlugin {
    connection: String,
    /// `url` first, then `nodes`: every change is made on each.
    nodes: Vec<Node>,
    admin: Option<String>,
}

impl fmt::Debug for RedisPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisPlugin")
            .field("connection", &self.connection)
            .field("nodes", &self.nodes)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

/// A connection's TLS settings from its options, checked and read at load;
/// `None` for `redis://`.
fn tls(key: &str, url: &str, options: &RedisConnectionOptions) -> Result<Option<Tls>, ConfigError> {
    if url.starts_with("rediss://") {
        if url.contains('#') {
            return Err(ConfigError::new(
                format!("{key}.url"),
                "no fragment (#insecure turns the certificate check off, which lessor never does)",
            ));
        }
        // The SDK's checks, as for the SQL plugins: readable files, a
        // private key, a certificate and its key together.
        let files = TlsFiles {
            ca_file: options.tls_ca_file.clone(),
            client_cert_file: options.tls_client_cert_file.clone(),
            client_key_file: options.tls_client_key_file.clone(),
        };
        let settings =
            TlsSettings { mode: TlsMode::VerifyFull, files: files.clone(), explicit: true, local: false };
        settings.check(key, "url")?;
        let read = |field: &str, path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|e| ConfigError::new(format!("{key}.{field}"), format!("{}: {e}", path.display())))
        };
        let ca = files.ca_file.as_deref().map(|p| read("tls_ca_file", p)).transpose()?;
        let client = match (&files.client_cert_file, &files.client_key_file) {
            (Some(cert), Some(pem)) => {
                Some((read("tls_client_cert_file", cert)?, read("tls_client_key_file", pem)?))
            }
            _ => None,
        };
        Ok(Some(Tls { ca, client }))
    } else if url.starts_with("redis://") {
        let set = [&options.tls_ca_file, &options.tls_client_cert_file, &options.tls_client_key_file];
        if set.iter().any(|o| o.is_some()) {
            return Err(ConfigError::new(
                format!("{key}.tls_ca_file"),
                "TLS files need a rediss:// URL; this one is plaintext",
            ));
        }
        Ok(None)
    } else {
        Err(ConfigError::new(format!("{key}.url"), "must start with redis:// or rediss:// (TLS)"))
    }
}

/// A server's URL as connection info, refused when it holds a password.
fn address(field: &str, url: &str) -> Result<redis::ConnectionInfo, ConfigError> {
    let info = url
        .into_connection_info()
        .map_err(|e| ConfigError::new(field, format!("not a Redis URL: {:?}", e.kind())))?;
    if info.redis_settings().password().is_some() {
        return Err(ConfigError::new(
            field,
            "the URL contains a password; remove it and use password_file or password_env",
        ));
    }
    Ok(info)
}

impl RedisPlugin {
    pub fn new(ctx: ConnectionContext<'_>) -> Result<Self, ConfigError> {
        let key = format!("connections.{}", ctx.name);
        let options = parse_connection(ctx.name, ctx.options)?;
        let url = ctx.url.ok_or_else(|| {
            ConfigError::new(format!("{key}.url"), "required, e.g. \"redis://lessor_admin@127.0.0.1:6379\"")
        })?;
        let tls = tls(&key, url, &options)?;
        let scheme = &url[..url.find("://").unwrap_or(0)];
        let info = address(&format!("{key}.url"), url)?;
        let admin = info.redis_settings().username().map(str::to_string);
        let mut infos = vec![info];
        for (i, node) in options.nodes.iter().enumerate() {
            let field = format!("{key}.nodes[{i}]");
            if node.split_once("://").map(|(s, _)| s) != Some(scheme) || node.contains('#') {
                return Err(ConfigError::new(
                    field,
                    format!("{node:?}: a node is reached as url is, so it must start with {scheme}://"),
                ));
            }
            let info = address(&field, node)?;
            if info.redis_settings().username().is_some_and(|u| Some(u) != admin.as_deref()) {
                return Err(ConfigError::new(
                    field,
                    "names another user than url: every node is managed as url's admin user",
                ));
            }
            if infos.iter().any(|seen| seen.addr() == info.addr()) {
                return Err(ConfigError::new(field, format!("{} is listed twice", info.addr())));
            }
            infos.push(info);
        }
        let nodes = infos
            .into_iter()
            .map(|info| {
                let mut settings = info.redis_settings().clone();
                if let Some(admin) = &admin {
                    settings = settings.set_username(admin);
                }
                if let Some(password) = &ctx.password {
                    settings = settings.set_password(password.expose_secret());
                }
                Node::new(info.set_redis_settings(settings), tls.clone(), ctx.operation_timeout)
            })
            .collect();
        Ok(Self { connection: ctx.name.to_string(), nodes, admin })
    }

    /// Runs `step` on every node at once. `Ok` only when every node did it:
    /// a change made "on some" is a failure (and a revocation is retried).
    async fn each<'a, T, Fut>(&'a self, step: impl Fn(&'a Node) -> Fut) -> Result<Vec<T>, PluginError>
    where
        Fut: Future<Output = Result<T, PluginError>>,
    {
        join_all(self.nodes.iter().map(step)).await.into_iter().collect()
    }

    /// Ends `username`'s sessions on `node` and deletes it there; a user
    /// that is not there counts as done.
    async fn remove(&self, node: &Node, username: &str, cx: &Context<'_>) -> Result<(), PluginError> {
        let mut conn = node.admin(cx).await?;
        let redactor = Redactor::default();
        kill_sessions(node, &mut conn, username, cx).await?;
        let deleted: i64 = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(username)
            .query_async(&mut conn)
            .await
            .map_err(|e| node.error(&e, &cx.step("ACL DELUSER", false), &redactor))?;
        debug!(connection = %self.connection, node = %node.address, username, deleted, "revoked");
        if deleted > 0 {
            node.save(&mut conn, &self.connection).await;
        }
        Ok(())
    }

    /// Changes the passwords of an existing user on every node with one
    /// `ACL SETUSER` (`rules`: `resetpass >new`, `>new` or `<old`);
    /// `missing_ok` when a user that is not there needs no change.
    async fn passwords(
        &self,
        username: &str,
        rules: &[String],
        cx: &Context<'_>,
        redactor: &Redactor,
        missing_ok: bool,
    ) -> Result<(), PluginError> {
        failure::check_username(username, MAX_USERNAME_LEN, b"-.", cx)?;
        self.each(|node| async move {
            let mut conn = node.admin(cx).await?;
            // ACL SETUSER would make a user that is not there.
            let user: redis::Value = redis::cmd("ACL")
                .arg("GETUSER")
                .arg(username)
                .query_async(&mut conn)
                .await
                .map_err(|e| node.error(&e, &cx.step("ACL GETUSER", false), redactor))?;
            if user == redis::Value::Nil {
                if missing_ok {
                    return Ok(());
                }
                return Err(PluginError::Rejected {
                    message: format!("{} on {}: no such user", cx.prefix(), node.address),
                });
            }
            let changed: Result<String, RedisError> =
                redis::cmd("ACL").arg("SETUSER").arg(username).arg(rules).query_async(&mut conn).await;
            match changed {
                Ok(_) => {}
                // `<old` when old is not one of its passwords: nothing to take away.
                Err(e) if missing_ok && e.to_string().contains("does not exist") => return Ok(()),
                Err(e) => return Err(node.error(&e, &cx.step("ACL SETUSER", false), redactor)),
            }
            node.save(&mut conn, &self.connection).await;
            Ok(())
        })
        .await
        .map(drop)
    }
}

/// Ends every session of `username` on `node`; "no such user" is success.
async fn kill_sessions(
    node: &Node,
    conn: &mut ConnectionManager,
    username: &str,
    cx: &Context<'_>,
) -> Result<(), PluginError> {
    let killed: Result<i64, RedisError> =
        redis::cmd("CLIENT").arg("KILL").arg("USER").arg(username).query_async(conn).await;
    match killed {
        Ok(_) => Ok(()),
        // "No such user": never made, or deleted already.
        Err(e)
            if e.kind() == ErrorKind::Server(redis::ServerErrorKind::ResponseError)
                && e.to_string().to_ascii_lowercase().contains("no such user") =>
        {
            Ok(())
        }
        Err(e) => Err(node.error(&e, &cx.step("CLIENT KILL USER", false), &Redactor::default())),
    }
}

#[async_trait]
impl Plugin for RedisPlugin {
    fn name(&self) -> &'static str {
        crate::PLUGIN_NAME
    }

    fn capabilities(&self) -> Capabilities {
        // Renewal is the lease's only: a Redis user has no expiry.
        Capabilities { renewable: true, revocable: true, max_username_len: MAX_USERNAME_LEN }
    }

    fn static_strategies(&self) -> &'static [&'static str] {
        &["single", "alternating", "dual_password"]
    }

    fn check_role(&self, role: &str, options: &toml::Table) -> Result<RoleSettings, ConfigError> {
        Ok(std::sync::Arc::new(parse_role(role, options)?))
    }

    async fn verify(&self) -> Result<(), PluginError> {
        let cx = Context::new(Operation::Verify, None);
        self.each(|node| async {
            let mut conn = node.admin(&cx).await?;
            let _: String = redis::cmd("ACL")
                .arg("WHOAMI")
                .query_async(&mut conn)
                .await
                .map_err(|e| node.error(&e, &cx, &Redactor::default()))?;
            Ok(())
        })
        .await
        .map(drop)
    }

    async fn create(&self, request: &CreateRequest<'_>) -> Result<Created, PluginError> {
        let username = request.username;
        let cx = Context::new(Operation::Create, Some(username));
        failure::check_username(username, MAX_USERNAME_LEN, b"-", &cx)?;
        let role = downcast_role::<RedisRole>(request.settings)?;
        let password = request.password.expose_secret();
        let redactor = Redactor::new([password]);
        // Nothing is granted but the role's rules; the user is on only once
        // they and its password are set, in the same command.
        let mut command = redis::cmd("ACL");
        command.arg("SETUSER").arg(username).arg("reset").arg("resetchannels").arg("-@all");
        for rule in &role.acl_rules {
            command.arg(rule);
        }
        command.arg(format!(">{password}")).arg("on");
        // On a failure on any node the broker revokes the user on every one.
        self.each(|node| async {
            let mut conn = node.admin(&cx).await?;
            let made: Result<String, RedisError> = command.query_async(&mut conn).await;
            made.map_err(|e| node.error(&e, &cx.step("ACL SETUSER", true), &redactor))?;
            node.save(&mut conn, &self.connection).await;
            Ok(())
        })
        .await?;
        Ok(Created::new(Credential::Database {
            username: username.to_string(),
            password: SecretString::from(password.to_string()),
        }))
    }

    async fn renew(&self, _lease: &LeaseRef<'_>, _expires_at: DateTime<Utc>) -> Result<(), PluginError> {
        Ok(())
    }

    async fn revoke(&self, lease: &LeaseRef<'_>) -> Result<(), PluginError> {
        let cx = Context::new(Operation::Revoke, Some(lease.username));
        failure::check_username(lease.username, MAX_USERNAME_LEN, b"-", &cx)?;
        self.each(|node| self.remove(node, lease.username, &cx)).await.map(drop)
    }

    async fn list_users(&self, prefix: &str) -> Result<Vec<BackendUser>, PluginError> {
        let cx = Context::new(Operation::ListUsers, None);
        // A user on any node is one to sweep.
        let per_node = self
            .each(|node| async {
                let mut conn = node.admin(&cx).await?;
                let users: Vec<String> = redis::cmd("ACL")
                    .arg("USERS")
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| node.error(&e, &cx, &Redactor::default()))?;
                Ok(users)
            })
            .await?;
        let users: std::collections::BTreeSet<String> = per_node
            .into_iter()
            .flatten()
            .filter(|u| u.starts_with(prefix) && Some(u) != self.admin.as_ref())
            .collect();
        Ok(users.into_iter().map(|name| BackendUser { name, created_at: None }).collect())
    }

    async fn set_password(&self, username: &str, password: &SecretString) -> Result<(), PluginError> {
        let cx = Context::new(Operation::SetPassword, Some(username));
        let secret = password.expose_secret();
        let rules = ["resetpass".to_string(), format!(">{secret}")];
        self.passwords(username, &rules, &cx, &Redactor::new([secret]), false).await
    }

    async fn add_password(&self, username: &str, password: &SecretString) -> Result<(), PluginError> {
        let cx = Context::new(Operation::AddPassword, Some(username));
        let secret = password.expose_secret();
        self.passwords(username, &[format!(">{secret}")], &cx, &Redactor::new([secret]), false).await
    }

    async fn remove_password(&self, username: &str, password: &SecretString) -> Result<(), PluginError> {
        let cx = Context::new(Operation::RemovePassword, Some(username));
        let secret = password.expose_secret();
        self.passwords(username, &[format!("<{secret}")], &cx, &Redactor::new([secret]), true).await
    }

    async fn test_login(&self, username: &str, password: &SecretString) -> Result<(), PluginError> {
        let cx = Context::new(Operation::TestLogin, Some(username));
        let redactor = Redactor::new([password.expose_secret()]);
        self.each(|node| node.test_login(username, password, &cx, &redactor)).await.map(drop)
    }

    async fn end_sessions(&self, username: &str) -> Result<(), PluginError> {
        let cx = Context::new(Operation::EndSessions, Some(username));
        failure::check_username(username, MAX_USERNAME_LEN, b"-.", &cx)?;
        self.each(|node| async {
            let mut conn = node.admin(&cx).await?;
            kill_sessions(node, &mut conn, username, &cx).await
        })
        .await
        .map(drop)
    }

    fn admin_username(&self) -> Option<String> {
        // A URL without a user logs in as Redis's `default` user.
        Some(self.admin.clone().unwrap_or_else(|| "default".to_string()))
    }

    fn use_admin_password(&self, _username: &str, password: &SecretString) -> Result<(), PluginError> {
        for node in &self.nodes {
            node.use_admin_password(password);
        }
        Ok(())
    }
}
