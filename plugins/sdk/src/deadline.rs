//! Backend operations bounded by the connection's `operation_timeout`, and
//! cancelled on the server when they run over.
//!
//! Dropping a future that is waiting on a database does not stop the
//! statement: the server goes on executing it, and may commit it after
//! lessor has already rolled the lease back and found "nothing to drop".
//! So when the deadline passes, [`run`] asks the server to cancel the
//! statement (PostgreSQL's cancel request, MySQL's `KILL QUERY` from
//! another connection) and then waits, a bounded time, for the operation
//! itself to report back. Once it has, the server is done with it, and
//! whatever it did is visible to the rollback that follows. The plugin
//! then closes that connection rather than return it to its pool.

use std::future::Future;
use std::time::Duration;

use crate::PluginError;

/// How long a cancelled operation may take to report back before it is
/// abandoned (its connection closed) all the same.
pub const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// What became of an operation run with [`run`].
#[derive(Debug)]
pub enum Bounded<T> {
    /// It ended within the deadline.
    Done(T),
    /// The deadline passed and the cancel was sent. `settled`: the
    /// operation then reported back (the server is done with it); when
    /// false it did not within [`CANCEL_GRACE`] and was abandoned.
    TimedOut { settled: bool },
}

/// The error of an operation that ran over its deadline.
pub fn timed_out(what: &str, limit: Duration, settled: bool) -> PluginError {
    let after = if settled {
        "the statement was cancelled on the server"
    } else {
        "the statement was cancelled, but the server did not confirm it; its connection was closed"
    };
    PluginError::Unavailable { message: format!("{what}: no answer within {}; {after}", human(limit)) }
}

fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Runs `work` for at most `limit`. When that passes, awaits `cancel()`
/// (which should ask the server to stop the statement `work` is waiting
/// on), then keeps driving `work` until it ends, for at most
/// [`CANCEL_GRACE`] in all. `work`'s result after a cancel is dropped: the
/// caller treats the operation as failed either way and undoes it.
pub async fn run<T, W, C, CF>(limit: Duration, work: W, cancel: C) -> Bounded<T>
where
    W: Future<Output = T>,
    C: FnOnce() -> CF,
    CF: Future<Output = ()>,
{
    let mut work = std::pin::pin!(work);
    tokio::select! {
        biased;
        out = &mut work => return Bounded::Done(out),
        () = tokio::time::sleep(limit) => {}
    }
    let settle = async {
        cancel().await;
        let _ = (&mut work).await;
    };
    let settled = tokio::time::timeout(CANCEL_GRACE, settle).await.is_ok();
    Bounded::TimedOut { settled }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn in_time_is_done_and_never_cancels() {
        let cancelled = AtomicBool::new(false);
        let out =
            run(Duration::from_secs(1), async { 7 }, || async { cancelled.store(true, Ordering::SeqCst) })
                .await;
        assert!(matches!(out, Bounded::Done(7)));
        assert!(!cancelled.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn overrun_cancels_then_waits_for_the_work_to_report_back() {
        // The "server" answers the statement only once it was cancelled.
        let cancelled = Arc::new(tokio::sync::Notify::new());
        let ended = Arc::new(AtomicBool::new(false));
        let work = {
            let (cancelled, ended) = (cancelled.clone(), ended.clone());
            async move {
                cancelled.notified().await;
                ended.store(true, Ordering::SeqCst);
            }
        };
        let out = run(Duration::from_secs(1), work, || async { cancelled.notify_one() }).await;
        assert!(matches!(out, Bounded::TimedOut { settled: true }));
        assert!(ended.load(Ordering::SeqCst), "run returned before the work reported back");
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_ignores_the_cancel_is_abandoned_after_the_grace() {
        let started = tokio::time::Instant::now();
        let out = run(Duration::from_secs(1), std::future::pending::<()>(), || async {}).await;
        assert!(matches!(out, Bounded::TimedOut { settled: false }));
        assert_eq!(started.elapsed(), Duration::from_secs(1) + CANCEL_GRACE);
        let e = timed_out("create v_x", Duration::from_secs(1), false).to_string();
        assert!(e.contains("create v_x: no answer within 1s") && e.contains("connection was closed"), "{e}");
    }
}
