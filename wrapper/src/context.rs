//! [`OpContext`]: the deadline, cancellation and identity of an operation, given per call
//! (`map.with(&ctx)`) or for everything the current thread does in a scope (`ctx.enter()`).

use std::cell::{Cell, RefCell};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::CancelToken;

/// What an operation runs under: how long it may wait, who may cancel it, and who it is for.
///
/// Every field is optional. An operation combines, in this order of precedence, the context
/// given with [`MapWrapper::with`](crate::MapWrapper::with), the ambient context the thread
/// entered with [`enter`](OpContext::enter), and the map's defaults:
///
/// - **timeout**: how long the operation may wait for a lock; when several are given (a
///   per-call context, nested scopes) the shortest wins, so inner code cannot wait longer than
///   an enclosing scope allows; when none is given, the map's default (500 ms unless
///   configured);
/// - **deadline**: an absolute instant that no operation waits past; every deadline given
///   applies (the earliest wins), so a per-call timeout cannot outlive a request's deadline;
/// - **cancellation**: the operation fails if any of the tokens given is cancelled;
/// - **actor**, **trace id**: the first one given wins; **tags** add up (the innermost value
///   of a tag wins).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use map_wrapper::{CancelToken, MapWrapper, OpContext};
///
/// let map: MapWrapper<String, u32> = MapWrapper::new();
///
/// // Per call.
/// let ctx = OpContext::new().timeout(Duration::from_millis(50)).actor("billing-job");
/// map.with(&ctx).insert("a".to_string(), 1)?;
///
/// // For a scope on this thread: every operation inside runs as "alice".
/// {
///     let _scope = OpContext::new().actor("alice").trace_id("req-42").enter();
///     map.insert("b".to_string(), 2)?;
/// }
///
/// // A cancelled context fails before it takes a lock.
/// let token = CancelToken::new();
/// token.cancel();
/// let err = map.with(&OpContext::new().cancel_token(token)).insert("c".into(), 3).unwrap_err();
/// assert_eq!(err.code(), "CANCELLED");
/// # Ok::<(), map_wrapper::MapError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct OpContext {
    timeout: Option<Duration>,
    deadline: Option<Instant>,
    cancel: Option<CancelToken>,
    actor: Option<Arc<str>>,
    trace_id: Option<Arc<str>>,
    tags: Vec<(Arc<str>, Arc<str>)>,
}

impl OpContext {
    /// An empty context: the map's defaults apply.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long each operation under this context may wait for a lock, at most: the map's
    /// own timeout ([`Builder::timeout`](crate::Builder::timeout)) is a ceiling, so a context
    /// can shorten an operation's wait but never lengthen it. The earliest of every timeout
    /// and deadline in play wins (the map's, this context's, the ambient scope's).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// An instant no operation under this context waits past (nor past the map's own
    /// timeout, whichever comes first).
    ///
    /// Deadlines only move earlier: if the context already has an earlier one (for example
    /// inherited by [`child`](OpContext::child)), that one stays.
    #[must_use]
    pub fn deadline(mut self, at: Instant) -> Self {
        self.deadline = Some(self.deadline.map_or(at, |d| d.min(at)));
        self
    }

    /// The token that cancels operations under this context.
    #[must_use]
    pub fn cancel_token(mut self, token: CancelToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// Who the operations are done for (a user, a service); recorded in the audit trail.
    #[must_use]
    pub fn actor(mut self, actor: impl Into<Arc<str>>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// The id that ties the operations to a request or trace; recorded in the audit trail.
    #[must_use]
    pub fn trace_id(mut self, trace_id: impl Into<Arc<str>>) -> Self {
        self.trace_id = Some(trace_id.into());
        self
    }

    /// Adds a `key = value` tag (a later value for the same key replaces the earlier one).
    #[must_use]
    pub fn tag(mut self, key: impl Into<Arc<str>>, value: impl Into<Arc<str>>) -> Self {
        let key = key.into();
        self.tags.retain(|(k, _)| *k != key);
        self.tags.push((key, value.into()));
        self
    }

    /// A context for a sub-task: same actor, trace id and tags, a child of the cancel token if
    /// this context has one (cancelling the child does not cancel this context), and a
    /// deadline no later than this context's: this context's timeout, if it has one, becomes an
    /// absolute deadline counted from now.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use map_wrapper::OpContext;
    ///
    /// let parent = OpContext::new().deadline(Instant::now() + Duration::from_millis(100));
    /// let child = parent.child().deadline(Instant::now() + Duration::from_secs(60));
    /// assert!(child.get_deadline() <= parent.get_deadline());
    /// ```
    #[must_use]
    pub fn child(&self) -> Self {
        let mut child = self.clone();
        // A timeout too large to add to `now` means no deadline at all.
        if let Some(at) = self.timeout.and_then(|t| Instant::now().checked_add(t)) {
            child = child.deadline(at);
        }
        child.cancel = self.cancel.as_ref().map(CancelToken::child);
        child
    }

    /// Makes this context part of the ambient context of the current thread until the returned
    /// guard is dropped. Operations that get no explicit context use it; one that does uses
    /// both (see the precedence rules on [`OpContext`]). Scopes nest: an inner scope adds to the
    /// outer ones. Guards may be dropped in any order: each removes exactly its own scope.
    ///
    /// A guard belongs to its thread (it is not `Send`); do not hold one across an `.await`
    /// point, where other tasks of the same thread would run inside the scope: for a task,
    /// use [`scope`](OpContext::scope), which follows the task instead.
    ///
    /// ```
    /// use map_wrapper::OpContext;
    ///
    /// let _outer = OpContext::new().actor("svc").tag("tenant", "acme").enter();
    /// {
    ///     let _inner = OpContext::new().actor("alice").enter();
    ///     let now = OpContext::current().unwrap();
    ///     assert_eq!(now.get_actor(), Some("alice"));
    ///     assert_eq!(now.get_tags()[0].1.as_ref(), "acme");
    /// }
    /// assert_eq!(OpContext::current().unwrap().get_actor(), Some("svc"));
    /// ```
    #[must_use = "the context is left as soon as the guard is dropped"]
    pub fn enter(self) -> ContextGuard {
        let id = SCOPES.with(|scopes| {
            let mut scopes = scopes.borrow_mut();
            scopes.next_id += 1;
            let id = scopes.next_id;
            scopes.frames.push((id, self));
            scopes.remerge();
            id
        });
        ContextGuard { id, _not_send: PhantomData }
    }

    /// Runs `fut` with this context as part of its ambient context: the per-task twin of
    /// [`enter`](OpContext::enter). The returned future enters the context around each poll
    /// of `fut` and leaves it before returning, so the context follows the task across
    /// threads and `.await`s, and other tasks on the same thread never see it. Map operations
    /// inside (sync or async) run under it, as inside an `enter` scope; scopes nest (an inner
    /// `scope` or `enter` adds to the outer ones). Works with any executor.
    ///
    /// ```
    /// use map_wrapper::OpContext;
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     use std::task::{Context, Poll, Wake, Waker};
    /// #     struct W; impl Wake for W { fn wake(self: std::sync::Arc<Self>) {} }
    /// #     let waker = Waker::from(std::sync::Arc::new(W));
    /// #     let mut f = std::pin::pin!(f);
    /// #     loop { if let Poll::Ready(v) = f.as_mut().poll(&mut Context::from_waker(&waker)) { return v; } }
    /// # }
    /// let actor = block_on(OpContext::new().actor("task-a").scope(async {
    ///     OpContext::current().and_then(|c| c.get_actor().map(str::to_owned))
    /// }));
    /// assert_eq!(actor.as_deref(), Some("task-a"));
    /// assert!(OpContext::current().is_none()); // not left behind on the thread
    /// ```
    pub fn scope<F: std::future::Future>(self, fut: F) -> Scoped<F> {
        Scoped { ctx: self, fut: Box::pin(fut) }
    }

    /// The ambient context of the current thread (all entered scopes merged), if any. Pass it
    /// to another thread and `enter` it there to carry actor, trace id, deadline and
    /// cancellation across.
    pub fn current() -> Option<OpContext> {
        ambient().map(|rc| (*rc).clone())
    }

    /// The per-operation timeout, if set.
    pub fn get_timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The absolute deadline, if set.
    pub fn get_deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The cancel token, if set.
    pub fn get_cancel_token(&self) -> Option<&CancelToken> {
        self.cancel.as_ref()
    }

    /// The actor, if set.
    pub fn get_actor(&self) -> Option<&str> {
        self.actor.as_deref()
    }

    /// The trace id, if set.
    pub fn get_trace_id(&self) -> Option<&str> {
        self.trace_id.as_deref()
    }

    /// The tags, in the order they were first set.
    pub fn get_tags(&self) -> &[(Arc<str>, Arc<str>)] {
        &self.tags
    }

    /// `self` layered over `outer`: `self`'s identity wins; timeouts, deadlines and tokens
    /// combine (the shortest, the earliest, either).
    fn over(mut self, outer: &OpContext) -> OpContext {
        self.timeout = match (self.timeout, outer.timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(d) = outer.deadline {
            self = self.deadline(d);
        }
        self.cancel = match (self.cancel.take(), &outer.cancel) {
            (Some(mine), Some(theirs)) => Some(CancelToken::either(&mine, theirs)),
            (mine, theirs) => mine.or_else(|| theirs.clone()),
        };
        self.actor = self.actor.or_else(|| outer.actor.clone());
        self.trace_id = self.trace_id.or_else(|| outer.trace_id.clone());
        let mut tags = outer.tags.clone();
        for (k, v) in self.tags {
            tags.retain(|(ok, _)| *ok != k);
            tags.push((k, v));
        }
        self.tags = tags;
        self
    }
}

/// A future run under an [`OpContext`]; made by [`OpContext::scope`].
#[must_use = "futures do nothing unless polled"]
pub struct Scoped<F> {
    ctx: OpContext,
    // Boxed so that `Scoped` is `Unpin` without unsafe pin projection (one allocation per
    // scope, typically per request).
    fut: std::pin::Pin<Box<F>>,
}

impl<F> Scoped<F> {
    /// The context the future runs under.
    pub fn context(&self) -> &OpContext {
        &self.ctx
    }
}

impl<F: std::future::Future> std::future::Future for Scoped<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        // Entered for this poll only: the guard leaves before another task runs here.
        let _scope = self.ctx.clone().enter();
        self.fut.as_mut().poll(cx)
    }
}

impl<F> std::fmt::Debug for Scoped<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scoped").field("ctx", &self.ctx).finish_non_exhaustive()
    }
}

/// Removes its scope from the thread's ambient context when dropped. Returned by
/// [`OpContext::enter`].
///
/// It is neither `Send` nor `Sync`: a scope belongs to the thread that entered it.
#[derive(Debug)]
pub struct ContextGuard {
    id: u64,
    _not_send: PhantomData<*const ()>,
}

impl Drop for ContextGuard {
    fn drop(&mut self) {
        // `try_with`: the guard may be dropped while the thread's locals are torn down.
        let _ = SCOPES.try_with(|scopes| {
            let mut scopes = scopes.borrow_mut();
            if let Some(pos) = scopes.frames.iter().rposition(|(id, _)| *id == self.id) {
                scopes.frames.remove(pos);
                scopes.remerge();
            }
        });
    }
}

/// The scopes entered on one thread, innermost last, and their merge (what operations read).
#[derive(Default)]
struct Scopes {
    next_id: u64,
    frames: Vec<(u64, OpContext)>,
    merged: Option<Arc<OpContext>>,
}

impl Scopes {
    /// Recomputes the merge after a scope was entered or left (rare next to operations,
    /// which only clone the `Rc`).
    fn remerge(&mut self) {
        self.merged = self
            .frames
            .iter()
            .fold(None, |outer: Option<OpContext>, (_, ctx)| {
                Some(match outer {
                    Some(outer) => ctx.clone().over(&outer),
                    None => ctx.clone(),
                })
            })
            .map(Arc::new);
        AMBIENT_SET.with(|set| set.set(self.merged.is_some()));
    }
}

thread_local! {
    static SCOPES: RefCell<Scopes> = RefCell::new(Scopes::default());
    // Whether SCOPES has a merged context. A destructor-less `Cell<bool>` is one plain TLS
    // load, where SCOPES costs a lazy-init check, a borrow and an `Rc` clone: every operation
    // outside a scope reads only this.
    static AMBIENT_SET: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread is inside no [`OpContext::enter`] scope (one plain thread-local load).
#[inline(always)]
pub(crate) fn no_ambient() -> bool {
    !AMBIENT_SET.with(Cell::get)
}

#[inline]
fn ambient() -> Option<Arc<OpContext>> {
    if !AMBIENT_SET.with(Cell::get) {
        return None;
    }
    SCOPES.try_with(|s| s.borrow().merged.clone()).ok().flatten()
}

/// The contexts one operation runs under: the explicit one (if any) and the ambient one (if
/// any). Built once per operation; cheap when both are absent (one thread-local read).
pub(crate) struct Effective<'c> {
    explicit: Option<&'c OpContext>,
    ambient: Option<Arc<OpContext>>,
}

impl<'c> Effective<'c> {
    #[inline]
    pub(crate) fn new(explicit: Option<&'c OpContext>) -> Self {
        Effective { explicit, ambient: ambient() }
    }

    /// Whether the operation runs under no context at all: no token, no deadline but the
    /// map's timeout, no identity.
    #[inline]
    pub(crate) fn is_plain(&self) -> bool {
        self.explicit.is_none() && self.ambient.is_none()
    }

    fn contexts(&self) -> impl Iterator<Item = &OpContext> {
        self.explicit.into_iter().chain(self.ambient.as_deref())
    }

    /// Whether any token of the operation is cancelled.
    #[inline]
    pub(crate) fn is_cancelled(&self) -> bool {
        self.contexts().any(|c| c.cancel.as_ref().is_some_and(CancelToken::is_cancelled))
    }

    /// The token that cancels the operation's waits: the one given, or one cancelled by either
    /// when both the explicit and the ambient context have one (an allocation; waits only).
    pub(crate) fn cancel_token(&self) -> Option<CancelToken> {
        let mut tokens = self.contexts().filter_map(|c| c.cancel.as_ref());
        let first = tokens.next()?;
        Some(match tokens.next() {
            Some(second) => CancelToken::either(first, second),
            None => first.clone(),
        })
    }

    /// The earliest absolute deadline given, if any.
    pub(crate) fn absolute_deadline(&self) -> Option<Instant> {
        self.contexts().filter_map(|c| c.deadline).min()
    }

    /// When a wait that starts at `start` must give up: the earliest of every deadline and
    /// timeout in play. The map's timeout (`map_timeout`) is a ceiling: a context can only
    /// shorten it, as Go's `context.WithTimeout(caller_ctx, map.timeout)` does.
    pub(crate) fn deadline_from(&self, start: Instant, map_timeout: Duration) -> Instant {
        let timeout = self.contexts().filter_map(|c| c.timeout).fold(map_timeout, Duration::min);
        let relative = start.checked_add(timeout).unwrap_or(start + Duration::from_secs(86_400 * 365));
        self.absolute_deadline().map_or(relative, |d| d.min(relative))
    }

    /// The actor of the operation, if one was given.
    #[allow(dead_code)] // read by the audit layer
    pub(crate) fn actor(&self) -> Option<&str> {
        self.contexts().find_map(OpContext::get_actor)
    }

    /// The trace id of the operation, if one was given.
    #[allow(dead_code)] // read by the audit layer
    pub(crate) fn trace_id(&self) -> Option<&str> {
        self.contexts().find_map(OpContext::get_trace_id)
    }

    /// The tags of the operation: the ambient ones, then the explicit ones (a later value of
    /// a tag replaces an earlier one when they are encoded).
    pub(crate) fn tags(&self) -> Vec<(&str, &str)> {
        let ambient = self.ambient.as_deref().into_iter();
        ambient.chain(self.explicit).flat_map(|c| c.tags.iter().map(|(k, v)| (&**k, &**v))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shortest_timeout_and_earliest_deadline_win() {
        let far = Instant::now() + Duration::from_secs(3600);
        let _g = OpContext::new().timeout(Duration::from_secs(1)).enter();
        let ctx = OpContext::new().timeout(Duration::from_secs(30)).deadline(far);
        let start = Instant::now();
        let eff = Effective::new(Some(&ctx));
        assert_eq!(eff.deadline_from(start, Duration::from_secs(60)), start + Duration::from_secs(1));
        let near = start + Duration::from_millis(3);
        let short = OpContext::new().timeout(Duration::from_millis(5)).deadline(near);
        let eff = Effective::new(Some(&short));
        assert_eq!(eff.deadline_from(start, Duration::from_millis(500)), near);
    }

    #[test]
    fn an_inner_scope_cannot_wait_longer_than_an_outer_one() {
        let _outer = OpContext::new().timeout(Duration::from_millis(100)).enter();
        let _inner = OpContext::new().timeout(Duration::from_secs(10)).enter();
        let start = Instant::now();
        let eff = Effective::new(None);
        assert_eq!(eff.deadline_from(start, Duration::from_secs(30)), start + Duration::from_millis(100));
    }

    #[test]
    fn guards_dropped_out_of_order_each_remove_their_own_scope() {
        let token = CancelToken::new();
        let g1 = OpContext::new().actor("outer").cancel_token(token.clone()).enter();
        let g2 = OpContext::new().actor("inner").enter();
        drop(g1);
        assert_eq!(OpContext::current().unwrap().get_actor(), Some("inner"));
        token.cancel();
        assert!(!Effective::new(None).is_cancelled(), "the outer scope's token left with it");
        drop(g2);
        assert!(OpContext::current().is_none());
    }

    #[test]
    fn child_of_a_huge_timeout_does_not_overflow() {
        let child = OpContext::new().timeout(Duration::MAX).child();
        assert_eq!(child.get_deadline(), None);
        assert!(child.get_cancel_token().is_none(), "no token to inherit, none invented");
    }

    #[test]
    fn the_maps_timeout_caps_a_longer_context_timeout() {
        let long = OpContext::new().timeout(Duration::from_secs(5));
        let _scope = OpContext::new().timeout(Duration::from_secs(10)).enter();
        let start = Instant::now();
        let eff = Effective::new(Some(&long));
        assert_eq!(eff.deadline_from(start, Duration::from_millis(200)), start + Duration::from_millis(200));
        let far = OpContext::new().deadline(start + Duration::from_secs(60));
        let eff = Effective::new(Some(&far));
        assert_eq!(eff.deadline_from(start, Duration::from_millis(200)), start + Duration::from_millis(200));
    }

    #[test]
    fn default_timeout_applies_when_none_given() {
        let eff = Effective::new(None);
        let start = Instant::now();
        assert_eq!(eff.deadline_from(start, Duration::from_millis(500)), start + Duration::from_millis(500));
        assert!(eff.cancel_token().is_none() && !eff.is_cancelled());
    }

    #[test]
    fn nested_scopes_combine_cancellation() {
        let outer_token = CancelToken::new();
        let _outer = OpContext::new().cancel_token(outer_token.clone()).enter();
        let _inner = OpContext::new().cancel_token(CancelToken::new()).actor("bob").enter();
        let eff = Effective::new(None);
        assert!(!eff.is_cancelled());
        outer_token.cancel();
        assert!(eff.is_cancelled());
        assert_eq!(eff.actor(), Some("bob"));
    }

    #[test]
    fn leaving_a_scope_restores_the_outer_one() {
        assert!(OpContext::current().is_none());
        {
            let _g = OpContext::new().trace_id("t1").enter();
            assert_eq!(Effective::new(None).trace_id(), Some("t1"));
        }
        assert!(OpContext::current().is_none());
    }

    #[test]
    fn child_turns_timeout_into_deadline_and_keeps_parent_cancel() {
        let parent = OpContext::new().timeout(Duration::from_millis(100)).cancel_token(CancelToken::new());
        let child = parent.child();
        assert!(child.get_deadline().unwrap() <= Instant::now() + Duration::from_millis(100));
        parent.get_cancel_token().unwrap().cancel();
        assert!(child.get_cancel_token().unwrap().is_cancelled());
        let later = child.clone().deadline(Instant::now() + Duration::from_secs(100));
        assert_eq!(later.get_deadline(), child.get_deadline());
    }

    #[test]
    fn tags_replace_by_key() {
        let c = OpContext::new().tag("a", "1").tag("b", "2").tag("a", "3");
        let tags: Vec<_> = c.get_tags().iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(tags, ["b=2", "a=3"]);
    }
}
