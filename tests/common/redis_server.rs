//! A real `redis-server` of a test's own, shared by the Redis plugin's
//! tests and the daemon's (by `#[path]`): on a free loopback port, no
//! persistence, stopped when dropped, with lessor's admin an ACL user
//! holding only the commands the plugin needs and the `default` user as
//! the test's own view of the server. `LESSOR_TEST_REDIS_SERVER` names the
//! binary (`redis-server` on `PATH` otherwise; `scripts/test` installs it).
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rand::distr::{Alphanumeric, SampleString};

/// The least the plugin's admin needs.
pub const ADMIN_RULES: &str = "+acl|setuser +acl|getuser +acl|deluser +acl|users +acl|whoami +client|kill";

/// What the admin also needs on a server with an `aclfile`.
pub const ACLFILE_RULES: &str = "+config|get +acl|save";

pub struct Server {
    pub port: u16,
    child: Child,
    root_password: String,
    pub admin_password: String,
    /// The server's `aclfile`, when it was started with one.
    pub aclfile: Option<std::path::PathBuf>,
    /// Whether it speaks TLS only (on 127.0.0.1 and 127.0.0.2, with the
    /// test CA's server certificate, which names 127.0.0.1 but not .2).
    pub tls: bool,
}

/// The test CA's folder (`scripts/test` makes it).
pub fn tls_dir() -> std::path::PathBuf {
    std::env::var_os("LESSOR_TEST_TLS_DIR").map_or_else(|| "/var/tmp/lessor-test-tls".into(), Into::into)
}

impl Server {
    pub async fn start() -> Self {
        Self::start_with(false, false, None).await
    }

    /// Another plaintext server whose admin has this one's password: a
    /// second node of one connection (`nodes = [...]`).
    pub async fn another(&self) -> Self {
        Self::start_with(false, false, Some(self.admin_password.clone())).await
    }

    /// A server that speaks TLS only.
    pub async fn start_tls() -> Self {
        Self::start_with(false, true, None).await
    }

    /// A server whose users live in an `aclfile` (its users are defined
    /// there, as Redis requires), the admin also allowed to save it.
    pub async fn start_with_aclfile() -> Self {
        Self::start_with(true, false, None).await
    }

    async fn start_with(with_aclfile: bool, tls: bool, admin_password: Option<String>) -> Self {
        let program = std::env::var("LESSOR_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let root_password = random(24);
        let admin_password = admin_password.unwrap_or_else(|| random(24));
        let port_text = port.to_string();
        let mut args: Vec<String> = match tls {
            false => vec!["--port", &port_text, "--bind", "127.0.0.1"],
            true => vec!["--port", "0", "--tls-port", &port_text, "--bind", "127.0.0.1", "127.0.0.2"],
        }
        .into_iter()
        .chain(["--save", "", "--appendonly", "no"])
        .map(str::to_string)
        .collect();
        if tls {
            // The process's one rustls provider, for this helper's own clients.
            lessor_plugin::tls::provider();
            let dir = tls_dir();
            for (flag, file) in [
                ("--tls-cert-file", "server.pem"),
                ("--tls-key-file", "server.key"),
                ("--tls-ca-cert-file", "ca.pem"),
            ] {
                args.extend([flag.to_string(), dir.join(file).display().to_string()]);
            }
            args.extend(["--tls-auth-clients".to_string(), "no".to_string()]);
        }
        let admin_rules = match with_aclfile {
            true => format!("{ADMIN_RULES} {ACLFILE_RULES}"),
            false => ADMIN_RULES.to_string(),
        };
        let users = [
            format!("default on >{root_password} ~* &* +@all"),
            format!("lessor_admin on >{admin_password} {admin_rules}"),
        ];
        let aclfile =
            with_aclfile.then(|| std::env::temp_dir().join(format!("lessor-test-redis-{port}.acl")));
        match &aclfile {
            Some(file) => {
                let lines: Vec<String> = users.iter().map(|u| format!("user {u}\n")).collect();
                std::fs::write(file, lines.concat()).expect("write the aclfile");
                args.extend(["--aclfile".to_string(), file.display().to_string()]);
            }
            None => {
                for user in &users {
                    args.push("--user".into());
                    args.extend(user.split(' ').map(str::to_string));
                }
            }
        }
        let child = Command::new(&program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {program} (scripts/test installs redis-server): {e}"));
        let mut server = Self { port, child, root_password, admin_password, aclfile, tls };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if server.root().await.is_ok() {
                return server;
            }
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("redis-server exited: {status}");
            }
            assert!(tokio::time::Instant::now() < deadline, "redis-server did not answer in 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A connection as `user`.
    pub async fn login(
        &self,
        user: &str,
        password: &str,
    ) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        login_at(self.port, self.tls, user, password).await
    }

    pub async fn root(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        self.login("default", &self.root_password).await
    }

    /// Runs one command as the server's `default` (root) user.
    pub async fn as_root(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let mut root = self.root().await?;
        redis::cmd(args[0]).arg(&args[1..]).query_async(&mut root).await
    }

    pub async fn users(&self) -> Vec<String> {
        let mut root = self.root().await.unwrap();
        redis::cmd("ACL").arg("USERS").query_async(&mut root).await.unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(file) = &self.aclfile {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// A connection as `user` to the server on `port` (TLS with the test CA
/// when `tls`), once it answered a PING.
pub async fn login_at(
    port: u16,
    tls: bool,
    user: &str,
    password: &str,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let scheme = if tls { "rediss" } else { "redis" };
    let info = redis::IntoConnectionInfo::into_connection_info(format!("{scheme}://127.0.0.1:{port}"))?;
    let settings = info.redis_settings().clone().set_username(user).set_password(password);
    let info = info.set_redis_settings(settings);
    let client = match tls {
        false => redis::Client::open(info)?,
        true => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(tls_dir().join("ca.pem")).expect("the test CA")),
            },
        )?,
    };
    let mut conn = client.get_multiplexed_async_connection().await?;
    let _: String = redis::cmd("PING").query_async(&mut conn).await?;
    Ok(conn)
}

pub fn random(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::rng(), len)
}
