//! [`build`] and [`load_str`]: the config check and each component's
//! build, their errors reported together with file and key.

use std::path::Path;

use super::*;

use crate::config::tests::EXAMPLE;

fn errors_of(text: &str) -> String {
    load_str(text, "test.toml").unwrap_err().to_string()
}

#[test]
fn example_builds() {
    let setup = load_str(EXAMPLE, "test.toml").unwrap();
    let role = &setup.roles["app_ro"];
    assert_eq!(role.default_ttl.as_secs(), 3600);
    assert_eq!(setup.connections["pg_main"].plugin.name(), "postgres");
    assert!(role.username.generate("app_ro").starts_with("v_app_ro_"));
}

#[test]
fn plugin_errors_name_file_and_key() {
    let e = errors_of(&EXAMPLE.replace("plugin = \"postgres\"", "plugin = \"oracle\""));
    assert!(e.contains("test.toml: connections.pg_main.plugin: unknown plugin \"oracle\""), "{e}");

    let e = errors_of(&format!("{EXAMPLE}\nusername_template = \"{{random}}_{{role}}_and_a_very_long_fixed_part_that_leaves_no_room_at_all_for_randomness\"\n"));
    assert!(e.contains("test.toml: roles.app_ro.username_template"), "{e}");

    let e = errors_of(
        &EXAMPLE
            .replace("creation_statements = [", "revocation_statemnts = [\"x\"]\ncreation_statements = ["),
    );
    assert!(e.contains("test.toml: roles.app_ro"), "{e}");
    assert!(e.contains("revocation_statemnts"), "{e}");
}

/// A problem the config check finds and one only a plugin finds are
/// reported in one answer; an entry the check refused is not built, so its
/// problem is not reported twice.
#[test]
fn errors_of_the_check_and_the_build_come_together() {
    let text = format!(
        "{}\n[roles.second]\nconnection = \"pg_main\"\nusername_template = \"{{random}}_and_a_very_long_fixed_part_that_leaves_no_room_at_all_for_it\"\n\
         creation_statements = [\"CREATE ROLE \\\"{{{{name}}}}\\\"\"]\n",
        EXAMPLE.replace("default_ttl = \"1h\"", "default_ttl = \"48h\"")
    );
    let e = errors_of(&text);
    assert!(e.contains("test.toml: roles.app_ro.default_ttl: 2d is longer than max_ttl 1d"), "{e}");
    assert!(e.contains("test.toml: roles.second.username_template"), "{e}");
    assert_eq!(e.matches("roles.app_ro").count(), 1, "{e}");
}

/// A problem of a connection's own keys does not hide what its plugin
/// finds in a role on it.
#[test]
fn a_connection_problem_does_not_hide_its_roles_problems() {
    let text = EXAMPLE
        .replace("revocation_workers = 2", "revocation_workers = 4")
        .replace("creation_statements = [", "revocation_statemnts = [\"x\"]\ncreation_statements = [");
    let e = errors_of(&text);
    assert!(e.contains("test.toml: connections.pg_main.revocation_workers"), "{e}");
    assert!(e.contains("revocation_statemnts"), "{e}");
}

/// A role whose name is refused is still a role a policy may name: the
/// policy is not told it names nothing.
#[test]
fn a_policy_naming_a_badly_named_role_gets_no_second_error() {
    let text = format!(
        "{}\n[[policies]]\nname = \"web\"\nmatch = {{ uid = 1 }}\nallow = [\"creds:app.ro\"]\n",
        EXAMPLE.replace("[roles.app_ro]", "[roles.\"app.ro\"]")
    );
    let e = errors_of(&text);
    assert!(e.contains("test.toml: roles.app.ro: name may hold only"), "{e}");
    assert!(!e.contains("names no configured role"), "{e}");
}

/// A static account whose strategy its connection's plugin cannot carry
/// out is refused at load, naming the key and the strategies that fit,
/// rather than failing at its first rotation.
#[test]
fn a_strategy_the_plugin_cannot_carry_out_is_refused_at_load() {
    let key_dir = tempfile::tempdir().unwrap();
    let key = key_dir.path().join("seal.key");
    crate::seal::write_new_key(&key).unwrap();
    std::env::set_var("LESSOR_DAEMON_TEST_REDIS_PW", "x");
    let config = |strategy: &str| {
        format!(
            "[server]\nseal_key_file = {key:?}\n\n[connections.cache]\nplugin = \"redis\"\n\
             url = \"redis://lessor_admin@127.0.0.1:6379\"\npassword_env = \"LESSOR_DAEMON_TEST_REDIS_PW\"\n\n\
             [connections.db]\nplugin = \"postgres\"\nurl = \"postgres://lessor@127.0.0.1/app\"\n\
             password_env = \"LESSOR_DAEMON_TEST_REDIS_PW\"\n\n\
             [static_accounts.app]\nconnection = \"cache\"\nstrategy = \"{strategy}\"\nusernames = [\"app\"]\n\n\
             [static_accounts.report]\nconnection = \"db\"\nstrategy = \"dual_password\"\nusernames = [\"report\"]\n"
        )
    };
    let e = errors_of(&config("access_key"));
    assert!(
        e.contains("test.toml: static_accounts.app.strategy: access_key does not fit connection \"cache\""),
        "{e}"
    );
    assert!(e.contains("the redis plugin's strategies are single, alternating, dual_password"), "{e}");
    assert!(
        e.contains(
            "test.toml: static_accounts.report.strategy: dual_password does not fit connection \"db\""
        ),
        "{e}"
    );
    assert!(e.contains("the postgres plugin's strategies are single, alternating"), "{e}");
    let e = errors_of(&config("dual_password"));
    assert!(!e.contains("static_accounts.app"), "{e}");
}

/// Every config example in the repository parses and validates; the
/// password files they name are swapped for a temporary one, CA files for
/// `testdata/example-ca.pem`.
#[test]
fn every_example_config_validates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let password = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(password.path(), "example\n").unwrap();
    let key_dir = tempfile::tempdir().unwrap();
    let seal_key = key_dir.path().join("seal.key");
    crate::seal::write_new_key(&seal_key).unwrap();
    let example_ca = root.join("src/config/testdata/example-ca.pem");
    let mut examples = Vec::new();
    let mut dirs = vec![root.join("examples")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "toml") {
                examples.push(path);
            }
        }
    }
    assert!(examples.len() >= 2, "examples not found: {examples:?}");
    for path in examples {
        let text = std::fs::read_to_string(&path).unwrap();
        let mut value: toml::Table =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if let Some(toml::Value::Table(server)) = value.get_mut("server") {
            if let Some(file) = server.get_mut("seal_key_file") {
                *file = toml::Value::String(seal_key.display().to_string());
            }
        }
        if let Some(toml::Value::Table(connections)) = value.get_mut("connections") {
            for (_, connection) in connections.iter_mut() {
                if let Some(file) = connection.get_mut("password_file") {
                    *file = toml::Value::String(password.path().display().to_string());
                }
                // CA files point at a certificate of the repository's own.
                if let Some(file) = connection.get_mut("tls_ca_file") {
                    *file = toml::Value::String(example_ca.display().to_string());
                }
                if let Some(toml::Value::String(url)) = connection.get_mut("url") {
                    if let Some(start) = url.find("sslrootcert=") {
                        let end = url[start..].find('&').map_or(url.len(), |i| start + i);
                        url.replace_range(start..end, &format!("sslrootcert={}", example_ca.display()));
                    }
                }
            }
        }
        let text = toml::to_string(&value).unwrap();
        if let Err(e) = load_str(&text, &path.display().to_string()) {
            panic!("{e}");
        }
    }
}

#[test]
fn policies_are_checked_against_the_configured_roles_and_accounts() {
    let good = format!(
        "{EXAMPLE}\n[[policies]]\nname = \"web\"\nmatch = {{ user = \"www-data\", exe = \"/usr/bin/*\" }}\n\
         allow = [\"creds:app_*\"]\nmax_leases = 5\n\n[[policies]]\nname = \"ops\"\nmatch = {{ group = \"wheel\" }}\nallow = [\"admin\"]\n"
    );
    let setup = load_str(&good, "test.toml").unwrap();
    let names: Vec<&str> = setup.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["web", "ops"]);
    let e = errors_of(&format!(
        "{EXAMPLE}\n[[policies]]\nname = \"web\"\nmatch = {{}}\nallow = [\"creds:app_rw\", \"read:x\", \"static:billing\", \"creds:[\"]\n\n\
         [[policies]]\nname = \"web\"\nmatch = {{ uid = 1 }}\nallow = [\"admin\"]\n"
    ));
    for wanted in [
        "test.toml: policies.web.match: is empty",
        "test.toml: policies.web.allow: \"creds:app_rw\" names no configured role",
        "test.toml: policies.web.allow: unknown permission \"read:x\"",
        "test.toml: policies.web.allow: \"static:billing\" names no configured static account",
        "not a valid glob",
        "test.toml: policies.web: a second policy has this name",
    ] {
        assert!(e.contains(wanted), "missing {wanted:?} in:\n{e}");
    }
    let e = errors_of(&format!(
        "{EXAMPLE}\n[[policies]]\nname = \"w\"\nmatch = {{ user = \"a\" }}\nallow = [\"admin\"]\nwho = 1\n"
    ));
    assert!(e.contains("unknown field `who`"), "{e}");
}

#[test]
fn admins_take_uids_names_or_tables_of_match_keys() {
    let with_admins =
        |admins: &str| EXAMPLE.replacen("[server]\n", &format!("[server]\nadmins = {admins}\n"), 1);
    let setup = load_str(
        &with_admins(r#"["root", 1001, { user = "ops", cgroup = "/system.slice/*", host = true }]"#),
        "t",
    )
    .unwrap();
    let ops = crate::policy::Identity {
        uid: 1002,
        user: Some("ops".into()),
        cgroup: Some("/system.slice/deploy.service".into()),
        ..crate::policy::Identity::default()
    };
    assert!(setup.policies.caller(ops.clone()).is_admin());
    assert!(!setup.policies.caller(crate::policy::Identity { cgroup: None, ..ops }).is_admin());
    let e = errors_of(&with_admins(r#"[{ user_unit = "[" }, ""]"#));
    for wanted in ["server.admins[0].user_unit", "not a valid glob", "server.admins[1]: an empty user name"] {
        assert!(e.contains(wanted), "missing {wanted:?} in:\n{e}");
    }
}
