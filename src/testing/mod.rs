//! Host-only helpers shared by tests, benches and fuzzing (feature `testing`).
//!
//! Written once here, never copied into each test.

pub mod arena;
#[cfg(feature = "vm")]
pub mod huge_frames;
pub mod mmu;
pub mod phys_mem;
pub mod rng;
pub mod smp;
pub mod tlb;
