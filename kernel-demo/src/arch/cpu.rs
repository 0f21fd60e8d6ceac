//! CPU feature setup done once at boot.

use x86_64::registers::control::{Cr0, Cr0Flags, Cr4, Cr4Flags};
use x86_64::registers::model_specific::{Efer, EferFlags};

/// CPUs the kernel handles at most (per-CPU tables in `gdt`, `recover` and
/// `smp` are this long).
pub const MAX_CPUS: usize = 16;

/// Whether the CPU supports the no-execute bit.
pub fn has_nx() -> bool {
    let ext = core::arch::x86_64::__cpuid(0x8000_0001);
    ext.edx & (1 << 20) != 0
}

/// Whether the CPU supports 1 GiB pages.
pub fn has_1gib_pages() -> bool {
    let ext = core::arch::x86_64::__cpuid(0x8000_0001);
    ext.edx & (1 << 26) != 0
}

/// Turns on what memory protection relies on: CR0.WP (ring 0 honours
/// read-only pages), EFER.NXE (the NX bit is honoured) when supported, and
/// CR4.PGE (global kernel mappings survive address-space switches).
pub fn init() {
    // SAFETY: setting WP only makes the kernel's own writes to read-only
    // pages fault, which is what the protection tests expect.
    unsafe { Cr0::update(|f| f.insert(Cr0Flags::WRITE_PROTECT)) };
    // SAFETY: global pages only keep kernel TLB entries across CR3 writes;
    // every full flush goes through a PGE toggle.
    unsafe { Cr4::update(|f| f.insert(Cr4Flags::PAGE_GLOBAL)) };
    if has_nx() {
        // SAFETY: NXE is supported (checked); no page has NX set yet, so
        // nothing that runs now becomes non-executable.
        unsafe { Efer::update(|f| f.insert(EferFlags::NO_EXECUTE_ENABLE)) };
    }
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects and is available on x86_64.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// TSC ticks per millisecond, measured once against the PIT (channel 2,
/// a 5 ms one-shot); `None` when the PIT does not answer.
pub fn tsc_per_ms() -> Option<u64> {
    static MEASURED: spin::Once<Option<u64>> = spin::Once::new();
    *MEASURED.call_once(measure_tsc)
}

fn measure_tsc() -> Option<u64> {
    use x86_64::instructions::port::Port;
    const TICKS_5MS: u16 = 5_966; // 1.193182 MHz x 5 ms
    let mut gate = Port::<u8>::new(0x61);
    let mut command = Port::<u8>::new(0x43);
    let mut channel2 = Port::<u8>::new(0x42);
    // SAFETY: ports 0x61/0x42/0x43 program PIT channel 2 (the speaker
    // timer); the speaker output stays off, nothing else uses it.
    let cycles = unsafe {
        let g = gate.read();
        gate.write((g & !0x02) | 0x01);
        command.write(0b1011_0000); // channel 2, lo/hi byte, mode 0
        channel2.write(TICKS_5MS as u8);
        channel2.write((TICKS_5MS >> 8) as u8);
        let g = gate.read();
        gate.write(g & !0x01);
        gate.write(g | 0x01); // rising gate edge starts the count
        let start = rdtsc();
        let mut spins = 0u64;
        while gate.read() & 0x20 == 0 {
            spins += 1;
            if spins > 100_000_000 {
                return None;
            }
        }
        rdtsc() - start
    };
    Some(cycles / 5).filter(|&c| c > 0)
}
