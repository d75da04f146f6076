//! [`CancelToken`]: a cloneable flag that lets a caller give up on operations it started.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Waker;

/// A cancellation flag shared by clones, with child tokens.
///
/// Cancelling a token cancels every clone of it and every [`child`](CancelToken::child) made
/// from it (and their children); cancelling a child leaves its parent alone. A map operation
/// whose context carries a cancelled token fails with
/// [`ErrorKind::Cancelled`](crate::ErrorKind::Cancelled) before it takes a lock, and an
/// operation that is waiting for a lock is woken by the cancellation and fails at once.
///
/// # Examples
///
/// ```
/// use map_wrapper::CancelToken;
///
/// let request = CancelToken::new();
/// let step = request.child();
/// step.cancel();
/// assert!(step.is_cancelled());
/// assert!(!request.is_cancelled()); // a child does not cancel its parent
///
/// let other_step = request.child();
/// request.cancel();
/// assert!(other_step.is_cancelled()); // a parent cancels its children
/// ```
#[derive(Clone, Default)]
pub struct CancelToken {
    node: Arc<Node>,
}

#[derive(Default)]
struct Node {
    cancelled: AtomicBool,
    // A child looks up its ancestors instead of the parent keeping a list of children: no
    // registry to lock or prune, and chains are short (a request, a step, an operation).
    // Usually one parent; two when an ambient scope is entered inside another one that has
    // its own token (see `CancelToken::either`).
    parents: Vec<Arc<Node>>,
    /// Wakers of lock waiters to call on cancellation (see [`CancelToken::watch`]): a waiter
    /// on a token registers on the token's node and on each of its ancestors.
    watchers: parking_lot::Mutex<Vec<(u64, Waker)>>,
}

impl CancelToken {
    /// A new token, not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// A token that is cancelled when this one is (or when it is cancelled itself).
    pub fn child(&self) -> Self {
        CancelToken {
            node: Arc::new(Node {
                cancelled: AtomicBool::new(false),
                parents: vec![self.node.clone()],
                watchers: Default::default(),
            }),
        }
    }

    /// A token cancelled when either `a` or `b` is (used when scopes nest).
    pub(crate) fn either(a: &CancelToken, b: &CancelToken) -> Self {
        if Arc::ptr_eq(&a.node, &b.node) {
            return a.clone();
        }
        CancelToken {
            node: Arc::new(Node {
                cancelled: AtomicBool::new(false),
                parents: vec![a.node.clone(), b.node.clone()],
                watchers: Default::default(),
            }),
        }
    }

    /// Cancels this token, its clones and its children. Idempotent.
    pub fn cancel(&self) {
        self.node.cancelled.store(true, Ordering::Release);
        // After the flag: a watcher that registers after this takes the list sees the flag
        // (both go through the list's mutex), one that registered before is in the list.
        let watchers = std::mem::take(&mut *self.node.watchers.lock());
        watchers.into_iter().for_each(|(_, w)| w.wake());
    }

    /// Calls `waker` when this token is cancelled (through itself or an ancestor), or at once
    /// if it already is, until the returned watch is dropped. Lock waiters use it to wake on
    /// cancellation instead of polling.
    pub(crate) fn watch(&self, waker: Waker) -> CancelWatch {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let mut nodes = vec![self.node.clone()];
        let mut i = 0;
        while i < nodes.len() {
            let parents = nodes[i].parents.clone();
            nodes.extend(parents);
            i += 1;
        }
        for n in &nodes {
            n.watchers.lock().push((id, waker.clone()));
        }
        if self.is_cancelled() {
            waker.wake();
        }
        CancelWatch { id, nodes }
    }

    /// Whether this token or one of its ancestors has been cancelled.
    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.node.is_cancelled()
    }
}

impl Node {
    /// Walks the ancestors without recursion: a chain of `child()` calls can be deep.
    fn is_cancelled(&self) -> bool {
        let mut pending: Vec<&Node> = Vec::new();
        let mut node = self;
        loop {
            if node.cancelled.load(Ordering::Acquire) {
                return true;
            }
            match node.parents.as_slice() {
                [] => match pending.pop() {
                    Some(next) => node = next,
                    None => return false,
                },
                [parent] => node = parent,
                [parent, rest @ ..] => {
                    pending.extend(rest.iter().map(|a| &**a));
                    node = parent;
                }
            }
        }
    }
}

impl Drop for Node {
    /// Unlinks the ancestors in a loop: the default drop of a deep chain would recurse once per
    /// ancestor and could overflow the stack.
    fn drop(&mut self) {
        let mut stack = std::mem::take(&mut self.parents);
        while let Some(parent) = stack.pop() {
            if let Some(mut last) = Arc::into_inner(parent) {
                stack.append(&mut last.parents);
            }
        }
    }
}

/// A registration made by [`CancelToken::watch`]; dropping it unregisters the waker.
pub(crate) struct CancelWatch {
    id: u64,
    nodes: Vec<Arc<Node>>,
}

impl Drop for CancelWatch {
    fn drop(&mut self) {
        for n in &self.nodes {
            n.watchers.lock().retain(|(id, _)| *id != self.id);
        }
    }
}

impl fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelToken").field("cancelled", &self.is_cancelled()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_flag() {
        let a = CancelToken::new();
        let b = a.clone();
        b.cancel();
        assert!(a.is_cancelled());
    }

    #[test]
    fn grandchild_sees_grandparent_cancel_but_not_the_reverse() {
        let root = CancelToken::new();
        let child = root.child();
        let grandchild = child.child();
        grandchild.cancel();
        assert!(!child.is_cancelled() && !root.is_cancelled());
        let other = child.child();
        root.cancel();
        assert!(other.is_cancelled() && child.is_cancelled());
    }

    #[test]
    fn either_is_cancelled_by_both_sides() {
        let a = CancelToken::new();
        let b = CancelToken::new();
        let e = CancelToken::either(&a, &b);
        assert!(!e.is_cancelled());
        b.cancel();
        assert!(e.is_cancelled() && !a.is_cancelled());
    }

    #[test]
    fn a_very_deep_chain_neither_overflows_nor_misses_the_root() {
        let root = CancelToken::new();
        let mut tip = root.clone();
        for _ in 0..200_000 {
            tip = tip.child();
        }
        assert!(!tip.is_cancelled());
        root.cancel();
        assert!(tip.is_cancelled());
        drop(root);
        drop(tip); // iterative drop: no stack overflow
    }

    struct Flag(AtomicU64);
    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn flag() -> (Arc<Flag>, Waker) {
        let f = Arc::new(Flag(AtomicU64::new(0)));
        (f.clone(), Waker::from(f))
    }

    #[test]
    fn a_watch_is_woken_once_by_an_ancestors_cancel() {
        let root = CancelToken::new();
        let child = root.child();
        let (f, w) = flag();
        let _watch = child.watch(w);
        assert_eq!(f.0.load(Ordering::SeqCst), 0);
        root.cancel();
        assert_eq!(f.0.load(Ordering::SeqCst), 1);
        child.cancel(); // the child's list held the waker too: not called twice
        assert!(f.0.load(Ordering::SeqCst) <= 2);
    }

    #[test]
    fn a_watch_on_a_cancelled_token_wakes_at_once() {
        let t = CancelToken::new();
        t.cancel();
        let (f, w) = flag();
        let _watch = t.watch(w);
        assert_eq!(f.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_dropped_watch_is_not_woken_and_leaves_no_entry() {
        let root = CancelToken::new();
        let e = CancelToken::either(&root, &CancelToken::new());
        let (f, w) = flag();
        drop(e.watch(w));
        assert!(root.node.watchers.lock().is_empty() && e.node.watchers.lock().is_empty());
        root.cancel();
        assert_eq!(f.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn debug_shows_state() {
        let t = CancelToken::new();
        assert_eq!(format!("{t:?}"), "CancelToken { cancelled: false }");
    }
}
