//! Devices: the serial console, QEMU's exit port, the virtio-blk swap disk.

pub mod console;
pub mod qemu;
pub mod virtio;
