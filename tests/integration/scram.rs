//! `scram_iterations`: lessor's verifiers at the default iteration count
//! log in with every PostgreSQL client installable here, each with a SCRAM
//! implementation of its own: libpq (psql), tokio-postgres, asyncpg,
//! pgjdbc and node-postgres (`scripts/test` installs the last three).

use std::process::Command;

use crate::common::*;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run the login tests through scripts/test (or eval \"$(scripts/test --env)\")"
        )
    })
}

/// Runs a client; `Ok(stdout)` when it exits 0, else `Err(stderr)`.
fn run(command: &mut Command) -> Result<String, String> {
    // Only the program's name: the command's environment holds the password.
    let out = command.output().unwrap_or_else(|e| panic!("run {:?}: {e}", command.get_program()));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

/// `SELECT current_user` as `user` through each external client.
fn external_logins(db: &TestDb, user: &str, password: &str) -> Vec<(&'static str, Result<String, String>)> {
    let dir = tempfile::tempdir().unwrap();
    let port = db.port.to_string();
    let psql = run(Command::new("psql")
        .args(["-X", "-w", "-Atq", "-h", &db.host, "-p", &port, "-U", user, "-d", &db.database])
        .args(["-c", "SELECT current_user"])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10"));

    let asyncpg = run(Command::new(env("LESSOR_TEST_PYTHON"))
        .args([
            "-c",
            "import asyncio, os, asyncpg\n\
             async def main():\n\
             \x20   c = await asyncpg.connect(host=os.environ['H'], port=int(os.environ['P']), user=os.environ['U'],\n\
             \x20                             password=os.environ['PW'], database=os.environ['D'], ssl=False, timeout=10)\n\
             \x20   print(await c.fetchval('SELECT current_user'))\n\
             \x20   await c.close()\n\
             asyncio.run(main())",
        ])
        .envs([("H", db.host.as_str()), ("P", &port), ("U", user), ("PW", password), ("D", &db.database)]));

    let java = dir.path().join("Login.java");
    std::fs::write(
        &java,
        "import java.sql.*;\n\
         public class Login {\n\
           public static void main(String[] a) throws Exception {\n\
             String url = \"jdbc:postgresql://\" + System.getenv(\"H\") + \":\" + System.getenv(\"P\") + \"/\" + System.getenv(\"D\") + \"?sslmode=disable\";\n\
             try (Connection c = DriverManager.getConnection(url, System.getenv(\"U\"), System.getenv(\"PW\"));\n\
                  ResultSet r = c.createStatement().executeQuery(\"SELECT current_user\")) {\n\
               r.next(); System.out.println(r.getString(1));\n\
             }\n\
           }\n\
         }\n",
    )
    .unwrap();
    let pgjdbc = run(Command::new("java").arg("-cp").arg(env("LESSOR_TEST_PGJDBC_JAR")).arg(&java).envs([
        ("H", db.host.as_str()),
        ("P", &port),
        ("U", user),
        ("PW", password),
        ("D", &db.database),
    ]));

    let node = run(Command::new("node")
        .args([
            "-e",
            "const { Client } = require('pg');\n\
             const c = new Client({ host: process.env.H, port: +process.env.P, user: process.env.U,\n\
                                    password: process.env.PW, database: process.env.D, connectionTimeoutMillis: 10000 });\n\
             c.connect().then(() => c.query('SELECT current_user')).then(r => { console.log(r.rows[0].current_user); return c.end(); })\n\
              .catch(e => { console.error(e.message); process.exit(1); });",
        ])
        .env("NODE_PATH", env("LESSOR_TEST_NODE_PATH"))
        .envs([("H", db.host.as_str()), ("P", &port), ("U", user), ("PW", password), ("D", &db.database)]));

    vec![("psql (libpq)", psql), ("asyncpg", asyncpg), ("pgjdbc", pgjdbc), ("node-postgres", node)]
}

/// Issues a credential on a connection with `scram_iterations = iterations`
/// (`None`: the default) and returns the daemon, the credential and the
/// stored verifier's iteration count.
async fn issue_with(db: &TestDb, base: &str, iterations: Option<u32>) -> (Daemon, String, String, String) {
    let (role, prefix) = unique_role(base);
    db.track_prefix(&prefix);
    let mut connection = pg_connection(db, None);
    if let Some(n) = iterations {
        connection.push_str(&format!("scram_iterations = {n}\n"));
    }
    let daemon =
        Daemon::start(db, &format!("{connection}\n{}", pg_role(&role, "10m", "1h", &[CREATE_ROLE]))).await;
    let issued = daemon.client().creds(&role, None).await.unwrap();
    assert_eq!(issued.status, 200, "{:?}", issued.body);
    let username = issued.body["credential"]["username"].as_str().unwrap().to_string();
    let password = issued.body["credential"]["password"].as_str().unwrap().to_string();
    let stored = db.stored_password(&username).await;
    let count =
        stored.strip_prefix("SCRAM-SHA-256$").and_then(|r| r.split(':').next()).unwrap_or("").to_string();
    (daemon, username, password, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_scram_iterations_log_in_with_every_client() {
    let db = TestDb::create().await;
    let (_daemon, username, password, count) = issue_with(&db, "scram", None).await;
    assert_eq!(count, "4096", "the default iteration count");
    let session = db.login(&username, &password).await.expect("tokio-postgres logs in");
    let me: String = session.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
    assert_eq!(me, username);
    for (client, result) in external_logins(&db, &username, &password) {
        assert_eq!(result.as_deref(), Ok(username.as_str()), "{client} could not log in");
    }
    // The same clients refuse a wrong password, so the logins above prove it.
    for (client, result) in external_logins(&db, &username, "not-the-password") {
        assert!(result.is_err(), "{client} logged in with a wrong password");
    }
}

/// Why the default is not 1: every client here takes a 1-iteration
/// verifier but pgjdbc before 42.7.4 (ongres scram 2), which insists on 4096.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_iteration_logs_in_with_every_client_but_old_pgjdbc() {
    let db = TestDb::create().await;
    let (_daemon, username, password, count) = issue_with(&db, "scram1", Some(1)).await;
    assert_eq!(count, "1");
    db.login(&username, &password).await.expect("tokio-postgres logs in");
    for (client, result) in external_logins(&db, &username, &password) {
        match (client, result) {
            ("pgjdbc", Err(e)) => assert!(e.contains("must be >= 4096"), "pgjdbc failed otherwise: {e}"),
            (client, result) => {
                assert_eq!(result.as_deref(), Ok(username.as_str()), "{client} could not log in")
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_iterations_out_of_range_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["0", "100001"] {
        let config = dir.path().join(format!("bad-{bad}.toml"));
        std::fs::write(
            &config,
            format!(
                "[server]\nsocket = \"/tmp/x.sock\"\n\n[connections.pg]\nplugin = \"postgres\"\nurl = \"postgres://a@127.0.0.1/app\"\nscram_iterations = {bad}\n"
            ),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_lessor"))
            .args(["config", "check"])
            .arg(&config)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && said.contains("connections.pg.scram_iterations"), "{bad}: {said}");
    }
}
