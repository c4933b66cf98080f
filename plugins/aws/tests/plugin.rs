//! The plugin against a moto AWS emulator at `LESSOR_TEST_AWS_ENDPOINT`
//! (default `http://127.0.0.1:5000`, the docker-compose service), whose one
//! endpoint serves both IAM and STS.
//!
//! That server runs with authentication off (its default), so any key is
//! accepted: the tests on it prove what lessor makes and deletes, by reading
//! moto's state through the IAM and STS APIs, and work under their own
//! random user path, role and group names, so tests can share one server.
//! The STS tests prove the keys they are issued, so they start a moto server
//! of their own ([`Moto`]) and turn its authentication on, with the plugin's
//! admin a real IAM user there. That a revoked key stops working is proven
//! by the daemon's integration tests, on such a server too.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use lessor_plugin::{
    ConnectionContext, CreateRequest, Created, Credential, LeaseRef, Plugin, PluginError, RoleSettings,
};
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};

#[path = "../../../tests/common/moto.rs"]
mod moto;
use moto::*;

fn random(len: usize) -> String {
    rand::rng()
        .sample_iter(&rand::distr::Alphanumeric)
        .take(len)
        .map(|b| (b as char).to_ascii_lowercase())
        .collect()
}

/// IAM on the shared moto server (any key works there).
async fn shared_iam() -> aws_sdk_iam::Client {
    iam(&aws_endpoint(), ANY_KEY).await
}

/// An IAM user with an allow-everything policy and an access key, to be the
/// plugin's admin once `moto`'s authentication is on; and a role anyone may
/// assume. Returns the admin's key and the role's ARN.
async fn admin_and_role(moto: &Moto, role_name: &str) -> ((String, String), String) {
    let root = iam(&moto.endpoint, ANY_KEY).await;
    let key = make_admin(&root, "lessor-admin").await;
    let arn = make_named_iam_role(&root, role_name).await;
    (key, arn)
}

/// The plugin, on the shared moto server, with a static key (any key works
/// while moto's authentication is off).
fn plugin() -> Arc<dyn Plugin> {
    plugin_at(&aws_endpoint(), ANY_KEY)
}

/// The plugin on the moto server at `endpoint`, with lessor's admin key.
fn plugin_at(endpoint: &str, (access_key_id, secret): (&str, &str)) -> Arc<dyn Plugin> {
    let options: toml::Table = format!(
        "region = {:?}\nendpoint_url = {endpoint:?}\naccess_key_id = {access_key_id:?}",
        aws_region()
    )
    .parse()
    .unwrap();
    lessor_aws::factory(ConnectionContext {
        name: "aws_test",
        url: None,
        password: Some(SecretString::from(secret)),
        max_connections: 4,
        operation_timeout: std::time::Duration::from_secs(30),
        options: &options,
    })
    .expect("build the plugin")
}

fn role(plugin: &Arc<dyn Plugin>, name: &str, options: &str) -> RoleSettings {
    plugin.check_role(name, &options.parse().unwrap()).unwrap_or_else(|e| panic!("{e}"))
}

/// One issuance, as the broker would ask for it.
async fn create(
    plugin: &Arc<dyn Plugin>,
    settings: &RoleSettings,
    lease_id: &str,
    username: &str,
    ttl: Duration,
) -> Result<Created, PluginError> {
    let password = SecretString::from("unused-by-aws-0000000000000000");
    let request = CreateRequest {
        role: lease_id.split('/').next().unwrap(),
        settings,
        lease_id,
        username,
        password: &password,
        expires_at: Utc::now() + TimeDelta::from_std(ttl).unwrap(),
    };
    plugin.create(&request).await
}

fn lease<'a>(
    settings: Option<&'a RoleSettings>,
    lease_id: &'a str,
    username: &'a str,
    data: Option<&'a serde_json::Value>,
) -> LeaseRef<'a> {
    LeaseRef { lease_id, role: lease_id.split('/').next().unwrap(), settings, username, plugin_data: data }
}

fn aws_parts(created: &Created) -> (String, String, Option<String>, Option<DateTime<Utc>>) {
    match &created.credential {
        Credential::Aws { access_key_id, secret_access_key, session_token, expiration } => (
            access_key_id.clone(),
            secret_access_key.expose_secret().to_string(),
            session_token.as_ref().map(|t| t.expose_secret().to_string()),
            *expiration,
        ),
        other => panic!("not an AWS credential: {other:?}"),
    }
}

/// GetCallerIdentity with an issued key: the ARN moto says it belongs to.
async fn caller_arn(access_key_id: &str, secret: &str, token: Option<&str>) -> String {
    caller_identity(&aws_endpoint(), (access_key_id, secret), token)
        .await
        .expect("GetCallerIdentity with the issued key")
}

/// A role lessor may assume, trusting everyone (moto checks the trust
/// policy only with authentication on).
async fn make_iam_role(iam: &aws_sdk_iam::Client) -> String {
    make_named_iam_role(iam, &format!("lessor-test-{}", random(8))).await
}

async fn make_named_iam_role(iam: &aws_sdk_iam::Client, name: &str) -> String {
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"sts:AssumeRole"}]}"#;
    let role = iam
        .create_role()
        .role_name(name)
        .assume_role_policy_document(trust)
        .max_session_duration(12 * 3600)
        .send()
        .await
        .unwrap();
    role.role().unwrap().arn().to_string()
}

/// A customer-managed policy (moto does not load AWS's managed ones unless
/// told to).
async fn make_policy(iam: &aws_sdk_iam::Client, name: &str) -> String {
    iam.create_policy()
        .policy_name(name)
        .policy_document(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:Get*","Resource":"*"}]}"#,
        )
        .send()
        .await
        .unwrap()
        .policy
        .unwrap()
        .arn
        .unwrap()
}

fn assert_close(at: DateTime<Utc>, expected: DateTime<Utc>, what: &str) {
    let off = (at - expected).num_seconds().abs();
    assert!(off <= 5, "{what}: {at} is {off}s away from {expected}");
}

#[tokio::test]
async fn verify_reaches_sts() {
    plugin().verify().await.expect("verify against moto");
}

/// On a moto of our own with authentication on, the plugin signing as a
/// real IAM user: an assumed-role key answers GetCallerIdentity as exactly
/// the role's session named after the lease, and is refused with a wrong
/// secret, without its token or with a wrong one; it expires as asked, or
/// at STS's 15-minute minimum, and the lease with it; it can be neither
/// renewed nor revoked.
#[tokio::test]
async fn assumed_role_keys_work_and_expire_as_asked_or_at_fifteen_minutes() {
    let moto = Moto::start().await;
    let role_name = "lessor-test-deploy";
    let ((admin_id, admin_secret), arn) = admin_and_role(&moto, role_name).await;
    moto.enable_auth().await;
    let plugin = plugin_at(&moto.endpoint, (&admin_id, &admin_secret));
    let settings = role(
        &plugin,
        "deploy",
        &format!(
            "credential_type = \"assumed_role\"\nrole_arn = {arn:?}\npolicy_arns = [\"arn:aws:iam::aws:policy/ReadOnlyAccess\"]"
        ),
    );
    let caps = plugin.role_capabilities(&settings);
    assert!(!caps.renewable && !caps.revocable);

    let lease_id = format!("deploy/{}", random(22));
    let created =
        create(&plugin, &settings, &lease_id, "v_deploy_x", Duration::from_secs(3600)).await.unwrap();
    let (id, secret, token, expiration) = aws_parts(&created);
    let token = token.expect("a session token");
    let expiration = expiration.expect("an expiration");
    assert_close(expiration, Utc::now() + TimeDelta::hours(1), "1h assumed_role");
    assert_eq!(created.expires_at, Some(expiration), "the lease must end when the token does");
    assert_eq!(created.plugin_data.as_ref().unwrap()["access_key_id"], id.as_str());
    let session = default_session_name(&lease_id, 64);
    let expected = format!("arn:aws:sts::{ACCOUNT}:assumed-role/{role_name}/{session}");
    assert_works_only_as_issued(&moto.endpoint, (&id, &secret), Some(&token), &expected).await;

    // Under STS's minimum: raised to 15 minutes, and the lease follows.
    let created = create(&plugin, &settings, &lease_id, "v_deploy_y", Duration::from_secs(60)).await.unwrap();
    let (_, _, _, expiration) = aws_parts(&created);
    assert_close(expiration.unwrap(), Utc::now() + TimeDelta::minutes(15), "clamped assumed_role");
    assert_eq!(created.expires_at, expiration);

    // Revoking is a no-op success (AWS keeps honouring the token).
    let data = created.plugin_data.clone();
    plugin.revoke(&lease(Some(&settings), &lease_id, "v_deploy_y", data.as_ref())).await.unwrap();
    plugin.revoke(&lease(None, &lease_id, "v_deploy_y", data.as_ref())).await.unwrap();
    let e = plugin.renew(&lease(Some(&settings), &lease_id, "v_deploy_y", data.as_ref()), Utc::now()).await;
    assert!(matches!(e, Err(PluginError::Unsupported { .. })), "{e:?}");
}

/// On a moto of our own with authentication on, the plugin signing as a
/// real IAM user: federation and session tokens expire as asked (a session
/// token at least at STS's 15-minute minimum) and are the credentials STS
/// issued to that user; moto cannot check more of them (see
/// [`assert_moto_cannot_check`]).
#[tokio::test]
async fn federation_and_session_tokens_are_issued_with_their_expiry() {
    let moto = Moto::start().await;
    let ((admin_id, admin_secret), _) = admin_and_role(&moto, "lessor-test-unused").await;
    moto.enable_auth().await;
    let admin = (admin_id.as_str(), admin_secret.as_str());
    let plugin = plugin_at(&moto.endpoint, admin);
    let federation = role(
        &plugin,
        "fed",
        r#"credential_type = "federation_token"
        policy_document = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}'"#,
    );
    let lease_id = format!("fed/{}", random(22));
    let created =
        create(&plugin, &federation, &lease_id, "v_fed_x", Duration::from_secs(2 * 3600)).await.unwrap();
    let (id, secret, token, expiration) = aws_parts(&created);
    assert_close(expiration.unwrap(), Utc::now() + TimeDelta::hours(2), "federation_token");
    assert_eq!(created.expires_at, expiration);
    let name = default_session_name(&lease_id, 32);
    let on_aws = format!("arn:aws:sts::{ACCOUNT}:federated-user/{name}");
    assert_moto_cannot_check(&moto.endpoint, admin, Some(&name), (&id, &secret, token.as_deref()), &on_aws)
        .await;

    let session = role(&plugin, "sess", "credential_type = \"session_token\"");
    let lease_id = format!("sess/{}", random(22));
    let created =
        create(&plugin, &session, &lease_id, "v_sess_x", Duration::from_secs(30 * 3600)).await.unwrap();
    let (id, secret, token, expiration) = aws_parts(&created);
    assert!(token.is_some());
    assert_close(expiration.unwrap(), Utc::now() + TimeDelta::hours(30), "session_token");
    let on_aws = format!("arn:aws:iam::{ACCOUNT}:user/lessor-admin");
    assert_moto_cannot_check(&moto.endpoint, admin, None, (&id, &secret, token.as_deref()), &on_aws).await;
    let created = create(&plugin, &session, &lease_id, "v_sess_y", Duration::from_secs(1)).await.unwrap();
    assert_close(created.expires_at.unwrap(), Utc::now() + TimeDelta::minutes(15), "clamped session_token");
}

#[tokio::test]
async fn iam_user_is_made_whole_and_deleted_whole() {
    let iam = shared_iam().await;
    let tag = random(8);
    let group = format!("lessor-test-{tag}");
    iam.create_group().group_name(&group).send().await.unwrap();
    let boundary = iam
        .create_policy()
        .policy_name(format!("lessor-test-boundary-{tag}"))
        .policy_document(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#,
        )
        .send()
        .await
        .unwrap()
        .policy
        .unwrap()
        .arn
        .unwrap();
    let path = format!("/lessor-test-{tag}/");
    let managed = make_policy(&iam, &format!("lessor-test-read-{tag}")).await;
    let plugin = plugin();
    let settings = role(
        &plugin,
        "batch",
        &format!(
            r#"credential_type = "iam_user"
            user_path = "{path}"
            policy_arns = ["{managed}"]
            policy_document = '{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"sts:GetCallerIdentity","Resource":"*"}}]}}'
            iam_groups = ["{group}"]
            iam_tags = {{ team = "data" }}
            permissions_boundary_arn = "{boundary}"
            wait_until_usable = true"#
        ),
    );
    let caps = plugin.role_capabilities(&settings);
    assert!(caps.renewable && caps.revocable);

    let username = format!("v_batch_{tag}");
    let lease_id = format!("batch/{}", random(22));
    let created = create(&plugin, &settings, &lease_id, &username, Duration::from_secs(3600)).await.unwrap();
    let (id, secret, token, expiration) = aws_parts(&created);
    assert!(token.is_none() && expiration.is_none() && created.expires_at.is_none());
    assert_eq!(created.plugin_data.as_ref().unwrap()["access_key_id"], id.as_str());

    // moto's state: the user, its path, tags, boundary, policies, groups, one key.
    let user = iam.get_user().user_name(&username).send().await.unwrap().user.unwrap();
    assert_eq!(user.path(), path);
    let tags = iam.list_user_tags().user_name(&username).send().await.unwrap();
    let tags: Vec<(&str, &str)> = tags.tags().iter().map(|t| (t.key(), t.value())).collect();
    assert!(tags.contains(&("lessor-lease-id", lease_id.as_str())), "{tags:?}");
    assert!(tags.contains(&("lessor-role", "batch")) && tags.contains(&("team", "data")), "{tags:?}");
    // moto 5.2 accepts a user's permissions boundary but does not keep it
    // (GetUser never shows one); AWS would show `boundary` here.
    if let Some(set) = user.permissions_boundary().and_then(|b| b.permissions_boundary_arn()) {
        assert_eq!(set, boundary);
    }
    let inline = iam.list_user_policies().user_name(&username).send().await.unwrap();
    assert_eq!(inline.policy_names(), ["lessor"]);
    let attached = iam.list_attached_user_policies().user_name(&username).send().await.unwrap();
    let attached: Vec<_> = attached.attached_policies().iter().filter_map(|p| p.policy_arn()).collect();
    assert_eq!(attached, [managed.as_str()]);
    let groups = iam.list_groups_for_user().user_name(&username).send().await.unwrap();
    assert_eq!(groups.groups().iter().map(|g| g.group_name()).collect::<Vec<_>>(), [group.as_str()]);
    let keys = iam.list_access_keys().user_name(&username).send().await.unwrap();
    let keys: Vec<_> = keys.access_key_metadata().iter().filter_map(|k| k.access_key_id()).collect();
    assert_eq!(keys, [id.as_str()]);
    let who = caller_arn(&id, &secret, None).await;
    assert_eq!(who, format!("arn:aws:iam::{ACCOUNT}:user{path}{username}"));

    // Renew extends the lease only.
    let data = created.plugin_data.clone();
    plugin.renew(&lease(Some(&settings), &lease_id, &username, data.as_ref()), Utc::now()).await.unwrap();

    // A login profile lessor never makes is removed too.
    iam.create_login_profile().user_name(&username).password("Sup3r-Secret-Pw!").send().await.unwrap();

    plugin.revoke(&lease(Some(&settings), &lease_id, &username, data.as_ref())).await.unwrap();
    assert!(!user_exists(&iam, &username).await, "the user must be gone");
    let members = iam.get_group().group_name(&group).send().await.unwrap();
    assert!(members.users().is_empty(), "the group still lists the user");
    // Idempotent: a second revocation, with or without settings, succeeds.
    plugin.revoke(&lease(Some(&settings), &lease_id, &username, data.as_ref())).await.unwrap();
    plugin.revoke(&lease(None, &lease_id, &username, None)).await.unwrap();

    iam.delete_group().group_name(&group).send().await.unwrap();
}

#[tokio::test]
async fn revocation_finishes_a_half_deleted_user() {
    let iam = shared_iam().await;
    let tag = random(8);
    let managed = make_policy(&iam, &format!("lessor-test-half-{tag}")).await;
    let plugin = plugin();
    let settings = role(
        &plugin,
        "half",
        &format!(
            r#"credential_type = "iam_user"
            user_path = "/lessor-test-{tag}/"
            policy_arns = ["{managed}"]
            policy_document = '{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"s3:ListBucket","Resource":"*"}}]}}'"#
        ),
    );
    let username = format!("v_half_{tag}");
    let lease_id = format!("half/{}", random(22));
    let created = create(&plugin, &settings, &lease_id, &username, Duration::from_secs(3600)).await.unwrap();
    let (id, ..) = aws_parts(&created);
    // An earlier attempt got as far as deleting the key and the inline policy.
    iam.delete_access_key().user_name(&username).access_key_id(&id).send().await.unwrap();
    iam.delete_user_policy().user_name(&username).policy_name("lessor").send().await.unwrap();
    assert!(user_exists(&iam, &username).await);

    let data = created.plugin_data.clone();
    plugin.revoke(&lease(Some(&settings), &lease_id, &username, data.as_ref())).await.unwrap();
    assert!(!user_exists(&iam, &username).await);
}

#[tokio::test]
async fn failed_creation_leaves_no_user() {
    let iam = shared_iam().await;
    let tag = random(8);
    let managed = make_policy(&iam, &format!("lessor-test-broken-{tag}")).await;
    let plugin = plugin();
    // The group does not exist: AddUserToGroup fails after CreateUser and
    // AttachUserPolicy succeeded.
    let settings = role(
        &plugin,
        "broken",
        &format!(
            r#"credential_type = "iam_user"
            user_path = "/lessor-test-{tag}/"
            policy_arns = ["{managed}"]
            iam_groups = ["lessor-test-missing-{tag}"]"#
        ),
    );
    let username = format!("v_broken_{tag}");
    let lease_id = format!("broken/{}", random(22));
    let e = create(&plugin, &settings, &lease_id, &username, Duration::from_secs(3600)).await.unwrap_err();
    assert!(e.to_string().contains("AddUserToGroup"), "{e}");
    assert!(!e.is_retryable(), "{e}");
    assert!(!user_exists(&iam, &username).await, "the half-made user must be deleted");
    let users = iam.list_users().path_prefix(format!("/lessor-test-{tag}/")).send().await.unwrap();
    assert!(users.users().is_empty());
}

#[tokio::test]
async fn a_user_lessor_did_not_make_is_never_deleted() {
    let iam = shared_iam().await;
    let name = format!("v_foreign_{}", random(8));
    iam.create_user().user_name(&name).send().await.unwrap();
    let plugin = plugin();
    let settings = role(&plugin, "foreign", "credential_type = \"iam_user\"");
    let lease_id = format!("foreign/{}", random(22));
    plugin.revoke(&lease(Some(&settings), &lease_id, &name, None)).await.unwrap();
    assert!(user_exists(&iam, &name).await, "an untagged user must be left alone");
    iam.delete_user().user_name(&name).send().await.unwrap();
}

#[tokio::test]
async fn revoke_sessions_puts_a_deny_policy_on_the_role() {
    let iam = shared_iam().await;
    let arn = make_iam_role(&iam).await;
    let role_name = arn.rsplit('/').next().unwrap().to_string();
    let plugin = plugin();
    let settings =
        role(&plugin, "deploy", &format!("credential_type = \"assumed_role\"\nrole_arn = {arn:?}"));
    let before = Utc::now();
    let answer = plugin.revoke_sessions("deploy", &settings).await.unwrap();
    assert_eq!(answer["policy_name"], lessor_aws::REVOKE_POLICY_NAME);
    assert_eq!(answer["iam_role_name"], role_name.as_str());

    let policy = iam
        .get_role_policy()
        .role_name(&role_name)
        .policy_name(lessor_aws::REVOKE_POLICY_NAME)
        .send()
        .await
        .expect("the deny policy is on the role");
    let document = policy.policy_document();
    let document = percent_decode(document);
    let document: serde_json::Value = serde_json::from_str(&document).unwrap();
    let statement = &document["Statement"][0];
    assert_eq!(statement["Effect"], "Deny");
    assert_eq!(statement["Action"], serde_json::json!(["*"]));
    let cutoff = statement["Condition"]["DateLessThan"]["aws:TokenIssueTime"].as_str().unwrap();
    let cutoff: DateTime<Utc> = cutoff.parse().unwrap();
    assert!(
        cutoff >= before - TimeDelta::seconds(1) && cutoff <= Utc::now() + TimeDelta::seconds(1),
        "{cutoff}"
    );

    // Not for STS types without an IAM role.
    let session = role(&plugin, "sess", "credential_type = \"session_token\"");
    let e = plugin.revoke_sessions("sess", &session).await.unwrap_err();
    assert!(e.to_string().contains("assumed_role"), "{e}");
}

/// IAM returns policy documents URL-encoded.
fn percent_decode(text: &str) -> String {
    if !text.contains('%') {
        return text.to_string();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn list_users_finds_lessor_users_by_prefix() {
    let tag = random(8);
    let plugin = plugin();
    let settings = role(
        &plugin,
        "tidy",
        &format!("credential_type = \"iam_user\"\nuser_path = \"/lessor-test-{tag}/\""),
    );
    let username = format!("v_tidy_{tag}_1");
    let lease_id = format!("tidy/{}", random(22));
    let created = create(&plugin, &settings, &lease_id, &username, Duration::from_secs(3600)).await.unwrap();
    let users = plugin.list_users(&format!("v_tidy_{tag}_")).await.unwrap();
    assert_eq!(users.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(), [username.as_str()]);
    assert!(users[0].created_at.is_some());
    let data = created.plugin_data.clone();
    plugin.revoke(&lease(Some(&settings), &lease_id, &username, data.as_ref())).await.unwrap();
    assert!(plugin.list_users(&format!("v_tidy_{tag}_")).await.unwrap().is_empty());
}

#[tokio::test]
async fn errors_carry_no_secret() {
    // An unreachable endpoint: the error says so, and names no key.
    let options: toml::Table =
        "region = \"us-east-1\"\nendpoint_url = \"http://127.0.0.1:9\"\naccess_key_id = \"AKIAIOSFODNN7EXAMPLE\""
            .parse()
            .unwrap();
    let plugin = lessor_aws::factory(ConnectionContext {
        name: "aws_down",
        url: None,
        password: Some(SecretString::from("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")),
        max_connections: 1,
        operation_timeout: std::time::Duration::from_secs(30),
        options: &options,
    })
    .unwrap();
    let e = plugin.verify().await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(!e.to_string().contains("wJalrXUtnFEMI"), "{e}");
}

/// The parameters of the recorded requests whose `Action` is `action`.
fn sent(recorded: &[serde_json::Value], action: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    use base64::Engine as _;
    recorded
        .iter()
        .filter_map(|r| {
            let body = r["body"].as_str()?;
            let form = if r["body_encoded"] == true {
                String::from_utf8(base64::engine::general_purpose::STANDARD.decode(body).ok()?).ok()?
            } else {
                body.to_string()
            };
            let params: std::collections::BTreeMap<String, String> = form
                .split('&')
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| {
                    let decode = |t: &str| {
                        percent_encoding::percent_decode_str(&t.replace('+', " "))
                            .decode_utf8_lossy()
                            .into_owned()
                    };
                    (decode(k), decode(v))
                })
                .collect();
            (params.get("Action").map(String::as_str) == Some(action)).then_some(params)
        })
        .collect()
}

/// `permissions_boundary_arn` is sent with CreateUser. moto 5.2 accepts a
/// user's boundary but does not keep it (GetUser never shows one), so what
/// the plugin sent is read from moto's request recorder instead.
#[tokio::test]
async fn the_permissions_boundary_is_sent_with_create_user() {
    let moto = Moto::start_recording().await;
    let iam = iam(&moto.endpoint, ANY_KEY).await;
    let boundary = make_policy(&iam, "lessor-test-boundary").await;
    let plugin = plugin_at(&moto.endpoint, ANY_KEY);
    let settings = role(
        &plugin,
        "bounded",
        &format!(
            r#"credential_type = "iam_user"
            policy_arns = ["{}"]
            permissions_boundary_arn = "{boundary}""#,
            make_policy(&iam, "lessor-test-read").await
        ),
    );
    let lease_id = format!("bounded/{}", random(22));
    let username = format!("v_bounded_{}", random(8));
    create(&plugin, &settings, &lease_id, &username, Duration::from_secs(3600)).await.expect("create");
    assert!(user_exists(&iam, &username).await);

    let creates = sent(&moto.recorded().await, "CreateUser");
    assert_eq!(creates.len(), 1, "{creates:?}");
    assert_eq!(creates[0].get("UserName"), Some(&username), "{:?}", creates[0]);
    assert_eq!(creates[0].get("PermissionsBoundary"), Some(&boundary), "{:?}", creates[0]);
}
