//! The printed figures: one line per side measured (throughput, latency,
//! CPU), the ratios of lessor to its baseline with their verdicts, and the
//! small arithmetic they share.

use std::time::Duration;

use crate::load::Stats;

/// Where the PostgreSQL phases charge the server's CPU.
pub const PG_BACKENDS: &str = "the PostgreSQL backends";

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `a / b`, finite when `b` is 0.
pub fn ratio(a: f64, b: f64) -> f64 {
    a / b.max(f64::MIN_POSITIVE)
}

pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

/// A side's figures, its CPU per operation (this process and `backends`,
/// the server's processes), and its errors by kind.
pub fn print_stats(label: &str, s: &Stats, backends: &str) {
    println!(
        "  {label:<16} {:>8.1} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms  mean {:>7.2} ms  max {:>8.2} ms  ok {:>6}  errors {}",
        s.throughput(),
        ms(s.percentile(50.0)),
        ms(s.percentile(99.0)),
        ms(s.mean()),
        ms(s.max()),
        s.ok(),
        s.errors
    );
    let ops = (s.ok() + s.errors).max(1) as f64;
    print_cpu("operation", &[(s.own_cpu_ms, "this process"), (s.backends_cpu_ms, backends)], ops);
    for (kind, count) in &s.error_kinds {
        println!("  {:<16}   {count} × {kind}", "");
    }
}

/// The line under a side's figures: CPU per `unit` in each place, from the
/// milliseconds each used for `count` units.
pub fn print_cpu(unit: &str, places: &[(f64, &str)], count: f64) {
    let places: Vec<String> =
        places.iter().map(|(cpu, place)| format!("{:.2} ms in {place}", cpu / count)).collect();
    println!("  {:<16}   CPU per {unit}: {}", "", places.join(", "));
}

/// What lessor is held to against a raw baseline: its throughput at least
/// `throughput` times raw's, its p99 at most `p99` times raw's.
pub struct Targets {
    pub throughput: f64,
    pub p99: f64,
    /// Width of the label column.
    pub width: usize,
}

pub fn print_ratios(label: &str, raw: &Stats, lessor: &Stats, targets: &Targets) {
    let tput = ratio(lessor.throughput(), raw.throughput());
    let p99 = ratio(ms(lessor.percentile(99.0)), ms(raw.percentile(99.0)));
    let &Targets { throughput, p99: p99_target, width } = targets;
    println!(
        "  ratios {label:<width$} lessor/raw throughput {tput:.2} (target ≥ {throughput:.2}: {})   lessor/raw p99 {p99:.2} (target ≤ {p99_target:.2}: {})",
        verdict(tput >= throughput),
        verdict(p99 <= p99_target)
    );
}

/// One line of `top` against `bottom`, named `name` (`lessor/openbao`):
/// the ratios of their throughputs, p50s and p99s, and with `target`
/// whether the throughput ratio reaches it.
pub fn print_versus(name: &str, top: &Stats, bottom: &Stats, target: Option<f64>) {
    let p = |s: &Stats, q: f64| ms(s.percentile(q));
    let throughput = ratio(top.throughput(), bottom.throughput());
    let verdict =
        target.map(|t| format!(" (target ≥ {t:.2}: {})", verdict(throughput >= t))).unwrap_or_default();
    println!(
        "  ratios {name:<17} throughput {throughput:.2}{verdict}   p50 {:.2}   p99 {:.2}",
        ratio(p(top, 50.0), p(bottom, 50.0)),
        ratio(p(top, 99.0), p(bottom, 99.0)),
    );
}
