//! [`CancelToken`]: a cloneable flag that lets a caller give up on operations it started.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A cancellation flag shared by clones, with child tokens.
///
/// Cancelling a token cancels every clone of it and every [`child`](CancelToken::child) made
/// from it (and their children); cancelling a child leaves its parent alone. A map operation
/// whose context carries a cancelled token fails with
/// [`ErrorKind::Cancelled`](crate::ErrorKind::Cancelled) before it takes a lock, and an
/// operation that is waiting for a lock notices the cancellation within about a millisecond.
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
}

impl CancelToken {
    /// A new token, not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// A token that is cancelled when this one is (or when it is cancelled itself).
    pub fn child(&self) -> Self {
        CancelToken {
            node: Arc::new(Node { cancelled: AtomicBool::new(false), parents: vec![self.node.clone()] }),
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
            }),
        }
    }

    /// Cancels this token, its clones and its children. Idempotent.
    pub fn cancel(&self) {
        self.node.cancelled.store(true, Ordering::Release);
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

    #[test]
    fn debug_shows_state() {
        let t = CancelToken::new();
        assert_eq!(format!("{t:?}"), "CancelToken { cancelled: false }");
    }
}
