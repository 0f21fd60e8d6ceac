//! # kmem — a memory manager for x86_64 kernels
//!
//! Three layers, each usable alone, data flowing one way:
//!
//! ```text
//! boot memory map ──► memory_map (sanitize, reserve) ──► frame (bitmap allocator)
//!                                                           │ frames for tables
//!                                                           ▼
//!                  paging (mapper over a PhysMem + an Mmu) ──► AddressSpace
//!                                                           │ pages for the heap
//!                                                           ▼
//!                            heap (PageSource → slabs / large) ──► GlobalAlloc
//! ```
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

#[cfg(feature = "testing")]
extern crate std;

pub mod frame;
pub mod heap;
pub mod memory_map;
pub mod paging;
#[cfg(feature = "testing")]
pub mod testing;
