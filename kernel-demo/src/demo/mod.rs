//! The demo's longer steps, one file each (the short ones stay in `main.rs`).

pub mod audit;
pub mod faults;
pub mod huge;
pub mod objects;
pub mod processes;
pub mod smp;
pub mod swap;
pub mod workingsets;
