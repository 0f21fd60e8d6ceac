//! The swap disk: a virtio-blk PCI device (QEMU's q35 machine) driven by
//! the `virtio-drivers` crate, as a `kmem::vm` swap device. PCI
//! configuration space (ECAM) and the device's BARs are mapped through
//! kmem's mapper, uncached and non-executable, at their direct-map
//! addresses; DMA memory is contiguous frames from kmem's frame allocator.

use crate::boot::{phys_to_virt, DIRECT_MAP};
use crate::mm::memory::{with_memory, FRAMES};
use core::ptr::NonNull;
use kmem::paging::{MapFlags, PagingError};
use kmem::vm::{SwapDevice, SwapIoError};
use virtio_drivers::device::blk::{VirtIOBlk, SECTOR_SIZE};
use virtio_drivers::transport::pci::bus::{Cam, Command, MmioCam, PciRoot};
use virtio_drivers::transport::pci::{virtio_device_type, PciTransport};
use virtio_drivers::transport::DeviceType;
use virtio_drivers::{BufferDirection, Hal, PhysAddr};
use x86_64::structures::paging::PhysFrame;
use x86_64::VirtAddr;

/// q35's PCI configuration space (ECAM), 256 buses.
const ECAM: u64 = 0xB000_0000;
const ECAM_SIZE: u64 = 256 << 20;
/// Pages of the bounce buffer: one cluster of swap pages per request.
const BOUNCE_PAGES: usize = kmem::vm::swap::CLUSTER;

/// Maps `[paddr, paddr + size)` (device memory) at its direct-map address,
/// uncached and no-execute, unless it is mapped already.
fn map_mmio(paddr: u64, size: u64) -> Result<*mut u8, PagingError> {
    let start = paddr & !0xfff;
    let end = (paddr + size + 0xfff) & !0xfff;
    with_memory(|m| {
        let mut a = start;
        while a < end {
            let va = VirtAddr::new(DIRECT_MAP + a);
            if m.mapper.translate(va).is_err() {
                // The longest unmapped run from here, mapped in one go.
                let mut b = a + 4096;
                while b < end && m.mapper.translate(VirtAddr::new(DIRECT_MAP + b)).is_err() {
                    b += 4096;
                }
                let flags = MapFlags::READ_WRITE.no_cache().global();
                // SAFETY: PCI configuration and BAR space of the virtio device, which only
                // this driver reaches.
                unsafe {
                    m.mapper
                        .map_range(va, x86_64::PhysAddr::new(a), b - a, flags, &mut m.frames)
                }?
                .flush(&mut m.mmu);
                a = b;
            } else {
                a += 4096;
            }
        }
        Ok(phys_to_virt(paddr))
    })
}

/// `virtio-drivers`' view of the machine: kmem's frames for DMA, kmem's
/// mapper for device memory.
pub struct KernelHal;

// SAFETY: `dma_alloc` returns zeroed, contiguous, page-aligned frames that
// nothing else uses until `dma_dealloc`; `mmio_phys_to_virt` returns a
// mapping of exactly the device memory asked for; `share` returns the
// physical address the device can reach the buffer at.
unsafe impl Hal for KernelHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let range = FRAMES
            .with(|f| f.allocate_contiguous(pages as u64, 4096, None))
            .expect("frames for virtio DMA");
        let paddr = range.start.start_address().as_u64();
        let vaddr = phys_to_virt(paddr);
        // SAFETY: fresh frames, reached through the direct map.
        unsafe { vaddr.write_bytes(0, pages * 4096) };
        (
            paddr,
            NonNull::new(vaddr).expect("the direct map is not at 0"),
        )
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        let start = PhysFrame::containing_address(x86_64::PhysAddr::new(paddr));
        let range = PhysFrame::range(start, start + pages as u64);
        // SAFETY: `dma_dealloc`'s contract: the device and the driver are done
        // with the buffer, allocated by `dma_alloc` from these frames.
        let freed = FRAMES.with(|f| unsafe { f.free_range(range) });
        match freed {
            Ok(()) => 0,
            Err(_) => -1,
        }
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        let p = map_mmio(paddr, size as u64).expect("mapping device memory");
        NonNull::new(p).expect("the direct map is not at 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        let va = buffer.as_ptr().cast::<u8>() as u64;
        if (DIRECT_MAP..DIRECT_MAP + (1 << 46)).contains(&va) {
            return va - DIRECT_MAP;
        }
        // Small request headers on the stack or heap: within one page.
        with_memory(|m| m.mapper.translate(VirtAddr::new(va)))
            .map(|t| t.phys.as_u64())
            .expect("a shared buffer is mapped")
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// The swap disk as a `kmem::vm::SwapDevice`: slot `s` is sectors
/// `8s..8s+8`; a request of consecutive slots goes through one bounce
/// buffer of contiguous frames, so it is one device request.
pub struct VirtioSwap {
    blk: VirtIOBlk<KernelHal, PciTransport>,
    bounce: *mut u8,
    slots: u64,
}

// SAFETY: the bounce buffer is owned by this value alone (frames taken at
// creation, never shared); the driver state moves with it.
unsafe impl Send for VirtioSwap {}

impl VirtioSwap {
    /// Finds the first virtio-blk device on PCI bus 0 and starts it.
    pub fn find() -> Option<Self> {
        let ecam = map_mmio(ECAM, ECAM_SIZE).ok()?;
        // SAFETY: 256 MiB of ECAM are mapped (uncached) at `ecam` for good;
        // nothing else accesses configuration space.
        let mut root = PciRoot::new(unsafe { MmioCam::new(ecam, Cam::Ecam) });
        let df = root
            .enumerate_bus(0)
            .find(|(_, info)| virtio_device_type(info) == Some(DeviceType::Block))?
            .0;
        root.set_command(
            df,
            Command::IO_SPACE | Command::MEMORY_SPACE | Command::BUS_MASTER,
        );
        let transport = PciTransport::new::<KernelHal, _>(&mut root, df).ok()?;
        let blk = VirtIOBlk::<KernelHal, _>::new(transport).ok()?;
        let slots = blk.capacity() * SECTOR_SIZE as u64 / 4096;
        let (_, bounce) = KernelHal::dma_alloc(BOUNCE_PAGES, BufferDirection::Both);
        Some(Self {
            blk,
            bounce: bounce.as_ptr(),
            slots,
        })
    }

    fn bounce(&mut self, pages: usize) -> &mut [u8] {
        // SAFETY: BOUNCE_PAGES frames at `bounce`, owned by `self`.
        unsafe { core::slice::from_raw_parts_mut(self.bounce, pages.min(BOUNCE_PAGES) * 4096) }
    }

    /// Writes `buf` (whole pages) at slot `first`: raw device access for
    /// benchmarks, bypassing kmem::vm.
    pub fn raw_write(&mut self, first: u64, pages: usize) -> bool {
        let block = first as usize * (4096 / SECTOR_SIZE);
        let buf = self.bounce(pages);
        // SAFETY: reborrow of the bounce buffer only for this call.
        let buf = unsafe { core::slice::from_raw_parts(buf.as_ptr(), buf.len()) };
        self.blk.write_blocks(block, buf).is_ok()
    }

    /// Reads `pages` pages at slot `first` into the bounce buffer.
    pub fn raw_read(&mut self, first: u64, pages: usize) -> bool {
        let block = first as usize * (4096 / SECTOR_SIZE);
        let buf = self.bounce(pages);
        // SAFETY: reborrow of the bounce buffer only for this call.
        let buf = unsafe { core::slice::from_raw_parts_mut(buf.as_mut_ptr(), buf.len()) };
        self.blk.read_blocks(block, buf).is_ok()
    }
}

impl Drop for VirtioSwap {
    fn drop(&mut self) {
        let paddr = self.bounce as u64 - DIRECT_MAP;
        // SAFETY: the bounce buffer came from `dma_alloc` with BOUNCE_PAGES
        // pages and is not in use (no request is running).
        unsafe { KernelHal::dma_dealloc(paddr, NonNull::new_unchecked(self.bounce), BOUNCE_PAGES) };
    }
}

impl VirtioSwap {
    /// The error of a request of `pages` slots from `first`, if the request
    /// does not fit the bounce buffer or the disk.
    fn check(&self, first: u64, pages: usize) -> Result<SwapIoError, SwapIoError> {
        let err = SwapIoError { slot: first, pages };
        if pages > BOUNCE_PAGES || first + pages as u64 > self.slots {
            Err(err)
        } else {
            Ok(err)
        }
    }
}

/// A [`VirtioSwap`] as kmem's swap device: one request at a time (the
/// driver's queue is used synchronously), so behind a lock.
pub struct LockedDisk(spin::Mutex<VirtioSwap>);

impl VirtioSwap {
    /// Capacity in 4 KiB slots.
    pub fn slots(&self) -> u64 {
        self.slots
    }

    /// This disk as a swap device for several CPUs.
    pub fn locked(self) -> LockedDisk {
        LockedDisk(spin::Mutex::new(self))
    }
}

impl SwapDevice for LockedDisk {
    fn slots(&self) -> u64 {
        self.0.lock().slots
    }

    fn write(&self, first: u64, pages: &[&[u8; 4096]]) -> Result<(), SwapIoError> {
        self.0.lock().write_pages(first, pages)
    }

    fn read(&self, first: u64, pages: &mut [&mut [u8; 4096]]) -> Result<(), SwapIoError> {
        self.0.lock().read_pages(first, pages)
    }
}

impl VirtioSwap {
    /// Writes `pages` to the slots from `first` on.
    pub fn write_pages(&mut self, first: u64, pages: &[&[u8; 4096]]) -> Result<(), SwapIoError> {
        let err = self.check(first, pages.len())?;
        if let [page] = pages {
            // One page is contiguous already: no bounce copy.
            let block = first as usize * (4096 / SECTOR_SIZE);
            return self.blk.write_blocks(block, &page[..]).map_err(|_| err);
        }
        let buf = self.bounce(pages.len());
        for (i, p) in pages.iter().enumerate() {
            buf[i * 4096..(i + 1) * 4096].copy_from_slice(&p[..]);
        }
        if self.raw_write(first, pages.len()) {
            Ok(())
        } else {
            Err(err)
        }
    }

    /// Reads the slots from `first` on into `pages`.
    pub fn read_pages(
        &mut self,
        first: u64,
        pages: &mut [&mut [u8; 4096]],
    ) -> Result<(), SwapIoError> {
        let err = self.check(first, pages.len())?;
        if let [page] = pages {
            let block = first as usize * (4096 / SECTOR_SIZE);
            return self.blk.read_blocks(block, &mut page[..]).map_err(|_| err);
        }
        if !self.raw_read(first, pages.len()) {
            return Err(err);
        }
        let buf = self.bounce(pages.len());
        for (i, p) in pages.iter_mut().enumerate() {
            p.copy_from_slice(&buf[i * 4096..(i + 1) * 4096]);
        }
        Ok(())
    }
}
