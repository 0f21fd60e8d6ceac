//! An arena-backed heap page source for host tests and benchmarks.
