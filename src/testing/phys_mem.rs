//! Emulated physical memory backed by a host buffer.
