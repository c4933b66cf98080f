//! What a SCRAM-SHA-256 verifier costs per call: lessor's (PBKDF2 in the
//! PostgreSQL plugin, sha2 and hmac), the same PBKDF2 in aws-lc-rs (the
//! tree's TLS crypto, for comparison), and PostgreSQL's own PBKDF2, all in
//! one run.
//!
//! ```text
//! eval "$(scripts/test --env)"
//! cargo bench --bench scram -- [--n 300] [--iterations 4096]
//! ```
//!
//! PostgreSQL hashes even a verifier it is given: `CREATE ROLE` refuses an
//! empty password by checking `""` against the verifier
//! (`plain_crypt_verify`), which runs PBKDF2 with the verifier's iteration
//! count. Its cost per hash is therefore the time of N `CREATE ROLE …
//! PASSWORD '<verifier of the count>'` less that of N with a 1-iteration
//! verifier. A plaintext `PASSWORD` costs it one PBKDF2 too (to encrypt
//! it) and no check. One session, each batch in a transaction rolled back
//! (no role is left), `pg_authid` vacuumed before each; the median of five
//! rounds. `LESSOR_TEST_PG_URL` names the server (a superuser, for the
//! VACUUM); its `password_encryption` must be `scram-sha-256`.

use std::time::{Duration, Instant};

use aws_lc_rs::pbkdf2;
use tokio_postgres::NoTls;

fn arg(name: &str, default: u32) -> u32 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} takes a number")))
        .unwrap_or(default)
}

fn per_call(total: Duration, n: u32) -> f64 {
    total.as_secs_f64() * 1e6 / f64::from(n)
}

fn password(i: u32) -> String {
    format!("Bench{i:08}xY7qLm2Vn4Rt6Pw8Zs0Kd3Hf5Jg9")
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n = arg("--n", 300);
    let iterations = arg("--iterations", 4096);

    // lessor's verifier, whole (salt, PBKDF2, the two keys, base64).
    let started = Instant::now();
    for i in 0..n {
        std::hint::black_box(lessor_postgres::scram::verifier(&password(i), iterations));
    }
    let lessor_us = per_call(started.elapsed(), n);

    // aws-lc-rs's PBKDF2 alone (the bulk of a verifier).
    let count = std::num::NonZeroU32::new(iterations).expect("--iterations is at least 1");
    let started = Instant::now();
    let mut out = [0u8; 32];
    for i in 0..n {
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            count,
            b"0123456789abcdef",
            password(i).as_bytes(),
            &mut out,
        );
        std::hint::black_box(out);
    }
    let aws_lc_us = per_call(started.elapsed(), n);

    let url = std::env::var("LESSOR_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let (mut client, connection) = tokio_postgres::connect(&url, NoTls).await.expect("PostgreSQL answers");
    tokio::spawn(connection);
    let encryption = client.query_one("SHOW password_encryption", &[]).await.unwrap().get::<_, String>(0);
    assert_eq!(encryption, "scram-sha-256", "password_encryption must be scram-sha-256");
    // PostgreSQL 16+ encrypts a plaintext with `scram_iterations`; before,
    // always with 4096.
    let has_setting = client
        .query_opt("SELECT 1 FROM pg_settings WHERE name = 'scram_iterations'", &[])
        .await
        .unwrap()
        .is_some();
    if has_setting {
        client
            .batch_execute(&format!("SET scram_iterations = {iterations}"))
            .await
            .expect("SET scram_iterations");
    }
    let full: Vec<String> =
        (0..n).map(|i| lessor_postgres::scram::verifier(&password(i), iterations)).collect();
    let one: Vec<String> = (0..n).map(|i| lessor_postgres::scram::verifier(&password(i), 1)).collect();
    let (mut hashing, mut with_full, mut with_one, mut plain) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..6 {
        let full_took = create_roles(&mut client, n, Some(&full)).await;
        let one_took = create_roles(&mut client, n, Some(&one)).await;
        let plain_took = create_roles(&mut client, n, None).await;
        if round > 0 {
            hashing.push(per_call(full_took.saturating_sub(one_took), n));
            with_full.push(per_call(full_took, n));
            with_one.push(per_call(one_took, n));
            plain.push(per_call(plain_took, n));
        }
    }
    let postgres_us = median(hashing);
    println!("SCRAM-SHA-256, {iterations} iterations, {n} calls each; µs per call (PostgreSQL: median of 5 rounds)");
    println!("  lessor's verifier (sha2 + hmac, whole):           {lessor_us:9.1}");
    println!("  aws-lc-rs PBKDF2 alone:                           {aws_lc_us:9.1}");
    println!("  PostgreSQL's PBKDF2 (its empty-password check):   {postgres_us:9.1}");
    println!("  CREATE ROLE with lessor's verifier:               {:9.1}", median(with_full));
    println!("  CREATE ROLE with a 1-iteration verifier:          {:9.1}", median(with_one));
    if has_setting || iterations == 4096 {
        println!("  CREATE ROLE with the plaintext:                   {:9.1}", median(plain));
    }
    println!("  lessor's verifier / PostgreSQL's PBKDF2:          {:9.2}", lessor_us / postgres_us);
    println!("  lessor / aws-lc-rs:                               {:9.2}", lessor_us / aws_lc_us);
}

/// N `CREATE ROLE`s in one transaction, rolled back: with plaintext
/// passwords, or with the verifiers given.
async fn create_roles(client: &mut tokio_postgres::Client, n: u32, verifiers: Option<&[String]>) -> Duration {
    client.batch_execute("VACUUM pg_authid").await.expect("VACUUM pg_authid (as a superuser)");
    let tx = client.transaction().await.unwrap();
    let started = Instant::now();
    for i in 0..n {
        let secret = match verifiers {
            Some(v) => v[i as usize].clone(),
            None => password(i),
        };
        tx.batch_execute(&format!("CREATE ROLE bench_scram_{i} LOGIN PASSWORD '{secret}'")).await.unwrap();
    }
    let took = started.elapsed();
    tx.rollback().await.unwrap();
    took
}
