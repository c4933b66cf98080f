//! The daemon's metrics, scraped from `GET /v1/metrics` before and after
//! a phase to read what it did inside: retries, store commits, revocations
//! and their lateness. The daemons of one run share the process's metrics
//! recorder, so a scrape of any node counts what every node did.

use std::collections::BTreeMap;

use lessor::client::Client;

use crate::Result;

/// One scrape: each metric summed over its labels, except that a histogram
/// bucket keeps its bound: `name_bucket{le="0.5"}`.
#[derive(Debug)]
pub struct Metrics(BTreeMap<String, f64>);

pub async fn metrics(client: &Client) -> Result<Metrics> {
    let response = client.request(hyper::Method::GET, "/v1/metrics", None).await?;
    let text = response.body.as_str().ok_or("metrics body is not text")?;
    let mut metrics = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        // The value is the last field (the exporter writes no timestamps);
        // label values may hold spaces and braces (`route="/v1/creds/{role}"`).
        let Some((series, Ok(value))) = line.rsplit_once(' ').map(|(s, v)| (s, v.parse::<f64>())) else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        let le = ["{le=\"", ",le=\""]
            .iter()
            .find_map(|start| series.split_once(start)?.1.split_once('"').map(|(le, _)| le));
        let key = match le {
            Some(le) => format!("{name}{{le=\"{le}\"}}"),
            None => name.to_string(),
        };
        *metrics.entry(key).or_insert(0.0) += value;
    }
    Ok(Metrics(metrics))
}

impl Metrics {
    /// The value of `name`, 0 when the daemon has not written it yet.
    pub fn get(&self, name: &str) -> f64 {
        self.0.get(name).copied().unwrap_or(0.0)
    }

    /// How much `name` grew since the scrape `before`.
    pub fn since(&self, before: &Metrics, name: &str) -> f64 {
        self.get(name) - before.get(name)
    }

    /// The least bucket bound of histogram `name` that holds every sample
    /// recorded since the scrape `before`: an upper bound of their maximum.
    pub fn max_bound(&self, before: &Metrics, name: &str) -> f64 {
        let count = self.since(before, &format!("{name}_count"));
        let prefix = format!("{name}_bucket{{le=\"");
        self.0
            .iter()
            .filter_map(|(key, value)| {
                let le: f64 = key.strip_prefix(&prefix)?.strip_suffix("\"}")?.parse().ok()?;
                (value - before.get(key) >= count).then_some(le)
            })
            .fold(f64::INFINITY, f64::min)
    }
}
