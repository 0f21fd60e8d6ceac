//! The kernel image's own layout, read from its ELF program headers (the
//! first loadable segment starts with the ELF header, at `__ehdr_start`),
//! so the kernel can map itself W^X: text read+execute, rodata read-only,
//! data and bss read-write, all else non-executable.

const PT_LOAD: u32 = 1;
const PF_X: u32 = 1;
const PF_W: u32 = 2;

extern "C" {
    static __ehdr_start: u8;
}

/// One loadable segment, page-rounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// First byte (page-aligned down). Virtual = physical in this kernel.
    pub start: u64,
    /// One past the last byte (page-aligned up).
    pub end: u64,
    /// Writable data or bss.
    pub writable: bool,
    /// Code.
    pub executable: bool,
}

fn read<T: Copy>(offset: usize) -> T {
    let base = &raw const __ehdr_start;
    // SAFETY: the ELF header and program headers lie inside the first
    // loadable segment, mapped and never written; callers read fields at
    // offsets taken from the ELF64 layout. Unaligned reads are used.
    unsafe { base.add(offset).cast::<T>().read_unaligned() }
}

/// The loadable segments of the running kernel.
pub fn segments() -> impl Iterator<Item = Segment> {
    let phoff: u64 = read(32);
    let phentsize: u16 = read(54);
    let phnum: u16 = read(56);
    (0..usize::from(phnum)).filter_map(move |i| {
        let ph = phoff as usize + i * usize::from(phentsize);
        let kind: u32 = read(ph);
        let flags: u32 = read(ph + 4);
        let vaddr: u64 = read(ph + 16);
        let memsz: u64 = read(ph + 40);
        (kind == PT_LOAD && memsz > 0).then(|| Segment {
            start: vaddr & !0xfff,
            end: (vaddr + memsz + 0xfff) & !0xfff,
            writable: flags & PF_W != 0,
            executable: flags & PF_X != 0,
        })
    })
}
