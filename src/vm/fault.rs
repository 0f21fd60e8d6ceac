//! A page fault as the CPU reports it, and what resolving it did.

/// The access that faulted, decoded from the #PF error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultAccess {
    /// The page was present (a protection fault), bit 0.
    pub present: bool,
    /// A write, bit 1 (else a read or fetch).
    pub write: bool,
    /// From ring 3, bit 2.
    pub user: bool,
    /// A reserved bit was set in a table entry, bit 3.
    pub reserved_bit: bool,
    /// An instruction fetch, bit 4.
    pub exec: bool,
}

impl FaultAccess {
    /// Decodes the error code the CPU pushes for #PF. Bits it does not
    /// know (protection keys, shadow stacks, SGX) are ignored.
    pub const fn from_error_code(code: u64) -> Self {
        Self {
            present: code & 1 != 0,
            write: code & 2 != 0,
            user: code & 4 != 0,
            reserved_bit: code & 8 != 0,
            exec: code & 16 != 0,
        }
    }

    /// A read from ring `user ? 3 : 0` of a page not present.
    pub const fn read(user: bool) -> Self {
        Self {
            present: false,
            write: false,
            user,
            reserved_bit: false,
            exec: false,
        }
    }

    /// A write from ring `user ? 3 : 0` of a page not present.
    pub const fn write(user: bool) -> Self {
        Self {
            write: true,
            ..Self::read(user)
        }
    }

    /// An instruction fetch from ring `user ? 3 : 0` of a page not present.
    pub const fn exec(user: bool) -> Self {
        Self {
            exec: true,
            ..Self::read(user)
        }
    }
}

/// What resolving a fault did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOutcome {
    /// A private zeroed frame was mapped (first write, or a write to the
    /// zero page).
    ZeroFilled,
    /// The shared zero frame was mapped read-only (first read).
    ZeroPageMapped,
    /// A zeroed 2 MiB run was mapped by one 2 MiB leaf (the first touch
    /// of an aligned 2 MiB range, transparent huge pages on).
    HugeFilled,
    /// A shared frame was copied into a private one.
    CopiedOnWrite,
    /// The frame was no longer shared: write access was given back.
    ReusedOnWrite,
    /// A fixed area's frame was mapped.
    FixedMapped,
    /// The page was read back from swap (a major fault).
    SwappedIn,
    /// A shared mapping's page of a memory object was mapped: its cached
    /// frame, or a frame just read through the object's pager.
    ObjectMapped,
    /// A private mapping's page of a memory object was copied from the
    /// object's page into a frame of the space's own.
    ObjectCopied,
    /// The page already allowed the access (a stale TLB entry): the
    /// flush drops it.
    Spurious,
    /// Another CPU is moving the page (reading it in from swap, or writing
    /// it out): nothing was done. Return from the fault; the access faults
    /// again until the transfer ends (Linux's `VM_FAULT_RETRY`). Returning,
    /// rather than spinning in the handler, lets this CPU take the TLB
    /// shootdown the moving CPU may be waiting for.
    InTransit,
}
