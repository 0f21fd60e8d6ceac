//! Several CPUs: per-CPU caches in front of the frame allocator and the
//! heap, and TLB shootdown with deferred frees.
//!
//! The kernel supplies what only it knows through small traits, so all of
//! this runs (and is stress- and model-checked) on the host:
//! - [`CpuLocal`]: the current CPU's index and how to mask interrupts on it.
//! - [`TlbShootdown`]: "invalidate this on those CPUs and wait for their
//!   acknowledgements" (IPIs).
//!
//! What it builds on them:
//! - [`PerCpuFrames`]: a bounded magazine of single frames per CPU in front
//!   of a [`LockedFrameAllocator`](crate::frame::LockedFrameAllocator);
//!   batches move between a CPU and the shared allocator under one lock
//!   acquisition, and every cache is drained before an allocation fails.
//! - [`PerCpuHeap`]: per-CPU, per-size-class free lists in front of any
//!   `GlobalAlloc` (kmem's [`LockedHeap`](crate::heap::LockedHeap), talc,
//!   ...). A small block is always obtained from and returned to the inner
//!   allocator with its class's canonical layout, so cached blocks of a
//!   class are interchangeable and a free on another CPU (a remote free)
//!   simply goes to that CPU's list.
//! - [`CpuSet`] and [`ActiveCpus`] (which CPUs may cache an address space's
//!   translations), [`Flush::shoot`](crate::paging::Flush::shoot) (a local
//!   flush plus one IPI round for a whole batch) and [`DeferredFrees`],
//!   which holds the frames and page tables an unmap freed until every CPU
//!   has acknowledged the shootdown.
//!
//! # Locks and interrupt context
//! Each CPU's cache sits behind its own spin lock, taken only inside
//! [`CpuLocal::without_interrupts`]: an interrupt or fault handler on the
//! same CPU cannot find it held, and other CPUs take it only to drain. A
//! wrong CPU index therefore costs speed, never correctness. Locks are
//! always taken in the order *CPU slot, then shared allocator*; the heap's
//! slot is never held across a call into its inner allocator (blocks are
//! detached under the lock and given back after it), so a CPU draining
//! another's slot never waits for a CPU that waits for a shootdown.
//!
//! | call | interrupt / fault handler |
//! | --- | --- |
//! | [`PerCpuFrames`] `allocate`, `free`, `drain_all`, the `x86_64` traits | safe (1) |
//! | [`PerCpuHeap`] `alloc`, `dealloc`, `realloc`, `drain_all` | safe (1) |
//! | [`ActiveCpus`] `enter`, `leave`, `snapshot`; [`CpuSet`] | safe (lock-free) |
//! | [`Flush::shoot`](crate::paging::Flush::shoot), [`DeferredFrees::complete`] | **not** safe (2) |
//! | [`PerCpuFrames::stats`], [`PerCpuHeap::stats`] | safe (1) |
//!
//! (1) When the kernel's [`CpuLocal::without_interrupts`] really masks
//! interrupts and every user of the inner allocator goes through the
//! per-CPU wrapper (a handler that takes `LockedHeap::lock` directly while
//! the interrupted code holds it deadlocks, as without this module). NMI
//! handlers must not allocate at all.
//! (2) A shootdown waits for other CPUs, which must take the IPI: waiting
//! with interrupts masked while another CPU shoots at this one deadlocks
//! unless the kernel's [`TlbShootdown`] serves incoming requests while it
//! waits.

mod cpu;
mod cpu_set;
mod deferred;
mod frames;
mod heap;
mod magazine;
mod pad;
pub(crate) use pad::CachePadded;
mod shootdown;
mod tlb;

pub use cpu::{CpuLocal, UniCpu};
pub use cpu_set::{ActiveCpus, CpuSet, MAX_CPUS};
pub use deferred::{DeferredFrees, ReleaseReport};
pub use frames::{PerCpuFrames, FRAME_BATCH, FRAME_CACHE};
pub use heap::{class_cache_limit, PerCpuHeap, HEAP_CACHE_BYTES};
pub use magazine::{CacheStats, Magazine};
pub use shootdown::{Acked, TlbShootdown};
pub use tlb::Tlb;
