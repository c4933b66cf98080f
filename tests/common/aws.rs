//! Helpers for the AWS plugin's integration tests: the moto helpers both
//! test crates share (`moto.rs`, re-exported here: the shared emulator at
//! `LESSOR_TEST_AWS_ENDPOINT`, a private moto server for a test that turns
//! authentication on, SDK clients, the checks of an issued key), IAM
//! fixtures, and the daemon with an AWS connection.
//!
//! moto accepts any key while its authentication is off (its default), so
//! the shared server stays that way; a test that must prove a key works,
//! or stopped working, starts its own server with [`Moto::start`] and turns
//! it on, with lessor's admin a real IAM user there ([`make_admin`]).

use super::Daemon;

pub use super::moto::*;

/// Names of the IAM users under `path`.
pub async fn users_under(iam: &aws_sdk_iam::Client, path: &str) -> std::collections::BTreeSet<String> {
    let users = iam
        .list_users()
        .path_prefix(path)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .expect("ListUsers");
    users.iter().map(|u| u.user_name().to_string()).collect()
}

/// An IAM role anyone may assume, for assumed_role tests; returns its ARN.
pub async fn make_iam_role(iam: &aws_sdk_iam::Client, name: &str) -> String {
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"sts:AssumeRole"}]}"#;
    let role = iam
        .create_role()
        .role_name(name)
        .assume_role_policy_document(trust)
        .max_session_duration(12 * 3600)
        .send()
        .await
        .expect("CreateRole");
    role.role().unwrap().arn().to_string()
}

/// The `[connections.aws]` section: moto at `endpoint`, lessor's key id,
/// its secret in the daemon's password file.
pub fn aws_connection(endpoint: &str, access_key_id: &str) -> String {
    format!(
        "[connections.aws]\nplugin = \"aws\"\nregion = {:?}\nendpoint_url = {endpoint:?}\naccess_key_id = {access_key_id:?}\npassword_file = \"PASSWORD_FILE\"\n",
        aws_region()
    )
}

impl Daemon {
    /// The daemon with `body` (connections and roles; `PASSWORD_FILE` is
    /// replaced by a file holding `secret`), on a temporary socket and store.
    pub async fn start_aws(secret: &str, body: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("lessor.sock");
        let password_file = dir.path().join("aws.secret");
        super::write_private(&password_file, &format!("{secret}\n"));
        let config = format!(
            "[server]\nsocket = {socket:?}\nstore = \"sqlite://{}\"\nsocket_mode = \"0600\"\nrevoked_retention = \"1h\"\n\n{}",
            dir.path().join("lessor.db").display(),
            body.replace("PASSWORD_FILE", &password_file.display().to_string()),
        );
        let config_path = dir.path().join("lessor.toml");
        std::fs::write(&config_path, config).unwrap();
        let log_path = dir.path().join("lessor.log");
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut daemon = Self { dir, config_path, socket, log_path, child: None, env, wrapper: Vec::new() };
        daemon.spawn().await;
        daemon
    }
}
