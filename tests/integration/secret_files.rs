//! Password files are refused when group or others can read them, as the
//! seal key is: every connection's `password_file` (PostgreSQL, MySQL,
//! AWS) and `server.store_password_file`, at `config check` and at start.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// `lessor config check FILE`: its exit code and stderr.
fn config_check(config: &Path) -> (Option<i32>, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_lessor")).args(["config", "check"]).arg(config).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Each kind of connection and the store, with its password file at
/// `PW` and the dotted key it is named by.
fn cases() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![
        (
            "postgres",
            "connections.pg.password_file",
            "[connections.pg]\nplugin = \"postgres\"\nurl = \"postgres://admin@127.0.0.1:5432/app\"\npassword_file = PW\n",
        ),
        (
            "mysql",
            "connections.my.password_file",
            "[connections.my]\nplugin = \"mysql\"\nurl = \"mysql://admin@127.0.0.1:3306/app\"\npassword_file = PW\n",
        ),
        (
            "aws",
            "connections.aws.password_file",
            "[connections.aws]\nplugin = \"aws\"\nregion = \"eu-west-1\"\naccess_key_id = \"AKIAEXAMPLEEXAMPLE12\"\npassword_file = PW\n",
        ),
        (
            "store",
            "server.store_password_file",
            "[server]\nstore = \"postgres://lessor@127.0.0.1:5432/lessor\"\nstore_password_file = PW\n",
        ),
    ]
}

#[test]
fn config_check_refuses_a_password_file_group_or_others_can_read() {
    let dir = tempfile::tempdir().unwrap();
    for (what, key, body) in cases() {
        let pw = dir.path().join(format!("{what}.pw"));
        std::fs::write(&pw, "not-printed-s3cret\n").unwrap();
        let config = dir.path().join(format!("{what}.toml"));
        std::fs::write(&config, body.replace("PW", &format!("{:?}", pw.display().to_string()))).unwrap();

        for mode in [0o644, 0o640] {
            std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(mode)).unwrap();
            let (code, stderr) = config_check(&config);
            assert_eq!(code, Some(1), "{what} {mode:o}: {stderr}");
            let expected = format!(
                "{}: {key}: {}: mode {mode:04o} lets group or others read it; chmod 600 it",
                config.display(),
                pw.display()
            );
            assert!(stderr.contains(&expected), "{what}: missing {expected:?} in:\n{stderr}");
            assert!(!stderr.contains("not-printed-s3cret"), "{what}: the password was printed:\n{stderr}");
        }

        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (code, stderr) = config_check(&config);
        assert_eq!(code, Some(0), "{what} 0600: {stderr}");
    }
}
