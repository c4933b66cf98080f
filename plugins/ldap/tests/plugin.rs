//! The plugin against a real `slapd` of each test's own (free loopback
//! ports, its own cn=config and database, stopped when the test ends),
//! with lessor's admin an ordinary entry that may write under ou=people
//! and ou=groups only, and the root DN as the test's own view of the
//! directory. Every login is checked by binding for real, with ldap3 and
//! with OpenLDAP's own `ldapwhoami`.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lessor_plugin::{
    ConfigError, ConnectionContext, CreateRequest, Created, Credential, LeaseRef, Plugin, PluginError,
    RoleSettings,
};
use secrecy::{ExposeSecret, SecretString};

#[path = "../../../tests/common/slapd.rs"]
mod slapd;
use slapd::{random, tls_dir, Slapd, ADMIN_DN, PEOPLE, READERS};

/// A role as Vault's LDAP secrets engine docs write one, placeholders in
/// Go-template form, plus lessor's `groups`.
const VAULT_ROLE: &str = r#"
creation_ldif = """
dn: cn={{.Username}},ou=people,dc=lessor,dc=test
objectClass: inetOrgPerson
objectClass: top
cn: {{.Username}}
sn: {{.RoleName}}
description: issued {{.IssueTime}}, ends {{.ExpirationTime}}
userPassword: {{.Password}}
"""
deletion_ldif = """
dn: cn={{.Username}},ou=people,dc=lessor,dc=test
changetype: delete
"""
groups = ["cn=readers,ou=groups,dc=lessor,dc=test"]
"#;

fn options(extra: &str) -> String {
    format!("bind_dn = {ADMIN_DN:?}\nuserdn = {PEOPLE:?}\n{extra}")
}

fn plugin_at(url: &str, password: &str, options: &str) -> Result<Arc<dyn Plugin>, ConfigError> {
    let options: toml::Table = options.parse().unwrap();
    lessor_ldap::factory(ConnectionContext {
        name: "dir",
        url: Some(url),
        password: Some(SecretString::from(password.to_string())),
        max_connections: 4,
        operation_timeout: Duration::from_secs(20),
        options: &options,
    })
}

/// The plugin on `server` over plain ldap:// (loopback), as lessor's admin.
fn plugin_on(server: &Slapd, extra: &str) -> Arc<dyn Plugin> {
    plugin_at(&server.url(), &server.admin_password, &options(extra)).unwrap_or_else(|e| panic!("{e}"))
}

fn role(plugin: &Arc<dyn Plugin>, text: &str) -> RoleSettings {
    plugin.check_role("app", &text.parse().unwrap()).unwrap_or_else(|e| panic!("{e}"))
}

fn lease<'a>(
    settings: Option<&'a RoleSettings>,
    username: &'a str,
    plugin_data: Option<&'a serde_json::Value>,
) -> LeaseRef<'a> {
    LeaseRef { lease_id: "app/x", role: "app", settings, username, plugin_data }
}

fn username() -> String {
    format!("v_app_{}", random(10).to_lowercase())
}

async fn create(
    plugin: &Arc<dyn Plugin>,
    settings: &RoleSettings,
    username: &str,
    password: &str,
) -> Result<Created, PluginError> {
    let password = SecretString::from(password.to_string());
    plugin
        .create(&CreateRequest {
            role: "app",
            settings,
            lease_id: "app/x",
            username,
            password: &password,
            expires_at: Utc::now() + chrono::Duration::hours(1),
        })
        .await
}

fn directory(created: &Created) -> (String, String, String) {
    match &created.credential {
        Credential::Directory { username, distinguished_name, password } => {
            (username.clone(), distinguished_name.clone(), password.expose_secret().to_string())
        }
        other => panic!("not a directory credential: {other:?}"),
    }
}

#[tokio::test]
async fn a_vault_role_issues_an_entry_that_binds_joins_its_group_and_is_revoked() {
    let server = Slapd::start().await;
    let plugin = plugin_on(&server, "");
    plugin.verify().await.expect("verify as the least-privileged admin");
    let settings = role(&plugin, VAULT_ROLE);
    let name = username();
    let password = format!("Pw-{}", random(28));
    let created = create(&plugin, &settings, &name, &password).await.expect("create");
    let (user, dn, issued_password) = directory(&created);
    assert_eq!((user.as_str(), issued_password.as_str()), (name.as_str(), password.as_str()));
    assert_eq!(dn, format!("cn={name},{PEOPLE}"));
    assert_eq!(created.plugin_data.as_ref().unwrap()["dn"], dn.as_str());

    // The server holds the hash lessor made, never the plaintext, and
    // verifies it itself.
    let stored = server.values(&dn, "userPassword").await;
    assert_eq!(stored.len(), 1);
    assert!(stored[0].starts_with("{SSHA512}"), "{}", stored[0]);
    assert!(!stored[0].contains(&password));
    assert_eq!(server.values(&dn, "sn").await, ["app"]);
    assert_eq!(server.bind_rc(&dn, &password).await, 0, "the issued entry cannot bind");
    assert_eq!(server.ldapwhoami(&dn, &password).unwrap(), format!("dn:{dn}"));
    assert_eq!(server.bind_rc(&dn, "wrong-password").await, 49);
    assert!(server.values(READERS, "member").await.contains(&dn), "not a member of the role's group");

    let listed = plugin.list_users("v_app_").await.expect("list users");
    assert_eq!(listed.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(), [name.as_str()]);
    let made = listed[0].created_at.expect("createTimestamp");
    assert!((Utc::now() - made).num_minutes().abs() < 5, "{made}");
    assert!(plugin.list_users("v_other_").await.unwrap().is_empty());

    plugin.revoke(&lease(Some(&settings), &name, created.plugin_data.as_ref())).await.expect("revoke");
    assert!(!server.exists(&dn).await, "the revoked entry is still there");
    assert_ne!(server.bind_rc(&dn, &password).await, 0, "the revoked entry still binds");
    assert!(server.ldapwhoami(&dn, &password).is_err());
    assert!(!server.values(READERS, "member").await.contains(&dn), "still a member of the group");
    assert_eq!(server.values(READERS, "member").await, [ADMIN_DN], "the group's other member was touched");

    // Again, without plugin data, and for an entry never made: done.
    plugin.revoke(&lease(Some(&settings), &name, created.plugin_data.as_ref())).await.expect("revoke again");
    plugin.revoke(&lease(Some(&settings), &name, None)).await.expect("revoke again, nothing recorded");
    plugin.revoke(&lease(None, "v_app_never", None)).await.expect("revoke of an unknown user");
    assert!(plugin.list_users("v_app_").await.unwrap().is_empty());
    plugin.renew(&lease(Some(&settings), &name, None), Utc::now()).await.expect("renew is a no-op");
}

/// The role is gone (or tidy found the user): the entry named by the
/// username under `userdn` is deleted, and its memberships under `groupdn`.
#[tokio::test]
async fn revocation_without_the_role_finds_the_entry_and_its_groups() {
    let server = Slapd::start().await;
    let plugin = plugin_on(&server, "groupdn = \"ou=groups,dc=lessor,dc=test\"");
    let settings = role(&plugin, VAULT_ROLE);
    let name = username();
    let created = create(&plugin, &settings, &name, &random(24)).await.expect("create");
    let (_, dn, _) = directory(&created);
    assert!(server.values(READERS, "member").await.contains(&dn));

    plugin.revoke(&lease(None, &name, None)).await.expect("revoke without role or plugin data");
    assert!(!server.exists(&dn).await);
    assert_eq!(server.values(READERS, "member").await, [ADMIN_DN]);
    plugin.revoke(&lease(None, &name, None)).await.expect("again");
}

/// lessor's own `{{name}}`/`{{password}}`, a second record that fails
/// (a group the admin may not write): the first record's entry is rolled
/// back with `rollback_ldif`, and the error says where it failed.
#[tokio::test]
async fn a_creation_that_fails_half_way_is_rolled_back() {
    let server = Slapd::start().await;
    let plugin = plugin_on(&server, "");
    let settings = role(
        &plugin,
        r#"
creation_ldif = """
dn: cn={{name}},ou=people,dc=lessor,dc=test
objectClass: inetOrgPerson
cn: {{name}}
sn: {{name}}
userPassword: {{password}}

dn: cn=admins,dc=lessor,dc=test
changetype: modify
add: member
member: cn={{name}},ou=people,dc=lessor,dc=test
-
"""
deletion_ldif = "dn: cn={{name}},ou=people,dc=lessor,dc=test\nchangetype: delete\n"
rollback_ldif = "dn: cn={{name}},ou=people,dc=lessor,dc=test\nchangetype: delete\n"
"#,
    );
    let name = username();
    let password = format!("Pw-{}", random(28));
    let e = create(&plugin, &settings, &name, &password).await.expect_err("a create that should fail");
    let text = e.to_string();
    assert!(
        text.contains("creation_ldif record 2 of 2") && text.contains("modify cn=admins,dc=lessor,dc=test"),
        "{text}"
    );
    assert!(!text.contains(&password), "{text}");
    assert!(!server.exists(&format!("cn={name},{PEOPLE}")).await, "the half-made entry was left behind");

    // A schema violation in the role's own LDIF is the role's fault.
    let bad = role(
        &plugin,
        r#"
creation_ldif = "dn: cn={{name}},ou=people,dc=lessor,dc=test\nobjectClass: inetOrgPerson\ncn: {{name}}\nuserPassword: {{password}}\n"
deletion_ldif = "dn: cn={{name}},ou=people,dc=lessor,dc=test\nchangetype: delete\n"
"#,
    );
    let e = create(&plugin, &bad, &username(), &password).await.expect_err("no sn: objectClassViolation");
    assert!(matches!(e, PluginError::InvalidRole { .. }), "{e}");
    assert!(e.to_string().contains("objectClassViolation"), "{e}");
    assert!(!e.to_string().contains(&password), "{e}");
}

#[tokio::test]
async fn static_accounts_get_a_hashed_password_slapd_verifies_and_a_locked_one_fails_its_test() {
    let server = Slapd::start().await;
    let plugin = plugin_on(&server, "");
    let dn = server.add_person("billing", "initial-password").await;
    let new = SecretString::from(format!("Pw-{}", random(28)));
    plugin.set_password("billing", &new).await.expect("set password");
    let stored = server.values(&dn, "userPassword").await;
    assert!(stored[0].starts_with("{SSHA512}"), "{}", stored[0]);
    assert_eq!(server.bind_rc(&dn, new.expose_secret()).await, 0, "slapd refused lessor's {{SSHA512}}");
    assert_eq!(server.bind_rc(&dn, "initial-password").await, 49, "the old password still works");
    assert_eq!(server.ldapwhoami(&dn, new.expose_secret()).unwrap(), format!("dn:{dn}"));
    // Setting it again is harmless.
    plugin.set_password("billing", &new).await.expect("set the same password again");
    plugin.test_login("billing", &new).await.expect("test login by name");
    plugin.test_login(&dn, &new).await.expect("test login by DN");
    plugin.end_sessions("billing").await.expect("end sessions is a no-op");

    let wrong = SecretString::from("wrong-password".to_string());
    let e = plugin.test_login("billing", &wrong).await.expect_err("a wrong password logged in");
    assert!(matches!(e, PluginError::Rejected { .. }) && e.to_string().contains("invalidCredentials"), "{e}");
    assert!(!e.to_string().contains("wrong-password"), "{e}");
    let empty = SecretString::from(String::new());
    plugin.test_login("billing", &empty).await.expect_err("an empty password is an anonymous bind");

    server.lock(&dn).await;
    let e = plugin.test_login("billing", &new).await.expect_err("a locked account logged in");
    assert!(e.to_string().contains("invalidCredentials"), "{e}");
    assert_ne!(server.bind_rc(&dn, new.expose_secret()).await, 0);

    let e = plugin.set_password("nobody", &new).await.expect_err("no such account");
    assert!(e.to_string().contains("no entry under ou=people,dc=lessor,dc=test has cn=nobody"), "{e}");
    let e = plugin.test_login("nobody", &new).await.expect_err("no such account");
    assert!(e.to_string().contains("no entry"), "{e}");
}

/// rotate-root: the admin is an ordinary entry, so lessor sets its own
/// password, tests it, and binds with it from then on.
#[tokio::test]
async fn the_admin_password_is_rotated_on_its_own_entry() {
    let server = Slapd::start().await;
    let plugin = plugin_on(&server, "");
    plugin.verify().await.unwrap();
    let admin = plugin.admin_username().expect("an admin");
    assert_eq!(admin, ADMIN_DN);
    let new = SecretString::from(format!("Pw-{}", random(28)));
    plugin.set_password(&admin, &new).await.expect("set the admin's own password");
    plugin.test_login(&admin, &new).await.expect("test the new admin password");
    plugin.use_admin_password(&admin, &new).unwrap();
    plugin.verify().await.expect("verify with the rotated password");
    let settings = role(&plugin, VAULT_ROLE);
    create(&plugin, &settings, &username(), &random(24)).await.expect("create after rotate-root");

    let stale = plugin_at(&server.url(), &server.admin_password, &options("")).unwrap();
    let e = stale.verify().await.expect_err("the old admin password still binds");
    assert!(e.to_string().contains("bind as cn=lessor,dc=lessor,dc=test: invalidCredentials"), "{e}");
    assert!(!e.to_string().contains(&server.admin_password), "{e}");
}

#[tokio::test]
async fn argon2_passwords_when_slapd_has_the_module() {
    let server = Slapd::start().await;
    if !server.argon2 {
        eprintln!(
            "slapd has no argon2 module (/usr/lib/ldap/argon2.so): {{ARGON2}} not tested against a server"
        );
        return;
    }
    let plugin = plugin_on(&server, "password_hash = \"argon2\"");
    let settings = role(&plugin, VAULT_ROLE);
    let password = format!("Pw-{}", random(28));
    let created = create(&plugin, &settings, &username(), &password).await.expect("create");
    let (_, dn, _) = directory(&created);
    let stored = server.values(&dn, "userPassword").await;
    assert!(stored[0].starts_with("{ARGON2}$argon2id$"), "{}", stored[0]);
    assert_eq!(server.bind_rc(&dn, &password).await, 0, "slapd refused lessor's {{ARGON2}}");
    assert_eq!(server.ldapwhoami(&dn, &password).unwrap(), format!("dn:{dn}"));

    let static_dn = server.add_person("reports", "initial").await;
    let new = SecretString::from(format!("Pw-{}", random(28)));
    plugin.set_password("reports", &new).await.unwrap();
    assert!(server.values(&static_dn, "userPassword").await[0].starts_with("{ARGON2}"));
    plugin.test_login("reports", &new).await.expect("an argon2 login");
}

/// ldaps:// and StartTLS against the test CA, with the host name checked;
/// another CA or a name the certificate lacks is refused.
#[tokio::test]
async fn over_tls_and_starttls_the_certificate_and_host_name_are_checked() {
    let server = Slapd::start().await;
    let dir = tls_dir();
    let ca = format!("tls_ca_file = {:?}", dir.join("ca.pem").display().to_string());
    let ldaps = plugin_at(&server.ldaps_url(), &server.admin_password, &options(&ca)).unwrap();
    ldaps.verify().await.expect("verify over ldaps://");
    let settings = role(&ldaps, VAULT_ROLE);
    let password = random(24);
    let created = create(&ldaps, &settings, &username(), &password).await.expect("create over ldaps://");
    let (name, dn, _) = directory(&created);
    assert_eq!(server.bind_rc(&dn, &password).await, 0);
    ldaps.test_login(&name, &SecretString::from(password.clone())).await.expect("test login over ldaps://");
    ldaps.revoke(&lease(Some(&settings), &name, created.plugin_data.as_ref())).await.unwrap();
    assert!(!server.exists(&dn).await);

    let starttls =
        plugin_at(&server.url(), &server.admin_password, &options(&format!("{ca}\nstarttls = true")))
            .unwrap();
    starttls.verify().await.expect("verify with StartTLS");
    let created = create(&starttls, &settings, &username(), &password).await.expect("create with StartTLS");
    assert_eq!(server.bind_rc(&directory(&created).1, &password).await, 0);

    let other = format!("tls_ca_file = {:?}", dir.join("other-ca.pem").display().to_string());
    for (url, extra) in
        [(server.ldaps_url(), other.clone()), (server.url(), format!("{other}\nstarttls = true"))]
    {
        let stranger = plugin_at(&url, &server.admin_password, &options(&extra)).unwrap();
        let e = stranger.verify().await.expect_err("a server the CA did not sign was trusted");
        assert!(e.to_string().contains("not issued by a trusted CA"), "{url}: {e}");
        assert!(!e.is_retryable(), "{e}");
        assert!(!e.to_string().contains(&server.admin_password), "{e}");
    }
    let wrong_name = format!("ldaps://127.0.0.2:{}", server.tls_port);
    let e = plugin_at(&wrong_name, &server.admin_password, &options(&ca)).unwrap().verify().await;
    assert!(e.expect_err("a name the certificate lacks").to_string().contains("name mismatch"));
}

#[tokio::test]
async fn bad_config_is_refused_at_load_naming_the_key() {
    let options = format!("bind_dn = {ADMIN_DN:?}\nuserdn = {PEOPLE:?}\n");
    let e = plugin_at("ldap://ldap.example.com", "pw", &options).unwrap_err();
    assert_eq!(e.key, "connections.dir.url");
    assert!(e.message.contains("not loopback"), "{e}");
    let e = plugin_at("ldap://127.0.0.1:389", "pw", &format!("{options}schema = \"ad\"")).unwrap_err();
    assert_eq!(e.key, "connections.dir.url");
    assert!(e.message.contains("needs TLS"), "{e}");
    let e = plugin_at("ldaps://127.0.0.1", "pw", &format!("{options}tls_ca_file = \"/nonexistent.pem\""))
        .unwrap_err();
    assert_eq!(e.key, "connections.dir.tls_ca_file");

    let plugin = plugin_at("ldap://127.0.0.1:389", "pw", &options).unwrap();
    let e = plugin
        .check_role("app", &"creation_ldif = \"dn: cn={{.Username}},dc=x\\nchangetype: add\\nuserPassword:: {{.Password | base64}}\\n\"\ndeletion_ldif = \"dn: cn={{.Username}},dc=x\\nchangetype: delete\\n\"".parse().unwrap())
        .unwrap_err();
    assert_eq!(e.key, "roles.app.creation_ldif");
    let e = plugin
        .check_role("app", &"creation_ldif = \"dn: cn={{.Username}},dc=x\\nobjectClass: person\\n\"\ndeletion_ldif = \"dn: cn={{.Username}},dc=x\\nchangetype: modrdn\\n\"".parse().unwrap())
        .unwrap_err();
    assert_eq!(e.key, "roles.app.deletion_ldif");
    assert!(e.message.contains("modrdn is not supported"), "{e}");

    // An unreachable server is retryable.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let gone = plugin_at(&format!("ldap://127.0.0.1:{port}"), "pw", &options).unwrap();
    let e = gone.verify().await.expect_err("nothing listens there");
    assert!(e.is_retryable(), "{e}");
}

/// A server that takes the connection and never answers: the operation
/// ends at `operation_timeout`, as retryable.
#[tokio::test]
async fn a_server_that_never_answers_times_out_as_retryable() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ldap://127.0.0.1:{}", silent.local_addr().unwrap().port());
    let options: toml::Table = options("").parse().unwrap();
    let plugin = lessor_ldap::factory(ConnectionContext {
        name: "dir",
        url: Some(&url),
        password: Some(SecretString::from("pw".to_string())),
        max_connections: 1,
        operation_timeout: Duration::from_millis(500),
        options: &options,
    })
    .unwrap();
    let started = std::time::Instant::now();
    let e = plugin.verify().await.expect_err("a silent server verified");
    assert!(e.is_retryable(), "{e}");
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
}

/// The example of the manual's LDAP chapter, as an operator writes it:
/// the plugin's keys of the connection and the role load (the broker's
/// own keys are the broker's to read).
#[tokio::test]
async fn the_readme_example_loads() {
    let example = r#"
[connections.directory]
plugin = "ldap"
url = "ldaps://ldap.example.com"
password_file = "/etc/lessor/ldap_admin.pw"
bind_dn = "cn=lessor,ou=services,dc=example,dc=com"
userdn = "ou=people,dc=example,dc=com"
groupdn = "ou=groups,dc=example,dc=com"
tls_ca_file = "/etc/lessor/ldap-ca.pem"

[roles.ldap_reader]
connection = "directory"
default_ttl = "1h"
max_ttl = "8h"
creation_ldif = """
dn: cn={{.Username}},ou=people,dc=example,dc=com
objectClass: inetOrgPerson
cn: {{.Username}}
sn: {{.Username}}
userPassword: {{.Password}}
"""
deletion_ldif = """
dn: cn={{.Username}},ou=people,dc=example,dc=com
changetype: delete
"""
groups = ["cn=readers,ou=groups,dc=example,dc=com"]

[static_accounts.reporting]
connection = "directory"
strategy = "single"
usernames = ["reporting"]
rotation_period = "24h"
"#
    .replace("/etc/lessor/ldap-ca.pem", &tls_dir().join("ca.pem").display().to_string());
    let config: toml::Table = example.parse().unwrap();
    let mut connection = config["connections"]["directory"].as_table().unwrap().clone();
    let url = connection.remove("url").unwrap();
    for broker in ["plugin", "password_file"] {
        connection.remove(broker);
    }
    let plugin = lessor_ldap::factory(ConnectionContext {
        name: "directory",
        url: url.as_str(),
        password: Some(SecretString::from("pw".to_string())),
        max_connections: 4,
        operation_timeout: Duration::from_secs(10),
        options: &connection,
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let mut role = config["roles"]["ldap_reader"].as_table().unwrap().clone();
    for broker in ["connection", "default_ttl", "max_ttl"] {
        role.remove(broker);
    }
    plugin.check_role("ldap_reader", &role).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plugin.admin_username().as_deref(), Some("cn=lessor,ou=services,dc=example,dc=com"));
}
