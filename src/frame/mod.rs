//! Physical frame allocation: a bitmap allocator with a summary level.
