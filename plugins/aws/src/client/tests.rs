use super::*;
use crate::sts::sts_duration;
use chrono::TimeZone;
use lessor_plugin::ConnectionContext;

fn plugin(secret: Option<&str>, options: &str) -> AwsPlugin {
    let options: toml::Table = options.parse().unwrap();
    AwsPlugin::new(ConnectionContext {
        name: "aws_main",
        url: None,
        password: secret.map(SecretString::from),
        max_connections: 8,
        operation_timeout: std::time::Duration::from_secs(30),
        options: &options,
    })
    .unwrap()
}

#[test]
fn sts_durations_are_clamped() {
    let now = Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap();
    let at = |s: i64| now + TimeDelta::milliseconds(s);
    assert_eq!(sts_duration(CredentialType::AssumedRole, at(60_000), now), 900);
    assert_eq!(sts_duration(CredentialType::AssumedRole, at(-5_000), now), 900);
    assert_eq!(sts_duration(CredentialType::AssumedRole, at(3_600_000), now), 3600);
    assert_eq!(sts_duration(CredentialType::AssumedRole, at(3_600_001), now), 3601);
    assert_eq!(sts_duration(CredentialType::AssumedRole, at(48 * 3_600_000), now), 12 * 3600);
    assert_eq!(sts_duration(CredentialType::SessionToken, at(48 * 3_600_000), now), 36 * 3600);
}

#[test]
fn revoke_policy_denies_older_sessions() {
    let cutoff = Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap();
    let p = revoke_policy(cutoff);
    assert_eq!(p["Statement"][0]["Effect"], "Deny");
    assert_eq!(p["Statement"][0]["Condition"]["DateLessThan"]["aws:TokenIssueTime"], "2030-01-02T03:04:05Z");
}

#[tokio::test]
async fn debug_hides_the_secret_key() {
    let p = plugin(
        Some("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        "region = \"eu-west-1\"\naccess_key_id = \"AKIAIOSFODNN7EXAMPLE\"",
    );
    let dbg = format!("{p:?} {p:#?}");
    assert!(!dbg.contains("wJalrXUtnFEMI"), "{dbg}");
    assert!(dbg.contains("AKIAIOSFODNN7EXAMPLE") && dbg.contains("eu-west-1"), "{dbg}");
    let clients = p.clients().await;
    let dbg = format!("{:?} {:?} {:?}", clients.sdk, clients.sts, clients.iam);
    assert!(!dbg.contains("wJalrXUtnFEMI"), "{dbg}");
}

#[test]
fn capabilities_per_role() {
    let p = plugin(None, "region = \"eu-west-1\"");
    assert_eq!(p.name(), "aws");
    let table = |s: &str| -> toml::Table { s.parse().unwrap() };
    let sts = p.check_role("deploy", &table("credential_type = \"session_token\"")).unwrap();
    let caps = p.role_capabilities(&sts);
    assert!(!caps.renewable && !caps.revocable);
    let user = p.check_role("batch", &table("credential_type = \"iam_user\"")).unwrap();
    let caps = p.role_capabilities(&user);
    assert!(caps.renewable && caps.revocable);
    assert_eq!(caps.max_username_len, 64);
    let e =
        p.check_ttls("deploy", &sts, Duration::from_secs(3600), Duration::from_secs(40 * 3600)).unwrap_err();
    assert_eq!(e.key, "roles.deploy.max_ttl");
}

#[test]
fn credential_type_comes_from_plugin_data_first() {
    let data = json!({"credential_type": "iam_user"});
    let p = plugin(None, "region = \"eu-west-1\"");
    let sts = p.check_role("r", &"credential_type = \"session_token\"".parse().unwrap()).unwrap();
    let lease = LeaseRef {
        lease_id: "r/x",
        role: "r",
        settings: Some(&sts),
        username: "u",
        plugin_data: Some(&data),
    };
    assert_eq!(credential_type_of(&lease).unwrap(), Some(CredentialType::IamUser));
    let lease = LeaseRef { plugin_data: None, ..lease };
    assert_eq!(credential_type_of(&lease).unwrap(), Some(CredentialType::SessionToken));
    let lease = LeaseRef { settings: None, ..lease };
    assert_eq!(credential_type_of(&lease).unwrap(), None);
}
