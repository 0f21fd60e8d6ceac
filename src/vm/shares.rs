//! How many references share a frame or a swap slot, counted only when
//! more than one does.
//!
//! Counts live in 4 KiB chunks of 1024 four-byte counters, one chunk per
//! 4 MiB of physical memory that holds at least one shared frame, on the
//! kernel heap; a chunk goes when its last shared frame does. Chunks are
//! made by [`Shares::reserve`], which can fail (a fork checks before it
//! changes anything); counting in a reserved chunk never allocates. A frame with
//! one mapping costs nothing outside such chunks, and is never counted:
//! its counter stays 0. Lookups are a small tree search for the chunk plus
//! an index, so a fork of many pages counts them in a few ns each.

use alloc::alloc::{alloc_zeroed, Layout};
use alloc::boxed::Box;
use alloc::vec::Vec;
use x86_64::structures::paging::PhysFrame;

const CHUNK: usize = 1024;

struct Chunk {
    /// Mappings of each frame when shared (>= 2), else 0.
    counts: [u32; CHUNK],
    /// Frames of this chunk with a count.
    shared: u32,
}

impl Chunk {
    /// A zeroed chunk, or `None` when the heap has no room.
    fn try_new() -> Option<Box<Self>> {
        let layout = Layout::new::<Self>();
        // SAFETY: the layout is non-zero in size.
        let p = unsafe { alloc_zeroed(layout) }.cast::<Self>();
        // SAFETY: all-zero bytes are a valid `Chunk` (integers), the pointer is
        // from the global allocator with `Box`'s layout for `Chunk`.
        (!p.is_null()).then(|| unsafe { Box::from_raw(p) })
    }
}

/// Share counts of frames mapped more than once.
#[derive(Default)]
pub(crate) struct Shares {
    /// By chunk number, ascending.
    chunks: Vec<(u64, Box<Chunk>)>,
    shared: usize,
}

impl core::fmt::Debug for Shares {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Shares")
            .field("shared_frames", &self.shared)
            .field("chunks", &self.chunks.len())
            .finish()
    }
}

fn split(n: u64) -> (u64, usize) {
    (n / CHUNK as u64, (n % CHUNK as u64) as usize)
}

/// The counting key of a frame: its frame number.
pub(crate) fn frame_key(frame: PhysFrame) -> u64 {
    frame.start_address().as_u64() / crate::PAGE_SIZE
}

impl Shares {
    /// Where chunk `c` is in `chunks`, or where it would go.
    fn find(&self, c: u64) -> Result<usize, usize> {
        self.chunks.binary_search_by_key(&c, |e| e.0)
    }

    fn chunk(&self, c: u64) -> Option<&Chunk> {
        let i = self.find(c).ok()?;
        Some(&self.chunks[i].1)
    }

    /// Keeps no heap memory while nothing is shared.
    fn shrink_if_empty(&mut self) {
        if self.chunks.is_empty() {
            self.chunks = Vec::new();
        }
    }

    /// References to `key` (1 when not shared).
    pub(crate) fn count(&self, key: u64) -> u32 {
        let (c, i) = split(key);
        self.chunk(c).map_or(1, |ch| ch.counts[i].max(1))
    }

    /// Frames shared now.
    pub(crate) fn len(&self) -> usize {
        self.shared
    }

    /// Makes sure `key` can be counted without allocating; `Err` when the
    /// heap has no room for its chunk.
    pub(crate) fn reserve(&mut self, key: u64) -> Result<(), ()> {
        let (c, _) = split(key);
        if let Err(at) = self.find(c) {
            self.chunks.try_reserve(1).map_err(|_| ())?;
            let chunk = Chunk::try_new().ok_or(())?;
            self.chunks.insert(at, (c, chunk));
        }
        Ok(())
    }

    /// Gives back the chunks [`reserve`](Self::reserve) made that count nothing.
    pub(crate) fn trim(&mut self) {
        self.chunks.retain(|(_, ch)| ch.shared > 0);
        self.shrink_if_empty();
    }

    /// One more reference to `key`, whose chunk was [`reserve`](Self::reserve)d.
    pub(crate) fn add(&mut self, key: u64) {
        let (c, i) = split(key);
        let at = self.find(c).expect("a fork reserves its chunks first");
        let chunk = &mut self.chunks[at].1;
        let n = &mut chunk.counts[i];
        if *n == 0 {
            *n = 2;
            chunk.shared += 1;
            self.shared += 1;
        } else {
            *n += 1;
        }
    }

    /// One reference to `key` fewer; whether it was the last one.
    pub(crate) fn remove(&mut self, key: u64) -> bool {
        let (c, i) = split(key);
        let Ok(at) = self.find(c) else {
            return true;
        };
        let chunk = &mut self.chunks[at].1;
        match chunk.counts[i] {
            0 => true,
            2 => {
                chunk.counts[i] = 0;
                chunk.shared -= 1;
                self.shared -= 1;
                if chunk.shared == 0 {
                    self.chunks.remove(at);
                    self.shrink_if_empty();
                }
                false
            }
            _ => {
                chunk.counts[i] -= 1;
                false
            }
        }
    }
}
