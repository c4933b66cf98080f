//! `GET /v1/metrics`, read with a Prometheus text parser: counters and
//! histograms move as requests are made, labels name roles, connections
//! and route templates, and none carries a username, lease id or password.

use std::time::Duration;

use prom_text_format_parser::{Metric, Scrape, Type, ValueType};

use crate::common::*;

/// One scrape, parsed.
struct Metrics(Vec<Metric>);

impl Metrics {
    async fn scrape(daemon: &Daemon) -> Self {
        let response = daemon.client().request(hyper::Method::GET, "/v1/metrics", None).await.unwrap();
        assert_eq!(response.status, 200);
        let text = response.body.as_str().expect("metrics are text").to_string();
        let scrape = Scrape::parse(&text).unwrap_or_else(|e| panic!("not Prometheus text ({e:?}):\n{text}"));
        Self(scrape.metrics)
    }

    fn metric(&self, name: &str) -> Option<&Metric> {
        self.0.iter().find(|m| m.name == name)
    }

    /// The sum of `name`'s samples of `kind` whose labels include `labels`
    /// (0 when there are none: a counter nothing moved is not rendered).
    fn sum(&self, name: &str, kind: ValueType, labels: &[(&str, &str)]) -> f64 {
        let Some(metric) = self.metric(name) else { return 0.0 };
        metric
            .samples
            .iter()
            .filter(|s| s.value.value_type == kind)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.iter().any(|l| l.key == *k && l.value == *v)))
            .map(|s| s.value.value.as_f64())
            .sum()
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.sum(name, ValueType::Sample, labels)
    }

    /// How many observations histogram `name` holds for `labels`.
    fn observed(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        if let Some(metric) = self.metric(name) {
            assert_eq!(metric.kind, Type::Histogram, "{name} is not a histogram");
        }
        self.sum(name, ValueType::Count, labels)
    }

    /// Every label value of every sample.
    fn label_values(&self) -> Vec<&str> {
        self.0
            .iter()
            .flat_map(|m| &m.samples)
            .flat_map(|s| s.labels.iter())
            .map(|l| l.value.as_str())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuance_and_revocation_move_the_metrics() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("metrics");
    db.track_prefix(&prefix);
    let body = format!("{}\n{}", pg_connection(&db, None), pg_role(&role, "1h", "2h", &[CREATE_ROLE]));
    let daemon = Daemon::start(&db, &body).await;
    let client = daemon.client();
    let by_role = [("role", role.as_str())];
    let pg = [("connection", "pg")];
    let creds_route = "/v1/creds/{role}";

    let before = Metrics::scrape(&daemon).await;
    assert_eq!(before.value("lessor_ready", &[]), 1.0);
    assert_eq!(before.value("lessor_leases_issued_total", &by_role), 0.0);

    let issued = client.creds(&role, Some("10m")).await.unwrap();
    assert_eq!(issued.status, 200, "{:?}", issued.body);
    let lease_id = issued.body["lease_id"].as_str().unwrap().to_string();
    let username = issued.body["credential"]["username"].as_str().unwrap().to_string();
    let password = issued.body["credential"]["password"].as_str().unwrap().to_string();
    let unknown = client.creds("no_such_role", None).await.unwrap();
    assert_eq!(unknown.status, 404, "{:?}", unknown.body);

    let issuing = Metrics::scrape(&daemon).await;
    assert_eq!(issuing.value("lessor_leases_issued_total", &by_role), 1.0);
    assert_eq!(issuing.observed("lessor_issue_duration_seconds", &by_role), 1.0);
    let help = issuing.metric("lessor_issue_duration_seconds").and_then(|m| m.help_desc.clone());
    assert!(help.is_some_and(|h| h.contains("Time to issue")));
    assert_eq!(issuing.value("lessor_leases", &[("role", &role), ("state", "active")]), 1.0);
    assert_eq!(issuing.value("lessor_leases", &[("role", &role), ("state", "revoked")]), 0.0);
    assert!(issuing.observed("lessor_store_commit_duration_seconds", &[]) >= 1.0);
    assert!(issuing.value("lessor_store_commits_total", &[]) >= 1.0);
    let requests = |m: &Metrics, route: &str, status: &str| {
        m.value("lessor_requests_total", &[("route", route), ("status", status)])
    };
    assert_eq!(requests(&issuing, creds_route, "200"), 1.0);
    assert_eq!(requests(&issuing, creds_route, "404"), 1.0);
    // The scrape before this one was answered, and counted, before this one rendered.
    assert!(requests(&issuing, "/v1/metrics", "200") >= 1.0);

    let revoked = client.revoke(&lease_id).await.unwrap();
    assert_eq!(revoked.status, 200, "{:?}", revoked.body);
    assert!(!db.role_exists(&username).await);
    // A lease that expires: its revocation is measured for lateness.
    let short = client.creds(&role, Some("1s")).await.unwrap();
    assert_eq!(short.status, 200, "{:?}", short.body);
    let short_user = short.body["credential"]["username"].as_str().unwrap().to_string();
    wait_for("the expired lease to be revoked", Duration::from_secs(20), || async {
        let m = Metrics::scrape(&daemon).await;
        (m.observed("lessor_revocation_lateness_seconds", &[]) >= 1.0).then_some(())
    })
    .await;
    assert!(!db.role_exists(&short_user).await);

    let after = Metrics::scrape(&daemon).await;
    assert_eq!(after.value("lessor_leases_issued_total", &by_role), 2.0);
    assert_eq!(after.value("lessor_revocation_attempts_total", &pg), 2.0);
    assert_eq!(after.value("lessor_leases_revoked_total", &pg), 2.0);
    assert_eq!(after.value("lessor_revoke_failures_total", &pg), 0.0);
    assert_eq!(after.value("lessor_leases", &[("role", &role), ("state", "revoked")]), 2.0);
    assert_eq!(after.value("lessor_leases", &[("role", &role), ("state", "active")]), 0.0);
    assert_eq!(after.value("lessor_leases_irrevocable", &[]), 0.0);
    assert_eq!(requests(&after, "/v1/leases/{*rest}", "200"), 1.0, "the revocation, by its route template");

    // No label is a username, a lease id or a password; none of them is
    // anywhere in the text.
    for scrape in [&before, &issuing, &after] {
        for value in scrape.label_values() {
            assert!(value != username && value != short_user, "a label carries a username: {value}");
            assert!(!value.contains(&lease_id) && !value.contains(&password), "a label carries {value}");
        }
    }
    let text = client.request(hyper::Method::GET, "/v1/metrics", None).await.unwrap().body;
    let text = text.as_str().unwrap();
    for secretish in [&username, &short_user, &password, &lease_id] {
        assert!(!text.contains(secretish.as_str()), "the metrics name a lease, user or password");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_revocations_are_counted_by_connection() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("metrics_fail");
    db.track_prefix(&prefix);
    let proxy = Proxy::start((db.host.clone(), db.port)).await;
    let body =
        format!("{}\n{}", pg_connection(&db, Some(proxy.port)), pg_role(&role, "1h", "2h", &[CREATE_ROLE]));
    let daemon = Daemon::start(&db, &body).await;
    let client = daemon.client();
    let pg = [("connection", "pg")];
    let issued = client.creds(&role, None).await.unwrap();
    assert_eq!(issued.status, 200, "{:?}", issued.body);
    let lease_id = issued.body["lease_id"].as_str().unwrap().to_string();
    let username = issued.body["credential"]["username"].as_str().unwrap().to_string();

    proxy.cut();
    let refused = client.revoke(&lease_id).await.unwrap();
    assert_ne!(refused.status, 200, "the backend is down: {:?}", refused.body);
    let down = Metrics::scrape(&daemon).await;
    assert!(down.value("lessor_revoke_failures_total", &pg) >= 1.0);
    assert_eq!(down.value("lessor_leases_revoked_total", &pg), 0.0);
    assert_eq!(down.value("lessor_leases", &[("role", &role), ("state", "revoking")]), 1.0);
    let status = refused.status.to_string();
    assert_eq!(
        down.value("lessor_requests_total", &[("route", "/v1/leases/{*rest}"), ("status", &status)]),
        1.0
    );

    // Back up: the retry (or a revocation by hand) gets through.
    proxy.restore();
    // The revoked counter and the leases-by-state gauge move one after the
    // other: wait for both.
    let up = wait_for("the revocation to get through", Duration::from_secs(30), || async {
        let m = Metrics::scrape(&daemon).await;
        (m.value("lessor_leases_revoked_total", &pg) == 1.0
            && m.value("lessor_leases", &[("role", &role), ("state", "revoking")]) == 0.0)
            .then_some(m)
    })
    .await;
    assert!(!db.role_exists(&username).await);
    let attempts = up.value("lessor_revocation_attempts_total", &pg);
    let failures = up.value("lessor_revoke_failures_total", &pg);
    assert_eq!(attempts, failures + 1.0, "every attempt failed but the last");
    assert_eq!(up.value("lessor_leases", &[("role", &role), ("state", "revoking")]), 0.0);
}
