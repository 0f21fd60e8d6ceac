//! Host-side launcher for kmem kernels.
