//! A recording `Mmu` for host tests: remembers CR3 writes and flushes.
