//! Removing users: the rollback of a creation that failed part-way, and
//! revocation by the default recipe or a role's own statements. Every
//! path is idempotent: an unknown user, a grant already gone and a
//! connection that already ended count as success.

use super::*;

impl MySqlPlugin {
    /// Undoes a creation that failed part-way, best effort: the broker
    /// revokes the username afterwards regardless.
    pub(super) async fn rollback(&self, conn: Option<Conn>, role: &MySqlRole, request: &CreateRequest<'_>) {
        let username = request.username;
        let cx = Context::new(Operation::Create, Some(username));
        let redactor = Redactor::default();
        let mut conn = match conn {
            Some(conn) => conn,
            None => match self.get(&cx, &redactor).await {
                Ok(conn) => conn,
                Err(e) => {
                    debug!(connection = %self.connection, role = request.role, username, error = %e, "rollback skipped: no connection; the broker revokes later");
                    return;
                }
            },
        };
        let result = match &role.rollback {
            Some(statements) => {
                for (i, template) in statements.iter().enumerate() {
                    let sql = template.render(&Values { name: username, password: None, expiration: None });
                    if let Err(e) = conn.query_drop(sql.expose_secret()).await {
                        let step = format!("rollback statement {} of {}", i + 1, statements.len());
                        let err = classify(&e, &cx.step(step, true), &redactor);
                        debug!(connection = %self.connection, role = request.role, username, error = %err, "rollback statement failed");
                    }
                }
                Ok(())
            }
            None => self.drop_user(&mut conn, username, &cx).await,
        };
        if let Err(e) = result {
            debug!(connection = %self.connection, role = request.role, username, error = %e, "rollback failed; the broker revokes later");
        }
    }

    /// The hosts `username` exists with, for dropping it: when they cannot
    /// be read, guessing `%` could leave the user alive on another host, so
    /// that is an error (revocation fails and is retried).
    pub(crate) async fn hosts_to_drop(
        &self,
        conn: &mut Conn,
        username: &str,
        cx: &Context<'_>,
    ) -> Result<Vec<String>, PluginError> {
        self.hosts(conn, username, cx).await?.ok_or_else(|| PluginError::Rejected {
            message: format!(
                "{}: cannot read mysql.user to find every host the user exists with; \
                 grant the admin SELECT ON mysql.user (the revocation is retried)",
                cx.prefix()
            ),
        })
    }

    /// `DROP USER IF EXISTS` for every host the user exists with.
    async fn drop_user(&self, conn: &mut Conn, username: &str, cx: &Context<'_>) -> Result<(), PluginError> {
        let hosts = self.hosts_to_drop(conn, username, cx).await?;
        if hosts.is_empty() {
            return Ok(());
        }
        let accounts: Vec<String> = hosts.iter().map(|h| account(username, h)).collect();
        match conn.query_drop(format!("DROP USER IF EXISTS {}", accounts.join(", "))).await {
            Ok(()) => Ok(()),
            Err(e) if is_already_gone(&e) => Ok(()),
            Err(e) => Err(classify(&e, &cx.step("DROP USER", false), &Redactor::default())),
        }
    }

    /// Kills every connection of `username`. "Already ended" is success.
    pub(crate) async fn kill_sessions(
        &self,
        conn: &mut Conn,
        username: &str,
        cx: &Context<'_>,
    ) -> Result<usize, PluginError> {
        let redactor = Redactor::default();
        let ids: Vec<u64> = conn
            .exec(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ? AND ID <> CONNECTION_ID()",
                (username,),
            )
            .await
            .map_err(|e| classify(&e, &cx.step("list connections", false), &redactor))?;
        let mut killed = 0;
        for id in ids {
            match conn.query_drop(format!("KILL CONNECTION {id}")).await {
                Ok(()) => killed += 1,
                Err(e) if server_code(&e) == Some(code::NO_SUCH_THREAD) => {}
                Err(e) => return Err(classify(&e, &cx.step("KILL CONNECTION", false), &redactor)),
            }
        }
        Ok(killed)
    }

    /// The default revocation recipe: lock, kill, drop, kill stragglers.
    pub(super) async fn revoke_default(
        &self,
        conn: &mut Conn,
        username: &str,
        cx: &Context<'_>,
    ) -> Result<(), PluginError> {
        let redactor = Redactor::default();
        let known_hosts = self.hosts_to_drop(conn, username, cx).await?;

        // 1. No new logins. Servers without ACCOUNT LOCK (MySQL < 5.7.6,
        // MariaDB < 10.4) answer with a syntax error: skip the step there.
        for host in &known_hosts {
            match conn.query_drop(format!("ALTER USER {} ACCOUNT LOCK", account(username, host))).await {
                Ok(()) => {}
                Err(e) if is_already_gone(&e) => {}
                Err(e) if server_code(&e) == Some(code::PARSE_ERROR) => {
                    debug!(connection = %self.connection, username, "server has no ACCOUNT LOCK; skipping the lock");
                    break;
                }
                Err(e) => return Err(classify(&e, &cx.step("ALTER USER ACCOUNT LOCK", false), &redactor)),
            }
        }

        // 2. End live sessions: DROP USER leaves them running. A failure
        // here still lets the drop run, then is reported so the broker
        // retries (and the next attempt kills again).
        let first_kill = self.kill_sessions(conn, username, cx).await;

        // 3. Drop the account for every host.
        if !known_hosts.is_empty() {
            let accounts: Vec<String> = known_hosts.iter().map(|h| account(username, h)).collect();
            match conn.query_drop(format!("DROP USER IF EXISTS {}", accounts.join(", "))).await {
                Ok(()) => {}
                Err(e) if is_already_gone(&e) => {}
                Err(e) => return Err(classify(&e, &cx.step("DROP USER", false), &redactor)),
            }
        }

        // 4. Connections that authenticated between the lock and the first
        // listing.
        let first = first_kill?;
        let second = self.kill_sessions(conn, username, cx).await?;
        debug!(operation = "revoke", connection = %self.connection, username, hosts = known_hosts.len(), killed = first + second, "dropped");
        Ok(())
    }

    pub(super) async fn revoke_custom(
        &self,
        conn: &mut Conn,
        username: &str,
        statements: &[Template],
        cx: &Context<'_>,
    ) -> Result<(), PluginError> {
        let redactor = Redactor::default();
        for (i, template) in statements.iter().enumerate() {
            let sql = template.render(&Values { name: username, password: None, expiration: None });
            match conn.query_drop(sql.expose_secret()).await {
                Ok(()) => {}
                // Unknown user, grant already gone: this step has nothing
                // left to do; the next may.
                Err(e) if is_already_gone(&e) => {
                    debug!(operation = "revoke", connection = %self.connection, username, statement = i + 1, "already gone");
                }
                Err(e) => {
                    let step = format!("revocation statement {} of {}", i + 1, statements.len());
                    return Err(classify(&e, &cx.step(step, true), &redactor));
                }
            }
        }
        Ok(())
    }
}
