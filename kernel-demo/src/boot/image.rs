//! The kernel image's own layout, from the symbols of `kernel.ld`, so the
//! kernel can map itself W^X: text read+execute, rodata read-only, data and
//! bss read-write, the last two non-executable.

/// Virtual base of the kernel image: virtual = physical + this.
pub const KERNEL_OFFSET: u64 = 0xFFFF_FFFF_8000_0000;

extern "C" {
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __data_start: u8;
    static __data_end: u8;
}

/// One page-aligned section of the running kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// What it holds.
    pub name: &'static str,
    /// First virtual address (page-aligned).
    pub start: u64,
    /// One past the last byte (page-aligned).
    pub end: u64,
    /// Writable data or bss.
    pub writable: bool,
    /// Code.
    pub executable: bool,
}

impl Segment {
    /// Its physical start address.
    pub fn phys_start(&self) -> u64 {
        self.start - KERNEL_OFFSET
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether `addr` lies inside.
    pub fn contains_addr(&self, addr: u64) -> bool {
        (self.start..self.end).contains(&addr)
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// The text, rodata and data (with bss) sections of the running kernel.
pub fn segments() -> [Segment; 3] {
    // Linker-script symbols: only their addresses are taken.
    let addr = |p: *const u8| p as u64;
    [
        Segment {
            name: "text",
            start: addr(&raw const __text_start),
            end: addr(&raw const __text_end),
            writable: false,
            executable: true,
        },
        Segment {
            name: "rodata",
            start: addr(&raw const __rodata_start),
            end: addr(&raw const __rodata_end),
            writable: false,
            executable: false,
        },
        Segment {
            name: "data+bss",
            start: addr(&raw const __data_start),
            end: addr(&raw const __data_end),
            writable: true,
            executable: false,
        },
    ]
}
