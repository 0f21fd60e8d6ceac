//! Memory, through kmem: the frame allocator and the active mapper, the
//! kernel's own address space, and the heap as the global allocator.

pub mod heap;
pub mod kernel_space;
pub mod memory;
