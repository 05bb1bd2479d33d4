//! Abuse-resistant log-in (issue 14, item 3).
//!
//! - **Back-off per address.** After [`FREE_FAILURES`] failed log-ins in a row, log-ins of that
//!   address are refused (`RESOURCE_EXHAUSTED`, with the seconds to wait) until a wait that starts
//!   at [`FIRST_WAIT_SECS`] and doubles with each further failure, up to [`MAX_WAIT_SECS`]. While
//!   the address waits, no password is checked and nothing is counted, so the wait never grows
//!   beyond the cap and the owner gets in with the right password once it has passed; a
//!   successful log-in clears the count. It is kept per address tried (the normalized email),
//!   whether or not an account has it, so the answer does not tell which addresses have accounts,
//!   and in the database (`login_failures`), so every control-plane replica applies the same wait.
//! - **Bounded hashing.** Argon2id costs 19 MiB and tens of milliseconds of a core per hash. At
//!   most one hash per core runs at once, a few more wait their turn, and beyond that a sign-up or
//!   log-in is answered `RESOURCE_EXHAUSTED` at once instead of piling up memory and latency for
//!   everyone ([`HashQueue`]).

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{Error, Result};
use crate::{Ctx, store};

/// Failed log-ins in a row an address may have before it waits.
pub(crate) const FREE_FAILURES: i64 = 5;
/// The first wait, doubled by each further failure.
pub(crate) const FIRST_WAIT_SECS: i64 = 1;
/// The longest wait: the owner is never kept out longer than this by others' failures.
pub(crate) const MAX_WAIT_SECS: i64 = 15 * 60;
/// A count whose last failure is older than this is forgotten (and its row removed, so rows of
/// addresses tried once do not pile up).
pub(crate) const FORGET_AFTER_SECS: i64 = 24 * 60 * 60;

/// How long an address waits after its `failures`-th failure in a row (`None`: not at all).
pub(crate) fn wait_after(failures: i64) -> Option<i64> {
    if failures < FREE_FAILURES {
        return None;
    }
    // 2^20 s is far past the cap already.
    let doublings = u32::try_from((failures - FREE_FAILURES).min(20)).unwrap_or(20);
    Some(
        FIRST_WAIT_SECS
            .saturating_mul(1_i64 << doublings)
            .min(MAX_WAIT_SECS),
    )
}

/// The refusal of a log-in while `email` waits `secs` more seconds.
pub(crate) fn refusal(secs: i64) -> Error {
    Error::ResourceExhausted(format!(
        "too many failed log-ins for this account: try again in {secs} s (retry-after: {secs}); \
         if you forgot the password, reset it (`kapal reset-password`)"
    ))
}

/// Seconds `email` must still wait before a log-in is tried (`None`: it may log in now).
pub(crate) async fn waiting(ctx: &Ctx, email: &str) -> Result<Option<i64>> {
    let now = ctx.now();
    let until = store::login_failures::blocked_until(&ctx.db, email).await?;
    Ok(until.and_then(|until| {
        let left = until - now;
        // Whole seconds, rounded up: "0 s" would invite a retry that is refused again.
        let ms = left.num_milliseconds();
        (ms > 0).then(|| (ms + 999) / 1000)
    }))
}

/// Counts a failed log-in of `email` and starts its wait when it has failed too often.
pub(crate) async fn failed(ctx: &Ctx, email: &str) -> Result<()> {
    let now = ctx.now();
    let stale = now - chrono::Duration::seconds(FORGET_AFTER_SECS);
    let wait = |failures| wait_after(failures).map(|secs| now + chrono::Duration::seconds(secs));
    let (failures, until) =
        store::login_failures::count_failure(&ctx.db, email, now, stale, wait).await?;
    if let Some(until) = until {
        tracing::warn!(
            failures,
            wait_secs = (until - now).num_seconds(),
            "failed log-ins in a row: the address waits"
        );
    }
    Ok(())
}

/// A successful log-in of `email`: its count starts again.
pub(crate) async fn succeeded(ctx: &Ctx, email: &str) -> Result<()> {
    store::login_failures::clear(&ctx.db, email).await
}

/// A semaphore of `concurrent` password hashes with a queue of at most `max_waiting` callers;
/// one more is refused at once.
pub(crate) struct HashQueue {
    permits: tokio::sync::Semaphore,
    waiting: AtomicUsize,
    max_waiting: usize,
}

/// Leaves the queue when dropped (also when the caller gave up waiting).
struct InQueue<'a>(&'a AtomicUsize);

impl Drop for InQueue<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl HashQueue {
    pub(crate) fn new(concurrent: usize, max_waiting: usize) -> HashQueue {
        HashQueue {
            permits: tokio::sync::Semaphore::new(concurrent.max(1)),
            waiting: AtomicUsize::new(0),
            max_waiting,
        }
    }

    /// A turn to hash: at once, after the callers queued before, or `RESOURCE_EXHAUSTED` when
    /// the queue is full.
    pub(crate) async fn turn(&self) -> Result<tokio::sync::SemaphorePermit<'_>> {
        if let Ok(permit) = self.permits.try_acquire() {
            return Ok(permit);
        }
        let queued = InQueue(&self.waiting);
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_waiting {
            drop(queued);
            return Err(Error::ResourceExhausted(
                "the server is busy checking passwords: try again in a few seconds".into(),
            ));
        }
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| Error::Internal(format!("hashing permits: {e}")))?;
        drop(queued);
        Ok(permit)
    }
}

/// The process's hashing queue: one hash per core at a time, four callers per core waiting.
pub(crate) fn hash_queue() -> &'static HashQueue {
    static QUEUE: std::sync::OnceLock<HashQueue> = std::sync::OnceLock::new();
    QUEUE.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        HashQueue::new(cores, 4 * cores)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_up_to_the_cap() {
        assert_eq!(wait_after(1), None);
        assert_eq!(wait_after(FREE_FAILURES - 1), None);
        assert_eq!(wait_after(FREE_FAILURES), Some(1));
        assert_eq!(wait_after(FREE_FAILURES + 1), Some(2));
        assert_eq!(wait_after(FREE_FAILURES + 3), Some(8));
        assert_eq!(wait_after(FREE_FAILURES + 10), Some(MAX_WAIT_SECS));
        assert_eq!(wait_after(i64::MAX), Some(MAX_WAIT_SECS));
    }

    #[tokio::test]
    async fn a_full_queue_answers_at_once() {
        let q = HashQueue::new(1, 1);
        let first = q.turn().await.ok();
        assert!(first.is_some());
        // The second waits its turn; the third finds the queue full and is refused at once.
        let second = q.turn();
        tokio::pin!(second);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), &mut second)
                .await
                .is_err(),
            "the second caller waits"
        );
        let third = tokio::time::timeout(std::time::Duration::from_millis(50), q.turn())
            .await
            .expect("a full queue answers at once");
        assert!(matches!(third, Err(Error::ResourceExhausted(_))));
        // When the first is done, the second gets its turn, and the queue has room again.
        drop(first);
        let second = second.await;
        assert!(second.is_ok());
        drop(second);
        assert!(q.turn().await.is_ok());
    }
}
