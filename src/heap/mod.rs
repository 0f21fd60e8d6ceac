//! The kernel heap: size-class slabs, a large-object heap, `GlobalAlloc`.
