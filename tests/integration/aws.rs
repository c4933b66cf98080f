//! The AWS plugin through the real daemon, against moto: STS credentials
//! with their clamped expiry, IAM users made and deleted (by revoke, by
//! expiry, half-deleted ones too), a revoked key refused by moto with its
//! authentication on, no orphaned IAM user after kill -9, the revoke-sessions
//! operator action, precise config errors, and no secret in trace logs.
//!
//! Tests on the shared moto server (authentication off) use their own
//! random user paths and role names; the ones that prove an issued key
//! works, and only as issued, start a moto server of their own with
//! authentication on.

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde_json::Value;

use crate::common::aws::*;
use crate::common::*;

fn lessor(socket: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lessor"))
        .args(args)
        .env("LESSOR_SOCKET", socket)
        .output()
        .expect("run lessor")
}

/// Parses `export NAME='value'` lines as a shell would.
fn exports(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.strip_prefix("export ")?.split_once('=')?;
            let value = value.strip_prefix('\'')?.strip_suffix('\'')?.replace("'\\''", "'");
            Some((name.to_string(), value))
        })
        .collect()
}

fn time(value: &Value) -> DateTime<Utc> {
    value.as_str().unwrap_or_else(|| panic!("not a time: {value}")).parse().unwrap()
}

fn key_of(body: &Value) -> (String, String, Option<String>) {
    let c = &body["credential"];
    (
        c["access_key_id"].as_str().unwrap().to_string(),
        c["secret_access_key"].as_str().unwrap().to_string(),
        c["session_token"].as_str().map(str::to_string),
    )
}

async fn lease_state(daemon: &Daemon, id: &str) -> String {
    let r = daemon.client().lease_get(id).await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["state"].as_str().unwrap().to_string()
}

/// STS credentials through the daemon, on a moto of our own with
/// authentication on and lessor's admin a real IAM user there: the
/// assumed-role key answers GetCallerIdentity as exactly the role's session
/// named after the lease, and is refused with a wrong secret, without its
/// token or with a wrong one; the lease ends when the token does, clamped
/// to STS's 15-minute minimum and the role's max_ttl. Federation and
/// session tokens are the ones STS issued to lessor's admin (moto cannot
/// check more of them: see [`assert_moto_cannot_check`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sts_credentials_are_expiry_only_and_clamped_to_fifteen_minutes() {
    let moto = Moto::start().await;
    let root = iam(&moto.endpoint, ANY_KEY).await;
    let (admin_id, admin_secret) = make_admin(&root, "lessor-admin").await;
    let iam_role = "lessor-it-deploy";
    let arn = make_iam_role(&root, iam_role).await;
    moto.enable_auth().await;
    let admin = (admin_id.as_str(), admin_secret.as_str());
    let (deploy, fed, sess) = ("deploy", "fed", "sess");
    let body = format!(
        "{conn}\n\
         [roles.{deploy}]\nconnection = \"aws\"\ncredential_type = \"assumed_role\"\nrole_arn = {arn:?}\ndefault_ttl = \"15m\"\nmax_ttl = \"1h\"\n\n\
         [roles.{fed}]\nconnection = \"aws\"\ncredential_type = \"federation_token\"\nmax_ttl = \"36h\"\n\
         policy_document = '{{\"Version\":\"2012-10-17\",\"Statement\":[{{\"Effect\":\"Allow\",\"Action\":\"s3:GetObject\",\"Resource\":\"*\"}}]}}'\n\n\
         [roles.{sess}]\nconnection = \"aws\"\ncredential_type = \"session_token\"\ndefault_ttl = \"20m\"\nmax_ttl = \"1h\"\n",
        conn = aws_connection(&moto.endpoint, &admin_id),
    );
    let daemon = Daemon::start_aws(&admin_secret, &body, &[]).await;
    let client = daemon.client();

    // Default TTL: 15 minutes, the lease ends when the token does.
    let issued = client.creds(deploy, None).await.unwrap();
    assert_eq!(issued.status, 200, "{:?}\n{}", issued.body, daemon.log());
    let b = &issued.body;
    assert_eq!(b["plugin"], "aws");
    assert_eq!(b["renewable"], false);
    let expiration = time(&b["credential"]["expiration"]);
    let expires_at = time(&b["expires_at"]);
    assert!((expires_at - expiration).num_milliseconds().abs() <= 1000, "{expires_at} vs {expiration}");
    let ttl = b["ttl_seconds"].as_i64().unwrap();
    assert!((895..=905).contains(&ttl), "ttl_seconds {ttl}");
    let (id, secret, token) = key_of(b);
    let token = token.expect("a session token");
    let lease_id = b["lease_id"].as_str().unwrap().to_string();
    let session = default_session_name(&lease_id, 64);
    assert_works_only_as_issued(
        &moto.endpoint,
        (&id, &secret),
        Some(&token),
        &format!("arn:aws:sts::{ACCOUNT}:assumed-role/{iam_role}/{session}"),
    )
    .await;

    // Under STS's minimum: raised to 15 minutes, as documented.
    let issued = client.creds(deploy, Some("5m")).await.unwrap();
    assert_eq!(issued.status, 200, "{:?}", issued.body);
    let ttl = issued.body["ttl_seconds"].as_i64().unwrap();
    assert!((895..=905).contains(&ttl), "a 5m request must be raised to 15m, got {ttl}s");
    // Over the role's max_ttl: refused.
    let refused = client.creds(deploy, Some("2h")).await.unwrap();
    assert_eq!(refused.status, 400, "{:?}", refused.body);
    // 45 minutes: as asked.
    let issued = client.creds(deploy, Some("45m")).await.unwrap();
    let ttl = issued.body["ttl_seconds"].as_i64().unwrap();
    assert!((2695..=2705).contains(&ttl), "{ttl}");

    // Not renewable; a revoke ends the lease and says AWS keeps the token.
    let renew = client.renew(&lease_id, Some("10m")).await.unwrap();
    assert_eq!(renew.status, 400, "{:?}", renew.body);
    let revoked = client.revoke(&lease_id).await.unwrap();
    assert_eq!(revoked.status, 200, "{:?}", revoked.body);
    assert_eq!(revoked.body["outcome"], "revoked");
    let note = revoked.body["note"].as_str().expect("a note on expiry-only credentials");
    assert!(note.contains("until it expires"), "{note}");
    assert_eq!(lease_state(&daemon, &lease_id).await, "revoked");

    // federation_token: as asked, up to 36 h; the federated user is named
    // after the lease (GetFederationToken allows 32 characters).
    let issued = client.creds(fed, Some("2h")).await.unwrap();
    assert_eq!(issued.status, 200, "{:?}\n{}", issued.body, daemon.log());
    let ttl = issued.body["ttl_seconds"].as_i64().unwrap();
    assert!((7195..=7205).contains(&ttl), "{ttl}");
    let (id, secret, token) = key_of(&issued.body);
    let name = default_session_name(issued.body["lease_id"].as_str().unwrap(), 32);
    assert_moto_cannot_check(
        &moto.endpoint,
        admin,
        Some(&name),
        (&id, &secret, token.as_deref()),
        &format!("arn:aws:sts::{ACCOUNT}:federated-user/{name}"),
    )
    .await;

    // session_token through the CLI's env format, which the SDK reads; on
    // AWS its caller is lessor's admin.
    let out = lessor(&daemon.socket, &["creds", sess, "--format", "env"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let vars = exports(&String::from_utf8(out.stdout).unwrap());
    for var in ["LESSOR_LEASE_ID", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"] {
        assert!(vars.get(var).is_some_and(|v| !v.is_empty()), "{var} missing: {:?}", vars.keys());
    }
    assert_moto_cannot_check(
        &moto.endpoint,
        admin,
        None,
        (&vars["AWS_ACCESS_KEY_ID"], &vars["AWS_SECRET_ACCESS_KEY"], Some(&vars["AWS_SESSION_TOKEN"])),
        &format!("arn:aws:iam::{ACCOUNT}:user/lessor-admin"),
    )
    .await;
    let shown = client.lease_get(&vars["LESSOR_LEASE_ID"]).await.unwrap();
    let ttl = (time(&shown.body["expires_at"]) - time(&shown.body["issued_at"])).num_seconds();
    assert!((1195..=1205).contains(&ttl), "session_token default_ttl 20m, got {ttl}s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iam_user_lives_and_dies_with_its_lease_and_moto_refuses_its_key_afterwards() {
    // A moto of our own, with authentication on: unknown and deleted keys
    // are refused, so "the key stopped working" is proven, not assumed.
    let moto = Moto::start().await;
    let root = iam(&moto.endpoint, ANY_KEY).await;
    let (admin_id, admin_secret) = make_admin(&root, "lessor-admin").await;
    root.create_group().group_name("batch").send().await.unwrap();
    let managed = root
        .create_policy()
        .policy_name("read-things")
        .policy_document(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:Get*","Resource":"*"}]}"#,
        )
        .send()
        .await
        .unwrap()
        .policy
        .unwrap()
        .arn
        .unwrap();
    moto.enable_auth().await;
    let refused =
        caller_identity(&moto.endpoint, ANY_KEY, None).await.expect_err("unknown keys are refused now");
    assert_eq!(refused.0, 403, "{refused:?}");
    assert!(refused.1.contains("InvalidClientTokenId"), "{refused:?}");
    let admin = iam(&moto.endpoint, (&admin_id, &admin_secret)).await;

    let path = "/lessor/it/";
    let body = format!(
        "{conn}\n[roles.batch]\nconnection = \"aws\"\ncredential_type = \"iam_user\"\nuser_path = {path:?}\n\
         policy_arns = [{managed:?}]\n\
         policy_document = '{{\"Version\":\"2012-10-17\",\"Statement\":[{{\"Effect\":\"Allow\",\"Action\":\"s3:ListBucket\",\"Resource\":\"*\"}}]}}'\n\
         iam_groups = [\"batch\"]\niam_tags = {{ team = \"data\" }}\nwait_until_usable = true\n\
         default_ttl = \"1h\"\nmax_ttl = \"2h\"\n",
        conn = aws_connection(&moto.endpoint, &admin_id),
    );
    let daemon = Daemon::start_aws(&admin_secret, &body, &[]).await;
    let client = daemon.client();

    // Issue through the CLI: no session token for an IAM user.
    let out = lessor(&daemon.socket, &["creds", "batch", "--format", "env"]);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), daemon.log());
    let vars = exports(&String::from_utf8(out.stdout).unwrap());
    assert!(!vars.contains_key("AWS_SESSION_TOKEN"), "{:?}", vars.keys());
    let lease_id = vars["LESSOR_LEASE_ID"].clone();
    let key = (vars["AWS_ACCESS_KEY_ID"].clone(), vars["AWS_SECRET_ACCESS_KEY"].clone());
    let lease = client.lease_get(&lease_id).await.unwrap().body;
    assert_eq!(lease["renewable"], true);
    let username = lease["username"].as_str().unwrap().to_string();

    // moto's state: the user with its path, tags, policies, group, one key.
    let user = admin.get_user().user_name(&username).send().await.unwrap().user.unwrap();
    assert_eq!(user.path(), path);
    let tags = admin.list_user_tags().user_name(&username).send().await.unwrap();
    let tags: BTreeMap<&str, &str> = tags.tags().iter().map(|t| (t.key(), t.value())).collect();
    assert_eq!(tags.get("lessor-lease-id"), Some(&lease_id.as_str()), "{tags:?}");
    assert_eq!(tags.get("lessor-role"), Some(&"batch"), "{tags:?}");
    assert_eq!(tags.get("team"), Some(&"data"), "{tags:?}");
    let inline = admin.list_user_policies().user_name(&username).send().await.unwrap();
    assert_eq!(inline.policy_names(), ["lessor"]);
    let attached = admin.list_attached_user_policies().user_name(&username).send().await.unwrap();
    assert_eq!(
        attached.attached_policies().iter().filter_map(|p| p.policy_arn()).collect::<Vec<_>>(),
        [managed.as_str()]
    );
    let groups = admin.list_groups_for_user().user_name(&username).send().await.unwrap();
    assert_eq!(groups.groups().iter().map(|g| g.group_name()).collect::<Vec<_>>(), ["batch"]);
    let keys = admin.list_access_keys().user_name(&username).send().await.unwrap();
    assert_eq!(
        keys.access_key_metadata().iter().filter_map(|k| k.access_key_id()).collect::<Vec<_>>(),
        [key.0.as_str()]
    );
    let arn = format!("arn:aws:iam::{ACCOUNT}:user{path}{username}");
    assert_works_only_as_issued(&moto.endpoint, (&key.0, &key.1), None, &arn).await;

    // Renew extends the lease.
    let renewed = client.renew(&lease_id, Some("90m")).await.unwrap();
    assert_eq!(renewed.status, 200, "{:?}", renewed.body);
    assert!(time(&renewed.body["expires_at"]) > time(&lease["expires_at"]));

    // Revoke: everything goes, and moto refuses the key.
    let revoked = client.revoke(&lease_id).await.unwrap();
    assert_eq!(revoked.status, 200, "{:?}", revoked.body);
    assert_eq!(revoked.body["outcome"], "revoked");
    assert!(revoked.body.get("note").is_none(), "an IAM user is really revoked: {:?}", revoked.body);
    assert!(!user_exists(&admin, &username).await, "GetUser must say NoSuchEntity");
    let members = admin.get_group().group_name("batch").send().await.unwrap();
    assert!(members.users().is_empty());
    let refused = caller_identity(&moto.endpoint, (&key.0, &key.1), None).await.expect_err("a revoked key");
    assert_eq!(refused.0, 403, "{refused:?}");
    assert!(refused.1.contains("InvalidClientTokenId"), "{refused:?}");

    // Expiry does the same on its own.
    let issued = client.creds("batch", Some("2s")).await.unwrap();
    assert_eq!(issued.status, 200, "{:?}", issued.body);
    let (id, secret, _) = key_of(&issued.body);
    let expiring = issued.body["lease_id"].as_str().unwrap().to_string();
    let expiring_user =
        client.lease_get(&expiring).await.unwrap().body["username"].as_str().unwrap().to_string();
    caller_identity(&moto.endpoint, (&id, &secret), None).await.expect("works before expiry");
    wait_for("the lease to expire and be revoked", Duration::from_secs(30), || async {
        (lease_state(&daemon, &expiring).await == "revoked").then_some(())
    })
    .await;
    assert!(!user_exists(&admin, &expiring_user).await);
    let refused = caller_identity(&moto.endpoint, (&id, &secret), None).await.expect_err("an expired key");
    assert_eq!(refused.0, 403, "{refused:?}");

    // A revocation that meets a half-deleted user (key and inline policy
    // already gone, user still there) finishes it.
    let issued = client.creds("batch", None).await.unwrap();
    assert_eq!(issued.status, 200, "{:?}", issued.body);
    let half = issued.body["lease_id"].as_str().unwrap().to_string();
    let half_user = client.lease_get(&half).await.unwrap().body["username"].as_str().unwrap().to_string();
    let (id, ..) = key_of(&issued.body);
    admin.delete_access_key().user_name(&half_user).access_key_id(&id).send().await.unwrap();
    admin.delete_user_policy().user_name(&half_user).policy_name("lessor").send().await.unwrap();
    let revoked = client.revoke(&half).await.unwrap();
    assert_eq!(revoked.status, 200, "{:?}", revoked.body);
    assert!(!user_exists(&admin, &half_user).await);
    assert!(users_under(&admin, path).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_iam_user_issuance_leaves_no_orphaned_user() {
    let endpoint = aws_endpoint();
    let admin = iam(&endpoint, ANY_KEY).await;
    let tag = rand_suffix(8);
    let path = format!("/lessor-crash-{tag}/");
    let group = format!("lessor-crash-{tag}");
    admin.create_group().group_name(&group).send().await.unwrap();
    let role = format!("crash_{tag}");
    let body = format!(
        "{conn}\n[roles.{role}]\nconnection = \"aws\"\ncredential_type = \"iam_user\"\nuser_path = {path:?}\n\
         iam_groups = [{group:?}]\niam_tags = {{ test = \"crash\" }}\n\
         policy_document = '{{\"Version\":\"2012-10-17\",\"Statement\":[{{\"Effect\":\"Allow\",\"Action\":\"s3:ListBucket\",\"Resource\":\"*\"}}]}}'\n\
         default_ttl = \"1h\"\nmax_ttl = \"2h\"\n",
        // A crashed run's rollbacks are looked at once more an operation
        // timeout later: short, but roomy for several IAM calls.
        conn = format!("{}operation_timeout = \"5s\"\n", aws_connection(&endpoint, ANY_KEY.0)),
    );
    let mut daemon = Daemon::start_aws(ANY_KEY.1, &body, &[]).await;
    let rounds = 6;
    let mut issued_total = 0;
    for round in 0..rounds {
        let mut burst = Vec::new();
        for _ in 0..8 {
            let client = daemon.client();
            let role = role.clone();
            burst.push(tokio::spawn(async move {
                let mut ok = 0;
                // Keep asking until the daemon dies under us.
                while let Ok(r) = client.creds(&role, None).await {
                    assert!(r.status == 200 || r.status >= 500, "{:?}", r.body);
                    ok += usize::from(r.status == 200);
                }
                ok
            }));
        }
        let wait = rand::rng().random_range(100..900);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        daemon.kill9();
        for task in burst {
            issued_total += task.await.unwrap();
        }
        daemon.spawn().await;
        let active = daemon.settled_active_usernames().await;
        let users = users_under(&admin, &path).await;
        let orphans: Vec<_> = users.difference(&active).collect();
        assert!(
            orphans.is_empty(),
            "round {round}: IAM users without an active lease: {orphans:?}\n{}",
            daemon.log()
        );
        let missing: Vec<_> = active.difference(&users).collect();
        assert!(missing.is_empty(), "round {round}: active leases without a user: {missing:?}");
    }
    assert!(issued_total > 0, "no issuance ever succeeded: {}", daemon.log());

    // Clean the shared server up: revoking every lease deletes every user.
    let r = daemon.client().revoke_prefix(&format!("{role}/"), false).await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(users_under(&admin, &path).await.is_empty());
    admin.delete_group().group_name(&group).send().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_sessions_puts_a_deny_policy_on_the_iam_role() {
    let endpoint = aws_endpoint();
    let admin = iam(&endpoint, ANY_KEY).await;
    let tag = rand_suffix(8);
    let iam_role = format!("lessor-it-leaked-{tag}");
    let arn = make_iam_role(&admin, &iam_role).await;
    let (deploy, sess) = (format!("deploy_{tag}"), format!("sess_{tag}"));
    let body = format!(
        "{conn}\n[roles.{deploy}]\nconnection = \"aws\"\ncredential_type = \"assumed_role\"\nrole_arn = {arn:?}\nmax_ttl = \"1h\"\n\n\
         [roles.{sess}]\nconnection = \"aws\"\ncredential_type = \"session_token\"\nmax_ttl = \"1h\"\n",
        conn = aws_connection(&endpoint, ANY_KEY.0),
    );
    let daemon = Daemon::start_aws(ANY_KEY.1, &body, &[]).await;
    assert_eq!(daemon.client().creds(&deploy, None).await.unwrap().status, 200);

    let before = Utc::now();
    let out = lessor(&daemon.socket, &["aws", "revoke-sessions", &deploy]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["policy_name"], "lessor-revoke-older-sessions");
    assert_eq!(answer["iam_role_name"], iam_role.as_str());

    let policy = admin
        .get_role_policy()
        .role_name(&iam_role)
        .policy_name("lessor-revoke-older-sessions")
        .send()
        .await
        .expect("the deny policy is on the IAM role");
    let document: Value = serde_json::from_str(&decode(policy.policy_document())).unwrap();
    let statement = &document["Statement"][0];
    assert_eq!(statement["Effect"], "Deny");
    assert_eq!(statement["Action"], serde_json::json!(["*"]));
    let cutoff = time(&statement["Condition"]["DateLessThan"]["aws:TokenIssueTime"]);
    assert!(
        cutoff >= before - chrono::TimeDelta::seconds(1)
            && cutoff <= Utc::now() + chrono::TimeDelta::seconds(1)
    );
    assert!(daemon.log().contains("revoked the role's older sessions"), "the action must be logged");

    // The same over the socket API; not for other credential types.
    let r = daemon.client().revoke_sessions(&deploy).await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = daemon.client().revoke_sessions(&sess).await.unwrap();
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert!(r.body["error"]["message"].as_str().unwrap().contains("assumed_role"), "{:?}", r.body);
    let r = daemon.client().revoke_sessions("no_such_role").await.unwrap();
    assert_eq!(r.status, 404, "{:?}", r.body);
}

/// IAM hands policy documents back URL-encoded.
fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text).decode_utf8_lossy().into_owned()
}

#[test]
fn bad_aws_config_gets_precise_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lessor.toml");
    std::fs::write(
        &file,
        r#"
[connections.aws]
plugin = "aws"
region = "eu-west-1"

[roles.bad_arn]
connection = "aws"
credential_type = "assumed_role"
role_arn = "arn:aws:iam::1234:role/deployer"

[roles.too_long]
connection = "aws"
credential_type = "assumed_role"
role_arn = "arn:aws:iam::123456789012:role/deployer"
max_ttl = "13h"

[roles.bad_type]
connection = "aws"
credential_type = "assume_role"

[roles.bad_policy]
connection = "aws"
credential_type = "iam_user"
policy_document = '{"Statement": [}'
"#
        .to_string()
            + &format!(
                "\n[roles.long_name]\nconnection = \"aws\"\ncredential_type = \"assumed_role\"\nrole_arn = \"arn:aws:iam::123456789012:role/{}\"\n",
                "d".repeat(65)
            ),
    )
    .unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_lessor")).args(["config", "check"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let f = file.display();
    for expected in [
        format!("{f}: roles.bad_arn.role_arn: \"arn:aws:iam::1234:role/deployer\": the account must be a 12-digit account id"),
        format!("{f}: roles.too_long.max_ttl: 13h is longer than 12h, the longest assumed_role credential AWS issues"),
        format!("{f}: roles.bad_type.credential_type: unknown credential type \"assume_role\" (valid: assumed_role, federation_token, session_token, iam_user)"),
        format!("{f}: roles.bad_policy.policy_document: not valid JSON"),
        format!("{f}: roles.long_name.role_arn: \"arn:aws:iam::123456789012:role/{}\": role name \"{}\" is 65 characters long; IAM allows at most 64", "d".repeat(65), "d".repeat(65)),
    ] {
        assert!(stderr.contains(&expected), "missing {expected:?} in:\n{stderr}");
    }
    assert_eq!(stderr.lines().count(), 5, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_hold_no_aws_secret() {
    let endpoint = aws_endpoint();
    let admin = iam(&endpoint, ANY_KEY).await;
    let tag = rand_suffix(8);
    let arn = make_iam_role(&admin, &format!("lessor-it-secret-{tag}")).await;
    let (user_role, assumed, sess) = (format!("user_{tag}"), format!("assumed_{tag}"), format!("sess_{tag}"));
    let body = format!(
        "{conn}\n[roles.{user_role}]\nconnection = \"aws\"\ncredential_type = \"iam_user\"\nuser_path = \"/lessor-secret-{tag}/\"\nwait_until_usable = true\n\n\
         [roles.{assumed}]\nconnection = \"aws\"\ncredential_type = \"assumed_role\"\nrole_arn = {arn:?}\nmax_ttl = \"1h\"\n\n\
         [roles.{sess}]\nconnection = \"aws\"\ncredential_type = \"session_token\"\nmax_ttl = \"1h\"\n",
        conn = aws_connection(&endpoint, ANY_KEY.0),
    );
    let daemon = Daemon::start_aws(ANY_KEY.1, &body, &[("LESSOR_LOG", "trace")]).await;
    let mut secrets = Vec::new();
    for role in [&user_role, &assumed, &sess] {
        let issued = daemon.client().creds(role, None).await.unwrap();
        assert_eq!(issued.status, 200, "{:?}", issued.body);
        let (_, secret, token) = key_of(&issued.body);
        secrets.push(secret);
        secrets.extend(token);
        let id = issued.body["lease_id"].as_str().unwrap();
        assert_eq!(daemon.client().revoke(id).await.unwrap().status, 200);
    }
    let log = daemon.log();
    assert!(log.contains("TRACE") || log.contains("DEBUG"), "trace logging was not on");
    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "an issued secret appears in the log");
    }
    assert!(!log.contains(ANY_KEY.1), "the admin's secret key appears in the log");
}
