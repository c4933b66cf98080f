use super::*;

fn table(src: &str) -> toml::Table {
    src.parse().unwrap()
}

fn role(src: &str) -> Result<AwsRole, ConfigError> {
    AwsRole::parse("deploy", &table(src))
}

fn err(src: &str) -> ConfigError {
    role(src).unwrap_err()
}

const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/deployer";

#[test]
fn assumed_role_parses() {
    let r = role(&format!(
        "credential_type = \"assumed_role\"\nrole_arn = \"{ROLE_ARN}\"\npolicy_arns = [\"arn:aws:iam::aws:policy/ReadOnlyAccess\"]\npolicy_document = '''{{ \"Version\": \"2012-10-17\", \"Statement\": [] }}'''"
    ))
    .unwrap();
    assert_eq!(r.credential_type, CredentialType::AssumedRole);
    assert_eq!(r.role_arn.as_ref().unwrap().name, "deployer");
    assert_eq!(r.policy_document.as_deref(), Some(r#"{"Statement":[],"Version":"2012-10-17"}"#));
    let name = r.session_name.render("deploy/AbCdEfGhIjKlMnOpQrStUv", "deploy", "v_deploy_x");
    assert_eq!(name, "lessor-deploy-AbCdEfGhIjKlMnOpQrStUv");
}

#[test]
fn errors_name_the_key() {
    let e = err("");
    assert_eq!(e.key, "roles.deploy.credential_type");
    assert!(e.message.contains("assumed_role, federation_token, session_token, iam_user"), "{e}");

    let e = err("credential_type = \"assume_role\"");
    assert_eq!(e.key, "roles.deploy.credential_type");
    assert!(e.message.contains("unknown credential type \"assume_role\""), "{e}");
    assert!(e.message.contains("assumed_role, federation_token, session_token, iam_user"), "{e}");

    let e = err("credential_type = \"assumed_role\"");
    assert_eq!(e.key, "roles.deploy.role_arn");
    assert!(e.message.contains("required"), "{e}");

    let e = err("credential_type = \"assumed_role\"\nrole_arn = \"arn:aws:iam::1234:role/x\"");
    assert_eq!(e.key, "roles.deploy.role_arn");
    assert!(e.message.contains("12-digit"), "{e}");

    let e = err(&format!(
        "credential_type = \"assumed_role\"\nrole_arn = \"{ROLE_ARN}\"\npolicy_document = \"{{nope\""
    ));
    assert_eq!(e.key, "roles.deploy.policy_document");
    assert!(e.message.contains("not valid JSON"), "{e}");

    let e = err(&format!("credential_type = \"assumed_role\"\nrole_arn = \"{ROLE_ARN}\"\npolicy_arns = [\"arn:aws:iam::aws:policy/A\", \"ReadOnly\"]"));
    assert_eq!(e.key, "roles.deploy.policy_arns");
    assert!(e.message.starts_with("entry 2:"), "{e}");

    let e = err(&format!("credential_type = \"assumed_role\"\nrole_arn = \"{ROLE_ARN}\"\nrole_arm = \"x\""));
    assert_eq!(e.key, "roles.deploy.role_arm");
    assert!(e.message.contains("unknown field"), "{e}");

    let e = err("credential_type = \"session_token\"\niam_groups = [\"g\"]");
    assert_eq!(e.key, "roles.deploy.iam_groups");
    assert!(e.message.contains("only used by credential_type iam_user"), "{e}");

    let e = err("credential_type = \"session_token\"\npolicy_document = '{\"Statement\":[]}'");
    assert_eq!(e.key, "roles.deploy.policy_document");

    let e = err("credential_type = \"federation_token\"");
    assert_eq!(e.key, "roles.deploy.policy_document");
    assert!(e.message.contains("no permissions"), "{e}");

    let e = err("credential_type = \"iam_user\"\nuser_path = \"lessor\"");
    assert_eq!(e.key, "roles.deploy.user_path");

    let e = err(&format!("credential_type = \"iam_user\"\niam_groups = [\"{}\"]", "g".repeat(129)));
    assert_eq!(e.key, "roles.deploy.iam_groups");

    let e = err("credential_type = \"iam_user\"\niam_tags = { \"lessor-lease-id\" = \"x\" }");
    assert_eq!(e.key, "roles.deploy.iam_tags");

    let e = err(
        "credential_type = \"iam_user\"\npermissions_boundary_arn = \"arn:aws:iam::123456789012:role/x\"",
    );
    assert_eq!(e.key, "roles.deploy.permissions_boundary_arn");

    let e = err("credential_type = \"federation_token\"\npolicy_arns = [\"arn:aws:iam::aws:policy/A\"]\nsession_name_template = \"x{lease}\"");
    assert_eq!(e.key, "roles.deploy.session_name_template");
    assert!(e.message.contains("unknown placeholder"), "{e}");

    let e = err("credential_type = 3");
    assert_eq!(e.key, "roles.deploy.credential_type");
}

#[test]
fn iam_user_parses_with_defaults() {
    let r = role("credential_type = \"iam_user\"").unwrap();
    assert_eq!(r.user_path, "/lessor/");
    assert!(!r.wait_until_usable && r.iam_groups.is_empty());
    let r = role(
        r#"credential_type = "iam_user"
        user_path = "/lessor/batch/"
        policy_arns = ["arn:aws:iam::aws:policy/ReadOnlyAccess"]
        policy_document = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}'
        iam_groups = ["batch"]
        iam_tags = { team = "data" }
        permissions_boundary_arn = "arn:aws:iam::123456789012:policy/boundary"
        wait_until_usable = true"#,
    )
    .unwrap();
    assert_eq!(r.iam_tags["team"], "data");
    assert!(r.wait_until_usable);
}

#[test]
fn ttl_limits_per_type() {
    let assumed = role(&format!("credential_type = \"assumed_role\"\nrole_arn = \"{ROLE_ARN}\"")).unwrap();
    let h = |n: u64| Duration::from_secs(n * 3600);
    assert!(assumed.check_ttls("deploy", h(1), h(12)).is_ok());
    let e = assumed.check_ttls("deploy", h(1), h(13)).unwrap_err();
    assert_eq!(e.key, "roles.deploy.max_ttl");
    assert_eq!(
        e.message,
        "13h is longer than 12h, the longest assumed_role credential AWS issues (max_ttl defaults to 1d: set it to 12h or less)"
    );
    let e = assumed.check_ttls("deploy", Duration::from_secs(60), Duration::from_secs(600)).unwrap_err();
    assert!(e.message.contains("shorter than 15m"), "{e}");
    assert!(assumed.check_ttls("deploy", Duration::from_secs(60), h(1)).is_ok(), "short default is raised");

    let session = role("credential_type = \"session_token\"").unwrap();
    assert!(session.check_ttls("s", h(1), h(36)).is_ok());
    assert!(session.check_ttls("s", h(1), h(37)).is_err());
    let user = role("credential_type = \"iam_user\"").unwrap();
    assert!(user.check_ttls("u", h(1), h(24 * 30)).is_ok());
}
