//! Devices every layer uses: the serial console and QEMU's exit port.
//! (The virtio-blk swap disk needs kmem's frames for DMA: `mm::swap_disk`.)

pub mod console;
pub mod qemu;
