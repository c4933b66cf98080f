use super::*;

/// A recorder of the test's own and its handle; the caller sets it on its
/// thread with `set_default_local_recorder`.
fn local() -> (PrometheusRecorder, PrometheusHandle) {
    let recorder = recorder();
    let handle = recorder.handle();
    (recorder, handle)
}

/// The value of the one sample `series` (name and labels, as rendered).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn histograms_render_with_buckets_sum_and_count() {
    let (recorder, handle) = local();
    let text = ::metrics::with_local_recorder(&recorder, || {
        describe();
        issued("app", Duration::from_millis(30));
        issued("app", Duration::from_millis(300));
        revocation_lateness(Duration::from_millis(1800));
        handle.render()
    });
    assert!(text.contains("# TYPE lessor_issue_duration_seconds histogram\n"), "{text}");
    assert!(text.contains("# HELP lessor_issue_duration_seconds Time to issue"), "{text}");
    let bucket = |le: &str| {
        sample(&text, &format!("lessor_issue_duration_seconds_bucket{{role=\"app\",le=\"{le}\"}}"))
    };
    assert_eq!(bucket("0.025"), Some(0.0));
    assert_eq!(bucket("0.05"), Some(1.0));
    assert_eq!(bucket("0.5"), Some(2.0));
    assert_eq!(bucket("+Inf"), Some(2.0));
    assert_eq!(sample(&text, "lessor_issue_duration_seconds_count{role=\"app\"}"), Some(2.0));
    let sum = sample(&text, "lessor_issue_duration_seconds_sum{role=\"app\"}").unwrap();
    assert!((sum - 0.33).abs() < 1e-9, "{sum}");
    assert_eq!(sample(&text, "lessor_leases_issued_total{role=\"app\"}"), Some(2.0));
    // The drain target (2 s) is a bucket bound of its own.
    assert_eq!(sample(&text, "lessor_revocation_lateness_seconds_bucket{le=\"1.5\"}"), Some(0.0));
    assert_eq!(sample(&text, "lessor_revocation_lateness_seconds_bucket{le=\"2\"}"), Some(1.0));
}

#[test]
fn requests_are_labelled_by_route_template() {
    let (recorder, handle) = local();
    let text = ::metrics::with_local_recorder(&recorder, || {
        request(Some("/v1/leases/{*rest}"), 200);
        request(Some("/v1/leases/{*rest}"), 200);
        request(None, 404);
        handle.render()
    });
    assert_eq!(
        sample(&text, "lessor_requests_total{route=\"/v1/leases/{*rest}\",status=\"200\"}"),
        Some(2.0)
    );
    assert_eq!(sample(&text, "lessor_requests_total{route=\"unmatched\",status=\"404\"}"), Some(1.0));
}

/// Counts as the store would give them, for the scrape.
struct Counts(Mutex<Vec<(String, LeaseState, u64)>>);

#[async_trait::async_trait]
impl Scrape for Counts {
    async fn lease_counts(&self) -> Result<Vec<(String, LeaseState, u64)>, String> {
        Ok(self.0.lock().unwrap().clone())
    }
    fn scheduled(&self) -> usize {
        3
    }
    fn is_ready(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn lease_gauges_follow_the_counts_and_fall_to_zero() {
    let (recorder, handle) = local();
    let _local = ::metrics::set_default_local_recorder(&recorder);
    let exporter = Exporter::new(handle.clone());
    let counts = Counts(Mutex::new(vec![
        ("app".into(), LeaseState::Active, 1),
        ("app".into(), LeaseState::Pending, 1),
        ("batch".into(), LeaseState::Irrevocable, 1),
    ]));

    let text = exporter.render(&counts).await;
    let leases = |role: &str, state: &str| {
        sample(&text, &format!("lessor_leases{{role=\"{role}\",state=\"{state}\"}}"))
    };
    assert_eq!(leases("app", "active"), Some(1.0), "{text}");
    assert_eq!(leases("app", "pending"), Some(1.0));
    assert_eq!(leases("app", "revoked"), Some(0.0), "every state of a role is there");
    assert_eq!(leases("batch", "irrevocable"), Some(1.0));
    assert_eq!(sample(&text, "lessor_leases_irrevocable"), Some(1.0));
    assert_eq!(sample(&text, "lessor_leases_scheduled"), Some(3.0));

    // The irrevocable lease is dropped: its gauge falls to 0, not stays.
    counts.0.lock().unwrap().retain(|(role, _, _)| role != "batch");
    let text = exporter.render(&counts).await;
    assert_eq!(sample(&text, "lessor_leases{role=\"batch\",state=\"irrevocable\"}"), Some(0.0), "{text}");
    assert_eq!(sample(&text, "lessor_leases_irrevocable"), Some(0.0));
}
