//! Memory, through kmem: the frame allocator and the active mapper, the
//! kernel's own address space, the heap as the global allocator, the
//! mapper's lock, kmem's per-CPU caches and shootdown unmaps, and the
//! virtio-blk swap disk (its DMA memory is kmem's frames).

pub mod heap;
pub mod kernel_space;
pub mod lock;
pub mod memory;
pub mod mixed;
pub mod percpu;
pub mod swap_disk;
