//! Memory, through kmem: the frame allocator and the active mapper, the
//! kernel's own address space, the heap as the global allocator, and the
//! per-CPU caches and shootdowns of several CPUs.

pub mod heap;
pub mod kernel_space;
pub mod memory;
pub mod mixed;
pub mod smp;
