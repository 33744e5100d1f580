//! Waiting for conditions with a deadline.
//!
//! Tests never sleep a fixed time to "let things settle": that is either too short on a loaded
//! CI machine (flaky) or too long everywhere else (slow). Instead they poll the condition they
//! actually need, with a short back-off, and fail with a message naming what never happened.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::HarnessError;

/// First pause between polls; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(2);
/// Longest pause between polls, so a condition that became true is noticed quickly.
const MAX_BACKOFF: Duration = Duration::from_millis(50);

/// The pause after `current`, never sleeping past the deadline.
fn next_backoff(current: Duration, started: Instant, deadline: Duration) -> Duration {
    let left = deadline.saturating_sub(started.elapsed());
    current.min(left)
}

/// Polls `condition` until it returns `true` or `deadline` has passed.
pub fn try_wait_until(
    deadline: Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
) -> Result<(), HarnessError> {
    let started = Instant::now();
    let mut backoff = FIRST_BACKOFF;
    loop {
        if condition() {
            return Ok(());
        }
        if started.elapsed() >= deadline {
            return Err(HarnessError::Timeout {
                what: what.to_owned(),
                waited: started.elapsed(),
            });
        }
        std::thread::sleep(next_backoff(backoff, started, deadline));
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Polls `condition` until it returns `true`; panics naming `what` after `deadline`.
///
/// Blocking: in async code use [`wait_for`].
#[track_caller]
pub fn wait_until(deadline: Duration, what: &str, condition: impl FnMut() -> bool) {
    if let Err(error) = try_wait_until(deadline, what, condition) {
        panic!("{error}");
    }
}

/// Polls the async `condition` until it yields `Some(value)` or `deadline` has passed.
///
/// A single poll that hangs is cut off at the deadline too.
pub async fn try_wait_for_some<T, F, Fut>(
    deadline: Duration,
    what: &str,
    mut condition: F,
) -> Result<T, HarnessError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    let timeout = || HarnessError::Timeout {
        what: what.to_owned(),
        waited: started.elapsed(),
    };
    let mut backoff = FIRST_BACKOFF;
    loop {
        let left = deadline.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, condition()).await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(_elapsed) => return Err(timeout()),
        }
        if started.elapsed() >= deadline {
            return Err(timeout());
        }
        tokio::time::sleep(next_backoff(backoff, started, deadline)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Polls the async `condition` until it yields `Some(value)` and returns the value; panics
/// naming `what` after `deadline`.
///
/// ```no_run
/// # async fn demo(client: tokio_postgres::Client) {
/// use std::time::Duration;
/// let count: i64 = edge_e2e::wait_for_some(Duration::from_secs(5), "three staged rows", || async {
///     let row = client.query_one("SELECT count(*) FROM staged", &[]).await.ok()?;
///     let n: i64 = row.get(0);
///     (n >= 3).then_some(n)
/// })
/// .await;
/// # }
/// ```
#[track_caller]
pub fn wait_for_some<'a, T, F, Fut>(
    deadline: Duration,
    what: &'a str,
    condition: F,
) -> impl Future<Output = T> + 'a
where
    T: 'a,
    F: FnMut() -> Fut + 'a,
    Fut: Future<Output = Option<T>> + 'a,
{
    // `#[track_caller]` does not reach into an async body, so capture the caller here.
    let caller = std::panic::Location::caller();
    async move {
        match try_wait_for_some(deadline, what, condition).await {
            Ok(value) => value,
            Err(error) => panic!("{error} (at {caller})"),
        }
    }
}

/// Polls the async `condition` until it yields `true`; panics naming `what` after `deadline`.
#[track_caller]
pub fn wait_for<'a, F, Fut>(
    deadline: Duration,
    what: &'a str,
    mut condition: F,
) -> impl Future<Output = ()> + 'a
where
    F: FnMut() -> Fut + 'a,
    Fut: Future<Output = bool> + 'a,
{
    let caller = std::panic::Location::caller();
    async move {
        let polled = try_wait_for_some(deadline, what, || {
            let fut = condition();
            async move { fut.await.then_some(()) }
        })
        .await;
        if let Err(error) = polled {
            panic!("{error} (at {caller})");
        }
    }
}

/// Awaits `future`, panicking with a message naming `what` if it takes longer than `deadline`.
///
/// For one-shot events such as "the next message arrives": `within(d, "the ack", rx.recv())`.
#[track_caller]
pub fn within<'a, F>(
    deadline: Duration,
    what: &'a str,
    future: F,
) -> impl Future<Output = F::Output> + 'a
where
    F: Future + 'a,
{
    let caller = std::panic::Location::caller();
    async move {
        match tokio::time::timeout(deadline, future).await {
            Ok(output) => output,
            Err(_elapsed) => {
                panic!("timed out after {deadline:?} waiting for {what} (at {caller})")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn wait_until_returns_once_the_condition_holds() {
        let mut polls = 0;
        wait_until(Duration::from_secs(5), "third poll", || {
            polls += 1;
            polls == 3
        });
        assert_eq!(polls, 3);
    }

    #[test]
    fn try_wait_until_names_the_condition_on_timeout() {
        let error = try_wait_until(Duration::from_millis(20), "the impossible", || false)
            .expect_err("never true");
        assert!(error.to_string().contains("the impossible"), "{error}");
    }

    #[tokio::test]
    async fn wait_for_some_returns_the_value() {
        let polls = AtomicU32::new(0);
        let value = wait_for_some(Duration::from_secs(5), "value", || async {
            let n = polls.fetch_add(1, Ordering::SeqCst) + 1;
            (n == 2).then_some(n * 10)
        })
        .await;
        assert_eq!(value, 20);
    }

    #[tokio::test]
    async fn a_hanging_poll_is_cut_off_at_the_deadline() {
        let error = try_wait_for_some(Duration::from_millis(20), "a hanging poll", || async {
            std::future::pending::<Option<()>>().await
        })
        .await
        .expect_err("must time out");
        assert!(error.to_string().contains("a hanging poll"), "{error}");
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for the answer")]
    async fn within_panics_with_the_name() {
        within(
            Duration::from_millis(10),
            "the answer",
            std::future::pending::<()>(),
        )
        .await;
    }
}
