//! Differential test: kmem's mapper against the `x86_64` crate's `OffsetPageTable`, both on
//! the same emulated physical memory (disjoint frame pools). Random sequences of single-page
//! and range map/unmap/protect over 4 KiB, 2 MiB and 1 GiB pages, exact huge boundaries,
//! both halves, non-canonical and misaligned inputs. After every step: success agrees,
//! a failed step changed nothing, invariants hold, every table frame is accounted for, and
//! `translate` agrees on the touched pages and a random sample.
//!
//! Miri (clean; small case counts, the tests shrink their sizes under `cfg(miri)`):
//! `MIRIFLAGS="-Zmiri-permissive-provenance -Zmiri-disable-isolation" PROPTEST_CASES=2 \
//!  cargo +nightly miri test --features testing --test paging_diff --test paging_faults --test paging_api`
//! (permissive provenance: `OffsetPageTable` turns integers into pointers; isolation off:
//! proptest's failure persistence.)

use std::collections::BTreeSet;

use kmem::paging::{LeafSize, MapFlags, PageTables, PagingError, Translation};
use kmem::testing::phys_mem::{EmulatedFrameAllocator, EmulatedMemory, EmulatedPhysMem};
use proptest::prelude::*;
use x86_64::structures::paging::mapper::{CleanUp, MappedFrame, TranslateResult};
use x86_64::structures::paging::{
    FrameAllocator, Mapper as _, OffsetPageTable, Page, PageSize, PageTableFlags as F, PhysFrame,
    Size1GiB, Size2MiB, Size4KiB, Translate,
};
use x86_64::{PhysAddr, VirtAddr};

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;
/// Four 4 GiB windows: the start and the very top of each half.
const REGIONS: [u64; 4] = [
    0,
    0x7fff_0000_0000,
    0xffff_8000_0000_0000,
    0xffff_ffff_0000_0000,
];
const POOL: usize = if cfg!(miri) { 256 } else { 6144 };

#[derive(Debug, Clone)]
enum Op {
    Map {
        size: u8,
        at: Loc,
        phys: u64,
        flags: u8,
    },
    Unmap {
        size: u8,
        at: Loc,
    },
    Protect {
        size: u8,
        at: Loc,
        flags: u8,
    },
    MapRange {
        at: Loc,
        pages: u64,
        phys: u64,
        flags: u8,
    },
    UnmapRange {
        at: Loc,
        pages: u64,
    },
    ProtectRange {
        at: Loc,
        pages: u64,
        flags: u8,
    },
    Forged {
        raw: u64,
        pages: u64,
        kind: u8,
    },
}

/// A location: region, GiB, 2 MiB slot, 4 KiB slot, chosen to hit huge boundaries.
#[derive(Debug, Clone, Copy)]
struct Loc {
    region: u8,
    gib: u8,
    mid: u16,
    low: u16,
}

impl Loc {
    fn addr(self, align: u64) -> u64 {
        let off = self.gib as u64 * G1 + self.mid as u64 * M2 + self.low as u64 * K4;
        REGIONS[self.region as usize].wrapping_add(off & !(align - 1))
    }
}

fn edge() -> impl Strategy<Value = u16> {
    prop_oneof![0u16..3, 509u16..512]
}

fn loc() -> impl Strategy<Value = Loc> {
    (0u8..4, 0u8..4, edge(), edge()).prop_map(|(region, gib, mid, low)| Loc {
        region,
        gib,
        mid,
        low,
    })
}

fn pages() -> impl Strategy<Value = u64> {
    if cfg!(miri) {
        prop_oneof![1u64..4, 511u64..514].boxed()
    } else {
        prop_oneof![
            6 => 1u64..4,
            6 => 510u64..515,
            2 => 1023u64..1026,
            1 => 262_143u64..262_146,
        ]
        .boxed()
    }
}

fn phys() -> impl Strategy<Value = u64> {
    // 1 GiB-aligned base plus an offset with interesting alignment.
    (
        1u64..8,
        prop_oneof![Just(0u64), Just(M2), Just(K4), Just(M2 + K4)],
    )
        .prop_map(|(g, o)| g * G1 + o)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3, loc(), phys(), 0u8..8).prop_map(|(size, at, phys, flags)| Op::Map { size, at, phys, flags }),
        2 => (0u8..3, loc()).prop_map(|(size, at)| Op::Unmap { size, at }),
        2 => (0u8..3, loc(), 0u8..8).prop_map(|(size, at, flags)| Op::Protect { size, at, flags }),
        3 => (loc(), pages(), phys(), 0u8..8).prop_map(|(at, pages, phys, flags)| Op::MapRange { at, pages, phys, flags }),
        2 => (loc(), pages()).prop_map(|(at, pages)| Op::UnmapRange { at, pages }),
        2 => (loc(), pages(), 0u8..8).prop_map(|(at, pages, flags)| Op::ProtectRange { at, pages, flags }),
        1 => (prop_oneof![
                0x0000_8000_0000_0000u64..0x0000_8000_0001_0000,
                0xffff_7fff_ffff_0000u64..0xffff_8000_0000_0000,
                0x7fff_ffff_e000u64..0x8000_0000_0000,
                0u64..0x10000,
            ], 1u64..4, 0u8..6)
            .prop_map(|(raw, pages, kind)| Op::Forged { raw, pages, kind }),
    ]
}

fn flags_of(n: u8) -> F {
    let p = F::PRESENT;
    match n {
        0 => p | F::NO_EXECUTE,
        1 => p | F::WRITABLE | F::NO_EXECUTE,
        2 => p,
        3 => p | F::USER_ACCESSIBLE | F::NO_EXECUTE,
        4 => p | F::WRITABLE | F::USER_ACCESSIBLE | F::NO_EXECUTE,
        5 => p | F::GLOBAL | F::NO_EXECUTE,
        6 => p | F::USER_ACCESSIBLE,
        _ => p | F::WRITABLE, // W+X: refused by kmem
    }
}

fn is_wx(f: F) -> bool {
    f.contains(F::WRITABLE) && !f.contains(F::NO_EXECUTE)
}

fn size_bytes(size: u8) -> u64 {
    [K4, M2, G1][size as usize]
}

struct World<'m> {
    mem: &'m EmulatedMemory,
    ours: PageTables<EmulatedPhysMem<'m>>,
    ours_alloc: EmulatedFrameAllocator,
    opt: OffsetPageTable<'m>,
    opt_alloc: EmulatedFrameAllocator,
    touched: BTreeSet<u64>,
    /// Whether kmem refused the last op.
    failed: bool,
}

/// Everything a failed operation must leave untouched.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    tables: Vec<(PhysFrame, Vec<u64>)>,
    in_use: usize,
}

impl<'m> World<'m> {
    fn new(mem: &'m EmulatedMemory) -> Self {
        let mut ours_alloc = mem.frame_allocator_range(0, POOL);
        let mut opt_alloc = mem.frame_allocator_range(POOL, POOL);
        let ours = PageTables::new_empty(mem.phys_mem(), &mut ours_alloc).unwrap();
        let root = opt_alloc.allocate_frame().unwrap();
        // SAFETY: `root` belongs to the OffsetPageTable's pool only; the emulated memory maps
        // physical address p at host address p (offset zero).
        let opt = unsafe {
            let t = mem.table_mut(root);
            t.zero();
            OffsetPageTable::new(t, mem.phys_offset())
        };
        World {
            mem,
            ours,
            ours_alloc,
            opt,
            opt_alloc,
            touched: BTreeSet::new(),
            failed: false,
        }
    }

    fn snapshot(&self) -> Snapshot {
        let report = self.ours.table_report().expect("invariants");
        let tables = report
            .tables
            .iter()
            .map(|&f| {
                (
                    f,
                    (0..512)
                        .map(|i| self.mem.read_u64(f.start_address() + i * 8))
                        .collect(),
                )
            })
            .collect();
        Snapshot {
            tables,
            in_use: self.ours_alloc.in_use(),
        }
    }

    fn check(&mut self, pages: &[u64], rng: &mut u64) {
        let report = self
            .ours
            .table_report()
            .unwrap_or_else(|v| panic!("invariant: {v}"));
        let mut tables: Vec<_> = report.tables.clone();
        tables.sort();
        assert_eq!(
            tables,
            self.ours_alloc.allocated_frames(),
            "table frames vs allocator"
        );
        for &p in pages {
            self.touched.insert(p);
            self.compare(p);
        }
        let all: Vec<u64> = self.touched.iter().copied().collect();
        for _ in 0..32.min(all.len()) {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            self.compare(all[(*rng % all.len() as u64) as usize]);
        }
    }

    fn compare(&self, va: u64) {
        let addr = VirtAddr::new(va);
        let ours = self.ours.translate(addr);
        match self.opt.translate(addr) {
            TranslateResult::Mapped { frame, flags, .. } => {
                let t: Translation =
                    ours.unwrap_or_else(|e| panic!("{addr:?}: ours {e:?}, opt {frame:?}"));
                let size = match frame {
                    MappedFrame::Size4KiB(_) => LeafSize::Size4KiB,
                    MappedFrame::Size2MiB(_) => LeafSize::Size2MiB,
                    MappedFrame::Size1GiB(_) => LeafSize::Size1GiB,
                };
                assert_eq!(
                    (t.frame, t.size, t.flags),
                    (frame.start_address(), size, flags),
                    "{addr:?}"
                );
            }
            other => assert!(
                matches!(ours, Err(PagingError::NotMapped { .. })),
                "{addr:?}: ours {ours:?}, opt {other:?}"
            ),
        }
    }

    /// Applies one op to both; returns the 4 KiB pages to compare.
    fn apply(&mut self, op: &Op) -> Vec<u64> {
        match *op {
            Op::Map {
                size,
                at,
                phys,
                flags,
            } => self.map_one(size, at.addr(size_bytes(size)), phys, flags_of(flags)),
            Op::Unmap { size, at } => self.unmap_one(size, at.addr(size_bytes(size))),
            Op::Protect { size, at, flags } => {
                self.protect_one(size, at.addr(size_bytes(size)), flags_of(flags))
            }
            Op::MapRange {
                at,
                pages,
                phys,
                flags,
            } => self.map_range(at.addr(K4), pages * K4, phys, flags_of(flags)),
            Op::UnmapRange { at, pages } => self.edit_range(at.addr(K4), pages * K4, None),
            Op::ProtectRange { at, pages, flags } => {
                self.edit_range(at.addr(K4), pages * K4, Some(flags_of(flags)))
            }
            Op::Forged { raw, pages, kind } => self.forged(raw, pages * K4, kind),
        }
    }

    fn map_one(&mut self, size: u8, va: u64, pa: u64, flags: F) -> Vec<u64> {
        let pa = pa & !(size_bytes(size) - 1);
        let v = VirtAddr::new(va);
        let a = &mut self.ours_alloc;
        let ours = match size {
            // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
            0 => unsafe {
                self.ours
                    .map(page::<Size4KiB>(v), frame(pa), flags.into(), a)
            },
            // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
            1 => unsafe {
                self.ours
                    .map(page::<Size2MiB>(v), frame(pa), flags.into(), a)
            },
            // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
            _ => unsafe {
                self.ours
                    .map(page::<Size1GiB>(v), frame(pa), flags.into(), a)
            },
        };
        self.failed = ours.is_err();
        if is_wx(flags) {
            assert_eq!(ours, Err(PagingError::WriteExecute { addr: v }));
            return vec![va];
        }
        // `OffsetPageTable::map_to` ORs USER into a huge parent entry before reporting it, so
        // a failing map would change its state: the model asks first.
        let free = self.opt_range_is_free(va, size_bytes(size));
        let o = &mut self.opt_alloc;
        let opt = free
            // SAFETY: leaf frames are never dereferenced; the tables live in the OPT's own pool.
            && unsafe {
                match size {
                    0 => self.opt.map_to(page::<Size4KiB>(v), frame(pa), flags, o).map(|f| f.ignore()).is_ok(),
                    1 => self.opt.map_to(page::<Size2MiB>(v), frame(pa), flags, o).map(|f| f.ignore()).is_ok(),
                    _ => self.opt.map_to(page::<Size1GiB>(v), frame(pa), flags, o).map(|f| f.ignore()).is_ok(),
                }
            };
        assert_eq!(ours.is_ok(), opt, "map {size} {v:?}: ours {ours:?}");
        if let Ok(f) = ours {
            assert!(f.is_empty(), "a fresh mapping needs no flush");
        }
        sample_pages(va, size_bytes(size))
    }

    fn unmap_one(&mut self, size: u8, va: u64) -> Vec<u64> {
        let v = VirtAddr::new(va);
        let a = &mut self.ours_alloc;
        let ours = match size {
            // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
            0 => unsafe { self.ours.unmap(page::<Size4KiB>(v), a) }
                .map(|(f, t)| (f.start_address(), t)),
            // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
            1 => unsafe { self.ours.unmap(page::<Size2MiB>(v), a) }
                .map(|(f, t)| (f.start_address(), t)),
            // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
            _ => unsafe { self.ours.unmap(page::<Size1GiB>(v), a) }
                .map(|(f, t)| (f.start_address(), t)),
        };
        let opt = match size {
            0 => self.opt.unmap(page::<Size4KiB>(v)).map(|(f, t)| {
                t.ignore();
                f.start_address()
            }),
            1 => self.opt.unmap(page::<Size2MiB>(v)).map(|(f, t)| {
                t.ignore();
                f.start_address()
            }),
            _ => self.opt.unmap(page::<Size1GiB>(v)).map(|(f, t)| {
                t.ignore();
                f.start_address()
            }),
        };
        self.failed = ours.is_err();
        match (&ours, &opt) {
            (Ok((a, flush)), Ok(b)) => {
                assert_eq!(a, b);
                assert_eq!(flush.pages().collect::<Vec<_>>(), vec![v]);
            }
            (Err(_), Err(_)) => {}
            _ => panic!("unmap {size} {v:?}: ours {ours:?} opt {opt:?}"),
        }
        self.clean_opt();
        sample_pages(va, size_bytes(size))
    }

    fn protect_one(&mut self, size: u8, va: u64, flags: F) -> Vec<u64> {
        let v = VirtAddr::new(va);
        let ours = match size {
            // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
            0 => unsafe { self.ours.protect(page::<Size4KiB>(v), flags.into()) },
            // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
            1 => unsafe { self.ours.protect(page::<Size2MiB>(v), flags.into()) },
            // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
            _ => unsafe { self.ours.protect(page::<Size1GiB>(v), flags.into()) },
        };
        self.failed = ours.is_err();
        if is_wx(flags) {
            assert_eq!(ours, Err(PagingError::WriteExecute { addr: v }));
            return vec![va];
        }
        // `OffsetPageTable::update_flags` does not check that a 2 MiB/1 GiB entry is a huge
        // leaf (it would turn a table pointer into a huge page), so the model asks first.
        let exact = self
            .opt_lookup(va)
            .is_some_and(|(b, s, _)| b == va && s == size_bytes(size));
        let opt = exact
            // SAFETY: only flags of emulated entries change.
            && unsafe {
                match size {
                    0 => self.opt.update_flags(page::<Size4KiB>(v), flags).map(|f| f.ignore()).is_ok(),
                    1 => self.opt.update_flags(page::<Size2MiB>(v), flags).map(|f| f.ignore()).is_ok(),
                    _ => self.opt.update_flags(page::<Size1GiB>(v), flags).map(|f| f.ignore()).is_ok(),
                }
            };
        assert_eq!(ours.is_ok(), opt, "protect {size} {v:?}: ours {ours:?}");
        sample_pages(va, size_bytes(size))
    }

    fn map_range(&mut self, va: u64, len: u64, pa: u64, flags: F) -> Vec<u64> {
        let v = VirtAddr::new(va);
        // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
        let ours = unsafe {
            self.ours.map_range(
                v,
                PhysAddr::new(pa),
                len,
                flags.into(),
                &mut self.ours_alloc,
            )
        };
        self.failed = ours.is_err();
        if let Some(end) = crosses_hole(va, len) {
            assert_eq!(ours.unwrap_err(), PagingError::NonCanonical { addr: end });
            return vec![va];
        }
        if is_wx(flags) {
            assert_eq!(ours, Err(PagingError::WriteExecute { addr: v }));
            return vec![va];
        }
        let free = self.opt_range_is_free(va, len);
        assert_eq!(
            ours.is_ok(),
            free,
            "map_range {v:?}+{len:#x}: ours {ours:?}"
        );
        if free {
            self.opt_map_greedy(va, pa, len, flags);
        }
        sample_pages(va, len)
    }

    fn edit_range(&mut self, va: u64, len: u64, protect: Option<F>) -> Vec<u64> {
        let v = VirtAddr::new(va);
        let ours = match protect {
            // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
            None => unsafe { self.ours.unmap_range(v, len, &mut self.ours_alloc) },
            // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
            Some(f) => unsafe {
                self.ours
                    .protect_range(v, len, f.into(), &mut self.ours_alloc)
            },
        };
        self.failed = ours.is_err();
        if let Some(end) = crosses_hole(va, len) {
            assert_eq!(ours.unwrap_err(), PagingError::NonCanonical { addr: end });
            return vec![va];
        }
        if protect.is_some_and(is_wx) {
            assert_eq!(ours, Err(PagingError::WriteExecute { addr: v }));
            return vec![va];
        }
        ours.unwrap_or_else(|e| panic!("edit {v:?}+{len:#x}: {e:?}"))
            .ignore();
        self.opt_edit(va, len, protect);
        sample_pages(va, len)
    }

    fn forged(&mut self, raw: u64, len: u64, kind: u8) -> Vec<u64> {
        // SAFETY: deliberately forged, possibly non-canonical addresses: the API must refuse them.
        let v = unsafe { VirtAddr::new_unsafe(raw) };
        let a = &mut self.ours_alloc;
        let f = MapFlags::READ;
        let r = match kind {
            // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
            0 => unsafe { self.ours.map_range(v, PhysAddr::new(G1), len, f, a) }.map(Flush::ignore),
            // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
            1 => unsafe { self.ours.unmap_range(v, len, a) }.map(Flush::ignore),
            // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
            2 => unsafe { self.ours.protect_range(v, len, f, a) }.map(Flush::ignore),
            3 => self.ours.translate(v).map(|_| ()),
            // SAFETY: as above; the forged page is what this case tests.
            4 => unsafe {
                self.ours.map(
                    Page::<Size4KiB>::from_start_address_unchecked(v),
                    frame(G1),
                    f,
                    a,
                )
            }
            .map(Flush::ignore),
            // SAFETY: tables this test owns, mapping frames no Rust object uses
            // (emulated memory); the forged page is what this case tests.
            _ => unsafe {
                self.ours
                    .unmap(Page::<Size4KiB>::from_start_address_unchecked(v), a)
            }
            .map(|(_, t)| t.ignore()),
        };
        let canonical = VirtAddr::try_new(raw).is_ok();
        let fits = crosses_hole(raw, len).is_none();
        let err = r.err();
        self.failed = err.is_some();
        if !canonical {
            assert_eq!(
                err,
                Some(PagingError::NonCanonical { addr: raw }),
                "{raw:#x} kind {kind}"
            );
        } else if !raw.is_multiple_of(K4) && kind <= 2 {
            assert_eq!(
                err,
                Some(PagingError::MisalignedVirtAddr {
                    addr: VirtAddr::new(raw),
                    align: K4
                })
            );
        } else if !fits && kind <= 2 {
            assert!(
                matches!(err, Some(PagingError::NonCanonical { .. })),
                "{raw:#x}+{len:#x}: {err:?}"
            );
        } else {
            // A valid address in a forged op: the state comparison after the step decides.
            if kind == 0 && err.is_none() {
                self.opt_map_greedy(raw, G1, len, F::PRESENT | F::NO_EXECUTE);
            }
            if kind == 1 {
                self.opt_edit(raw, len, None);
            }
            if kind == 2 {
                self.opt_edit(raw, len, Some(F::PRESENT | F::NO_EXECUTE));
            }
            if kind == 4 && err.is_none() {
                self.opt_map_greedy(raw & !(K4 - 1), G1, K4, F::PRESENT | F::NO_EXECUTE);
            }
            if kind == 5 && err.is_none() {
                let _ = self
                    .opt
                    .unmap(page::<Size4KiB>(VirtAddr::new(raw & !(K4 - 1))))
                    .map(|(_, t)| t.ignore());
                self.clean_opt();
            }
            return if canonical && raw.is_multiple_of(K4) {
                sample_pages(raw, len)
            } else {
                vec![]
            };
        }
        vec![]
    }

    fn opt_lookup(&self, va: u64) -> Option<(u64, u64, F)> {
        match self.opt.translate(VirtAddr::new(va)) {
            TranslateResult::Mapped { frame, flags, .. } => {
                Some((va & !(frame.size() - 1), frame.size(), flags))
            }
            _ => None,
        }
    }

    fn opt_range_is_free(&self, s: u64, len: u64) -> bool {
        (0..len)
            .step_by(K4 as usize)
            .all(|off| self.opt_lookup(s + off).is_none())
    }

    fn opt_map_greedy(&mut self, va: u64, pa: u64, len: u64, flags: F) {
        let mut off = 0;
        while off < len {
            let (v, p, rest) = (va + off, pa + off, len - off);
            let size = [G1, M2, K4]
                .into_iter()
                .find(|&s| v.is_multiple_of(s) && p.is_multiple_of(s) && rest >= s)
                .unwrap();
            self.opt_map(v, p, size, flags);
            off += size;
        }
    }

    fn opt_map(&mut self, va: u64, pa: u64, size: u64, flags: F) {
        let (v, o) = (VirtAddr::new(va), &mut self.opt_alloc);
        let flags = flags - F::HUGE_PAGE;
        // SAFETY: leaf frames are never dereferenced.
        unsafe {
            match size {
                K4 => self
                    .opt
                    .map_to(page::<Size4KiB>(v), frame(pa), flags, o)
                    .unwrap()
                    .ignore(),
                M2 => self
                    .opt
                    .map_to(page::<Size2MiB>(v), frame(pa), flags, o)
                    .unwrap()
                    .ignore(),
                _ => self
                    .opt
                    .map_to(page::<Size1GiB>(v), frame(pa), flags, o)
                    .unwrap()
                    .ignore(),
            }
        }
    }

    fn opt_unmap(&mut self, va: u64, size: u64) -> u64 {
        let v = VirtAddr::new(va);
        match size {
            K4 => self.opt.unmap(page::<Size4KiB>(v)).map(|(f, t)| {
                t.ignore();
                f.start_address()
            }),
            M2 => self.opt.unmap(page::<Size2MiB>(v)).map(|(f, t)| {
                t.ignore();
                f.start_address()
            }),
            _ => self.opt.unmap(page::<Size1GiB>(v)).map(|(f, t)| {
                t.ignore();
                f.start_address()
            }),
        }
        .unwrap()
        .as_u64()
    }

    /// Reference semantics of unmap_range/protect_range on the OffsetPageTable: split huge
    /// pages covered partly (same frames and flags one size down), then edit covered pages.
    fn opt_edit(&mut self, s: u64, len: u64, protect: Option<F>) {
        // u128 so the top page of the upper half has an end.
        let (s, e) = (s as u128, s as u128 + len as u128);
        let mut a = s;
        while a < e {
            let Some((base, size, flags)) = self.opt_lookup(a as u64) else {
                a += K4 as u128;
                continue;
            };
            let end = base as u128 + size as u128;
            if (base as u128) < s || end > e {
                let pa = self.opt_unmap(base, size);
                let sub = if size == G1 { M2 } else { K4 };
                for k in 0..512 {
                    self.opt_map(base + k * sub, pa + k * sub, sub, flags);
                }
                continue;
            }
            match protect {
                None => {
                    self.opt_unmap(base, size);
                }
                // SAFETY: only flags of emulated entries change.
                Some(f) => unsafe {
                    let v = VirtAddr::new(base);
                    match size {
                        K4 => self
                            .opt
                            .update_flags(page::<Size4KiB>(v), f)
                            .unwrap()
                            .ignore(),
                        M2 => self
                            .opt
                            .update_flags(page::<Size2MiB>(v), f)
                            .unwrap()
                            .ignore(),
                        _ => self
                            .opt
                            .update_flags(page::<Size1GiB>(v), f)
                            .unwrap()
                            .ignore(),
                    }
                },
            }
            a = end;
        }
        self.clean_opt();
    }

    fn clean_opt(&mut self) {
        // SAFETY: only empty tables of the OPT's own pool are freed.
        unsafe { self.opt.clean_up(&mut self.opt_alloc) };
    }
}

use kmem::paging::Flush;

fn page<S: PageSize>(v: VirtAddr) -> Page<S> {
    Page::from_start_address(v).unwrap()
}

fn frame<S: PageSize>(pa: u64) -> PhysFrame<S> {
    PhysFrame::from_start_address(PhysAddr::new(pa)).unwrap()
}

/// The end address when `[va, va + len)` leaves its canonical half.
fn crosses_hole(va: u64, len: u64) -> Option<u64> {
    let lin = va & ((1 << 48) - 1);
    let limit = if lin < 1 << 47 { 1 << 47 } else { 1 << 48 };
    (len > limit - lin).then(|| va.wrapping_add(len))
}

/// Every page of small ranges; edges, every 2 MiB boundary and a stride for large ones.
fn sample_pages(va: u64, len: u64) -> Vec<u64> {
    let lin = va & ((1 << 48) - 1);
    let limit = if lin < 1 << 47 { 1 << 47 } else { 1 << 48 };
    let len = len.min(limit - lin);
    let n = len / K4;
    let mut v: Vec<u64> = if n <= 2048 {
        (0..n).collect()
    } else {
        (0..n)
            .filter(|i| *i < 4 || n - i <= 4 || i.is_multiple_of(509) || (va / K4 + i) % 512 < 2)
            .collect()
    };
    v.iter_mut().for_each(|i| *i = va + *i * K4);
    v
}

fn run(ops: &[Op]) {
    let mem = EmulatedMemory::new(2 * POOL);
    let mut w = World::new(&mem);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for op in ops {
        let before = w.snapshot();
        let pages = w.apply(op);
        if w.failed {
            assert_eq!(w.snapshot(), before, "failed op {op:?} changed the state");
        }
        w.check(&pages, &mut rng);
    }
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok());
    ProptestConfig {
        cases: cases.unwrap_or(if cfg!(miri) { 2 } else { 48 }),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]
    #[test]
    fn differential_against_offset_page_table(ops in prop::collection::vec(op(), 1..if cfg!(miri) { 6 } else { 40 })) {
        run(&ops);
    }
}

/// A failed range map changes nothing: checked on every failing op of a fixed scenario.
#[test]
fn failed_ops_leave_state_untouched() {
    let mem = EmulatedMemory::new(2 * POOL);
    let mut w = World::new(&mem);
    let a = &mut w.ours_alloc;
    let base = VirtAddr::new(0x4000_0000);
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    unsafe {
        w.ours.map(
            page::<Size4KiB>(base + 0x20_1000u64),
            frame(0x5000),
            MapFlags::READ,
            a,
        )
    }
    .unwrap()
    .ignore();
    let before = w.snapshot();
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    let err = unsafe {
        w.ours.map_range(
            base,
            PhysAddr::new(0),
            0x40_0000,
            MapFlags::READ,
            &mut w.ours_alloc,
        )
    }
    .unwrap_err();
    assert_eq!(
        err,
        PagingError::AlreadyMapped {
            addr: base + 0x20_1000u64,
            frame: PhysAddr::new(0x5000),
            size: LeafSize::Size4KiB
        }
    );
    assert_eq!(w.snapshot(), before);
    let wx = MapFlags::READ.writable().executable();
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    let err = unsafe {
        w.ours
            .map_range(base, PhysAddr::new(0), 0x40_0000, wx, &mut w.ours_alloc)
    };
    assert_eq!(err.unwrap_err(), PagingError::WriteExecute { addr: base });
    assert_eq!(w.snapshot(), before);
}
