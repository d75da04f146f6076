//! The bridge from `tokio_util::sync::CancellationToken` to [`CancelToken`] (feature
//! `tokio-util`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::context::Scoped;
use crate::{CancelToken, OpContext};

impl OpContext {
    /// [`scope`](OpContext::scope), with `ct` cancelling the scope's operations: when `ct` is
    /// cancelled, the context's token is (a new one, or a child of the one it has), so an
    /// operation waiting for a shard inside `fut` ends with
    /// [`ErrorKind::Cancelled`](crate::ErrorKind::Cancelled) and one that has not started
    /// is refused. The future watches `ct` while it is polled: no task is spawned and nothing
    /// outlives it. Needs no tokio runtime.
    ///
    /// ```
    /// use map_wrapper::OpContext;
    /// use tokio_util::sync::CancellationToken;
    ///
    /// let shutdown = CancellationToken::new();
    /// let scoped = OpContext::new().actor("worker").scope_with_cancellation(shutdown.clone(), async {
    ///     // map.insert_async(..).await? ... fails with Cancelled once `shutdown` is cancelled
    /// });
    /// # drop(scoped);
    /// ```
    pub fn scope_with_cancellation<F: Future>(self, ct: CancellationToken, fut: F) -> CancellableScope<F> {
        let token = self.get_cancel_token().map_or_else(CancelToken::new, CancelToken::child);
        let ctx = self.cancel_token(token.clone());
        CancellableScope {
            token,
            cancelled: Box::pin(ct.cancelled_owned()),
            fired: false,
            inner: ctx.scope(fut),
        }
    }
}

/// A future run under an [`OpContext`] whose token follows a `CancellationToken`; made by
/// [`OpContext::scope_with_cancellation`].
#[must_use = "futures do nothing unless polled"]
pub struct CancellableScope<F> {
    token: CancelToken,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    fired: bool,
    inner: Scoped<F>,
}

impl<F: Future> Future for CancellableScope<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        if !this.fired && this.cancelled.as_mut().poll(cx).is_ready() {
            this.fired = true;
            // Wakes the scope's waiters (lock queue watches), which then end as cancelled.
            this.token.cancel();
        }
        Pin::new(&mut this.inner).poll(cx)
    }
}

impl<F> std::fmt::Debug for CancellableScope<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancellableScope").field("fired", &self.fired).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::{ErrorKind, MapWrapper};

    #[test]
    fn a_cancellation_token_ends_a_waiting_insert_and_it_does_not_land() {
        let map: Arc<MapWrapper<u64, u64>> =
            Arc::new(MapWrapper::builder().timeout(Duration::from_secs(30)).build().unwrap());
        map.insert(1, 1).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let guard = map.get(&1).unwrap().unwrap(); // another task's guard: the insert waits
            let ct = CancellationToken::new();
            let m = map.clone();
            let waiting = tokio::task::spawn_local(
                OpContext::new()
                    .scope_with_cancellation(ct.clone(), async move { m.insert_async(1, 2).await }),
            );
            tokio::task::yield_now().await;
            assert!(!waiting.is_finished());
            ct.cancel();
            let e = waiting.await.unwrap().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Cancelled);
            drop(guard);
        });
        assert_eq!(map.get_cloned(&1).unwrap(), Some(1));
    }
}
