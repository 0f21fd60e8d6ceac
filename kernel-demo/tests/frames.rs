//! kmem::frame on QEMU's real memory map: built from the PVH map with the
//! kernel's reservations, every free frame allocated, written with its own
//! pattern, read back and freed; typed errors for bad frees; aligned runs.
// kmem-vm: mem=128M mem=4G
#![no_std]
#![no_main]

use kernel_demo::boot;
use kernel_demo::mm::memory::{init, reserved_ranges, FRAMES};
use kmem::frame::{BitmapFrameAllocator, FrameError};
use x86_64::structures::paging::PhysFrame;
use x86_64::PhysAddr;

/// Runs `f` on the kernel's frame allocator, then checks its invariants.
fn with_frames<R>(f: impl FnOnce(&mut BitmapFrameAllocator<'static>) -> R) -> R {
    init().unwrap_or_else(|e| panic!("{e}"));
    FRAMES.with(|frames| {
        let result = f(frames);
        frames
            .check_invariants()
            .unwrap_or_else(|e| panic!("invariant broken: {e}"));
        result
    })
}

fn frame_at(addr: u64) -> PhysFrame {
    PhysFrame::containing_address(PhysAddr::new(addr))
}

/// The word pattern of word `i` of the frame at `addr`.
fn pattern(addr: u64, i: u64) -> u64 {
    (addr ^ 0x9e37_79b9_7f4a_7c15)
        .wrapping_mul(i * 2 + 1)
        .rotate_left(i as u32 % 63)
}

fn is_reserved(addr: u64) -> bool {
    reserved_ranges(boot::info()).any(|(start, len)| addr + 4096 > start && addr < start + len)
}

kernel_demo::test_kernel! {
    /// The allocator's counts agree with the PVH map minus reservations.
    fn built_from_pvh_map() {
        let usable = boot::info().usable_bytes() / 4096;
        with_frames(|frames| {
            let s = frames.stats();
            assert!(s.total <= usable, "{s:?} vs {usable} usable frames");
            assert!(s.free + s.reserved + s.used == s.total, "{s:?}");
            assert!(s.free > usable / 2, "{s:?}");
            assert_eq!(s.used, 0);
        });
    }

    /// Every free frame is handed out once, never a reserved one, holds its
    /// own pattern, and comes back: the free count returns exactly.
    fn every_frame_written_read_back_and_freed() {
        with_frames(|frames| {
            let before = frames.stats();
            // The allocated frames form a list through their first word,
            // so no memory beyond the frames themselves is needed.
            let mut head = 0u64;
            let mut count = 0u64;
            while let Ok(frame) = frames.allocate() {
                let addr = frame.start_address().as_u64();
                assert!(!is_reserved(addr), "reserved frame {addr:#x} handed out");
                let words = boot::phys_to_virt(addr).cast::<u64>();
                // SAFETY: the frame is ours (just allocated), in the direct map.
                unsafe {
                    words.write_volatile(head);
                    for i in 1..512 {
                        words.add(i).write_volatile(pattern(addr, i as u64));
                    }
                }
                head = addr;
                count += 1;
            }
            assert_eq!(count, before.free, "allocated count vs free count");
            assert_eq!(frames.stats().free, 0);
            while head != 0 {
                let words = boot::phys_to_virt(head).cast::<u64>().cast_const();
                // SAFETY: every frame on the list is still allocated to us.
                let next = unsafe { words.read_volatile() };
                for i in 1..512 {
                    // SAFETY: as above.
                    let got = unsafe { words.add(i).read_volatile() };
                    assert_eq!(got, pattern(head, i as u64), "frame {head:#x} word {i}");
                }
                // SAFETY: a frame this test owns and no longer uses (the allocator's checks are what is tested).
                unsafe { frames.free(frame_at(head)) }.unwrap_or_else(|e| panic!("free {head:#x}: {e}"));
                head = next;
                count -= 1;
            }
            assert_eq!(count, 0);
            assert_eq!(frames.stats(), before);
        });
    }

    /// A double free, a free of a reserved frame and a free outside RAM are
    /// refused with typed errors, and change nothing.
    fn bad_frees_are_refused() {
        with_frames(|frames| {
            let frame = frames.allocate().expect("a frame");
            // SAFETY: a frame this test owns and no longer uses (the allocator's checks are what is tested).
            unsafe { frames.free(frame) }.expect("first free");
            let before = frames.stats();
            // SAFETY: a frame this test owns and no longer uses (the allocator's checks are what is tested).
            assert!(matches!(unsafe { frames.free(frame) }, Err(FrameError::AlreadyFree { .. })));
            let (image, _) = boot::info().kernel_image();
            // SAFETY: a frame this test owns and no longer uses (the allocator's checks are what is tested).
            assert!(unsafe { frames.free(frame_at(image)) }.is_err(), "kernel image frame freed");
            assert!(matches!(
                // SAFETY: a frame this test owns and no longer uses (the allocator's checks are what is tested).
                unsafe { frames.free(frame_at(1 << 45)) },
                Err(FrameError::OutsideMap { .. })
            ));
            assert_eq!(frames.stats(), before);
        });
    }

    /// 2 MiB-aligned runs, and a DMA run below 16 MiB.
    fn aligned_and_limited_runs() {
        with_frames(|frames| {
            let before = frames.stats();
            let run = frames.allocate_contiguous(512, 2 << 20, None).expect("2 MiB run");
            assert_eq!(run.start.start_address().as_u64() % (2 << 20), 0);
            assert_eq!(run.end - run.start, 512);
            let dma = frames.allocate_contiguous(16, 64 << 10, Some(16 << 20)).expect("DMA run");
            assert!(dma.end.start_address().as_u64() <= 16 << 20);
            // SAFETY: frames this test owns and no longer uses (the allocator's checks are what is tested).
            unsafe { frames.free_range(run) }.expect("free run");
            // SAFETY: frames this test owns and no longer uses (the allocator's checks are what is tested).
            unsafe { frames.free_range(dma) }.expect("free DMA run");
            assert_eq!(frames.stats(), before);
        });
    }

    /// With more than 2 GiB of RAM, the gigabyte at 1 GiB is free and
    /// aligned. With less RAM the request fails cleanly.
    fn gigabyte_run_when_ram_allows() {
        with_frames(|frames| {
            let before = frames.stats();
            let result = frames.allocate_contiguous(1 << 18, 1 << 30, None);
            if boot::info().usable_bytes() > 2 << 30 {
                let run = result.expect("1 GiB run");
                assert_eq!(run.start.start_address().as_u64() % (1 << 30), 0);
                // SAFETY: frames this test owns and no longer uses (the allocator's checks are what is tested).
                unsafe { frames.free_range(run) }.expect("free");
            } else {
                assert!(matches!(result, Err(FrameError::OutOfFrames { .. })), "{result:?}");
            }
            assert_eq!(frames.stats(), before);
        });
    }
}
