//! The synchronisation primitives the crate is built on: std's, or loom's
//! when compiled with `--cfg loom` so the model tests can explore every
//! interleaving of the real lock code.
//!
//! `Arc`/`Weak` stay std's in both builds: the table needs `Weak`, which loom
//! does not model, and reference counts are not what the models check.

#[cfg(loom)]
pub(crate) use loom::sync::{Condvar, Mutex, MutexGuard};
#[cfg(loom)]
pub(crate) use loom::thread::yield_now;

#[cfg(not(loom))]
pub(crate) use std::sync::{Condvar, Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::thread::yield_now;

/// Locks `m`, ignoring poisoning: the crate's critical sections only do
/// counter arithmetic and cannot leave the state half-updated.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Waits on `cv`, ignoring poisoning (see [`lock`]).
pub(crate) fn wait<'a, T>(cv: &Condvar, g: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(g)
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
