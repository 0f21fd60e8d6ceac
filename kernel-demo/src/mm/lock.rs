//! The lock around the kernel's mapper: a test may abandon it (a fault or
//! panic ends the test with the lock held), so the next test takes it
//! over; and a CPU waiting for it serves TLB shootdowns, since the holder
//! may be shooting at that CPU.

use crate::arch::cpus::cpu_index;
use crate::arch::shootdown;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Counts [`abandon_holders`] calls: a holder of an earlier generation
/// never runs again.
static GENERATION: AtomicUsize = AtomicUsize::new(0);

/// Declares every current holder abandoned. The test framework calls it
/// as each test starts: code of an earlier test that a fault or panic
/// ended never resumes, so its locks are free to take over.
pub fn abandon_holders() {
    GENERATION.fetch_add(1, Ordering::SeqCst);
}

/// A spin lock that a test may abandon (a fault or panic ends the test with
/// the lock held): the next test takes it over, since the holder never runs
/// again. Its state may be half-changed, but that test already failed.
///
/// With several CPUs, a lock held by another CPU in the running test is
/// waited for, serving TLB shootdowns meanwhile (the holder may be shooting
/// at this CPU).
pub struct TestLock<T> {
    inner: spin::Mutex<T>,
    /// Who holds the lock: `(generation + 1) << 8 | cpu` (see
    /// [`abandon_holders`]), 0 when it was released normally.
    holder: AtomicUsize,
}

/// The guard of a [`TestLock`]: marks the lock released, then unlocks.
pub struct TestLockGuard<'a, T> {
    guard: Option<spin::MutexGuard<'a, T>>,
    holder: &'a AtomicUsize,
}

impl<T> core::ops::Deref for TestLockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.guard.as_ref().expect("held until drop")
    }
}

impl<T> core::ops::DerefMut for TestLockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.guard.as_mut().expect("held until drop")
    }
}

impl<T> Drop for TestLockGuard<'_, T> {
    fn drop(&mut self) {
        self.holder.store(0, Ordering::SeqCst);
        self.guard = None;
    }
}

impl<T> TestLock<T> {
    /// A lock around `value`.
    pub const fn new(value: T) -> Self {
        Self {
            inner: spin::Mutex::new(value),
            holder: AtomicUsize::new(0),
        }
    }

    /// Takes the lock; takes it over from an abandoned test; waits for
    /// another CPU's holder; panics with `nested` when the running test
    /// already holds it on this CPU.
    pub fn lock_or_take_over(&self, nested: &str) -> TestLockGuard<'_, T> {
        let cpu = cpu_index();
        let me = ((GENERATION.load(Ordering::SeqCst) + 1) << 8) | cpu;
        loop {
            if let Some(guard) = self.inner.try_lock() {
                self.holder.store(me, Ordering::SeqCst);
                return TestLockGuard {
                    guard: Some(guard),
                    holder: &self.holder,
                };
            }
            match self.holder.load(Ordering::SeqCst) {
                // Being taken or released right now.
                0 => {}
                h if h == me => panic!("{nested}"),
                // A holder of an earlier generation was abandoned: it never
                // runs again. Take the lock over if the holder is still the one
                // we saw.
                h if h >> 8 != me >> 8
                    && self
                        .holder
                        .compare_exchange(h, 0, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok() =>
                {
                    // SAFETY: the holder belonged to an abandoned test,
                    // which never resumes, so nobody uses the value.
                    unsafe { self.inner.force_unlock() };
                }
                _ => {}
            }
            shootdown::serve_pending();
            core::hint::spin_loop();
        }
    }

    /// Takes the lock, waiting for it.
    pub fn lock(&self) -> TestLockGuard<'_, T> {
        let guard = shootdown::lock_serving(&self.inner);
        TestLockGuard {
            guard: Some(guard),
            holder: &self.holder,
        }
    }
}
