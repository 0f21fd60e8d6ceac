//! How many references share a frame or a swap slot, counted only when
//! more than one does.
//!
//! Counts live in 4 KiB chunks of 1024 four-byte counters, one chunk per
//! 4 MiB of physical memory that holds at least one shared frame, on the
//! kernel heap; a chunk goes when its last shared frame does. A frame with
//! one mapping costs nothing outside such chunks, and is never counted:
//! its counter stays 0. Lookups are a small tree search for the chunk plus
//! an index, so a fork of many pages counts them in a few ns each.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use x86_64::structures::paging::PhysFrame;

const CHUNK: usize = 1024;

struct Chunk {
    /// Mappings of each frame when shared (>= 2), else 0.
    counts: [u32; CHUNK],
    /// Frames of this chunk with a count.
    shared: u32,
}

/// Share counts of frames mapped more than once.
#[derive(Default)]
pub(crate) struct Shares {
    chunks: BTreeMap<u64, Box<Chunk>>,
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
    /// References to `key` (1 when not shared).
    pub(crate) fn count(&self, key: u64) -> u32 {
        let (c, i) = split(key);
        self.chunks.get(&c).map_or(1, |ch| ch.counts[i].max(1))
    }

    /// Frames shared now.
    pub(crate) fn len(&self) -> usize {
        self.shared
    }

    /// One more reference to `key`.
    pub(crate) fn add(&mut self, key: u64) {
        let (c, i) = split(key);
        let chunk = self.chunks.entry(c).or_insert_with(|| {
            Box::new(Chunk {
                counts: [0; CHUNK],
                shared: 0,
            })
        });
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
        let Some(chunk) = self.chunks.get_mut(&c) else {
            return true;
        };
        match chunk.counts[i] {
            0 => true,
            2 => {
                chunk.counts[i] = 0;
                chunk.shared -= 1;
                self.shared -= 1;
                if chunk.shared == 0 {
                    self.chunks.remove(&c);
                    if self.chunks.is_empty() {
                        // An emptied BTreeMap keeps its root node: drop it, so a
                        // kernel with nothing shared holds no heap memory for it.
                        self.chunks = BTreeMap::new();
                    }
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
