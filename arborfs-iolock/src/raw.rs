//! The blocking core shared by [`TwoStateLock`](crate::TwoStateLock) and
//! [`IoLock`](crate::IoLock): a lock with two *kinds* of holders that exclude
//! each other, where each kind is either shared (any number of holders) or
//! exclusive (one holder).
//!
//! Policy (no spinning, no starvation):
//! * **No barging.** A locker gets in at once only if the lock is free or
//!   held in its own shared kind, *and nobody is waiting*. Otherwise it takes
//!   a ticket for its kind and sleeps on the condvar.
//! * **Handoff to the other kind.** When the last holder leaves, the lock is
//!   handed to the waiters of the *other* kind if there are any, else to the
//!   waiters of the same kind: all of them for a shared kind, the oldest one
//!   for an exclusive kind. The granted waiters are counted as holders before
//!   they wake up, so nobody can slip in between.
//! * Consequence: under contention the kinds alternate, and a waiter waits
//!   for at most the current holders plus one batch of the other kind (an
//!   exclusive waiter also for the exclusive waiters queued before it, each
//!   followed by at most one shared batch).
//! * **`try_lock` never jumps the queue**: it fails when anyone is waiting.
//!
//! Not reentrant: a thread holding the lock in a shared kind that asks for
//! the same kind again deadlocks once a waiter of the other kind is queued.

use crate::sync::{Condvar, Mutex, lock, wait};

/// Defines an RAII guard type `$name<'a>` borrowing a `$lock` (a type with
/// a `raw: RawLock` field) held in kind `$kind`, released on drop.
macro_rules! guard {
    ($(#[$doc:meta])* $name:ident, $lock:ty, $kind:expr) => {
        $(#[$doc])*
        #[must_use = "the lock is released when the guard is dropped"]
        pub struct $name<'a> {
            lock: &'a $lock,
        }

        impl Drop for $name<'_> {
            fn drop(&mut self) {
                self.lock.raw.unlock($kind);
            }
        }

        impl std::fmt::Debug for $name<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(stringify!($name))
            }
        }
    };
}
pub(crate) use guard;

/// The kind of a holder: 0 or 1 (index into the per-kind arrays).
pub(crate) type Kind = usize;

/// Number of kinds.
const KINDS: usize = 2;

pub(crate) struct RawLock {
    state: Mutex<State>,
    cv: Condvar,
    /// `exclusive[k]`: at most one holder of kind `k`.
    exclusive: [bool; KINDS],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct State {
    /// Current holders, all of kind `kind` (meaningless when 0).
    pub(crate) holders: usize,
    pub(crate) kind: Kind,
    /// Tickets handed out to waiters of each kind.
    next: [u64; KINDS],
    /// Tickets below this have been granted.
    serving: [u64; KINDS],
}

impl State {
    pub(crate) fn waiting(&self, k: Kind) -> u64 {
        self.next[k] - self.serving[k]
    }

    fn can_enter(&self, k: Kind, exclusive: bool) -> bool {
        self.waiting(0) == 0
            && self.waiting(1) == 0
            && (self.holders == 0 || (self.kind == k && !exclusive))
    }

    /// Hands the free lock to the waiters of `k`. Returns false if none.
    fn grant(&mut self, k: Kind, exclusive: bool) -> bool {
        let n = self.waiting(k);
        if n == 0 {
            return false;
        }
        let n = if exclusive { 1 } else { n };
        self.serving[k] += n;
        self.holders = n as usize;
        self.kind = k;
        true
    }
}

impl RawLock {
    pub(crate) fn new(exclusive: [bool; KINDS]) -> Self {
        RawLock {
            state: Mutex::new(State {
                holders: 0,
                kind: 0,
                next: [0; KINDS],
                serving: [0; KINDS],
            }),
            cv: Condvar::new(),
            exclusive,
        }
    }

    /// Blocks until the lock is held in kind `k`.
    pub(crate) fn lock(&self, k: Kind) {
        let mut s = lock(&self.state);
        if s.can_enter(k, self.exclusive[k]) {
            s.holders += 1;
            s.kind = k;
            return;
        }
        let ticket = s.next[k];
        s.next[k] += 1;
        // The granter already counted us as a holder.
        while s.serving[k] <= ticket {
            s = wait(&self.cv, s);
        }
    }

    /// Takes the lock in kind `k` if that needs no waiting and nobody waits.
    pub(crate) fn try_lock(&self, k: Kind) -> bool {
        let mut s = lock(&self.state);
        if s.can_enter(k, self.exclusive[k]) {
            s.holders += 1;
            s.kind = k;
            true
        } else {
            false
        }
    }

    /// Releases one hold of kind `k`.
    pub(crate) fn unlock(&self, k: Kind) {
        let mut s = lock(&self.state);
        debug_assert!(s.holders > 0 && s.kind == k, "unlock of a lock not held");
        s.holders -= 1;
        if s.holders > 0 {
            return;
        }
        let other = 1 - k;
        if s.grant(other, self.exclusive[other]) || s.grant(k, self.exclusive[k]) {
            drop(s);
            self.cv.notify_all();
        }
    }

    /// A copy of the state, for `Debug` and tests.
    pub(crate) fn state(&self) -> State {
        *lock(&self.state)
    }
}
