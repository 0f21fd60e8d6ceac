//! The large heap's invariant checker: every block walked from the start,
//! every free list walked from its head, the bitmaps against the lists.

use super::bins::{bin_of, FL, SL};
use super::block::{hdr, links};
use super::{Large, BIN_SHIFT, FREE, GRANULE, MIN_BLOCK, PREV_FREE, SIZE_MASK};
use crate::heap::HeapInvariantError;
use core::ptr::null_mut;

impl Large {
    /// Walks every block and list, checking the structure. Returns
    /// `(used_blocks, free_blocks)` or the first fault.
    pub(crate) fn check(&self) -> Result<(usize, usize), HeapInvariantError> {
        let (mut used, mut free) = (0, 0);
        let mut block = (self.start + GRANULE - 8) as *mut u8;
        let mut prev_free = false;
        loop {
            let at = block as usize;
            // SAFETY: the walk follows sizes inside [start, brk) (checked).
            let header = unsafe { hdr(block) };
            if (header & PREV_FREE != 0) != prev_free {
                return Err(HeapInvariantError::PrevFreeFlag { block: at });
            }
            let size = header & SIZE_MASK;
            if at == self.brk - 8 {
                if size != 0 || header & FREE != 0 {
                    return Err(HeapInvariantError::EndSentinel { at, header });
                }
                break;
            }
            if size < MIN_BLOCK || !size.is_multiple_of(GRANULE) || at + size > self.brk - 8 {
                return Err(HeapInvariantError::BlockSize { block: at, size });
            }
            if header & FREE != 0 {
                if prev_free {
                    return Err(HeapInvariantError::AdjacentFree { block: at });
                }
                // SAFETY: footer of a free block inside the span.
                let footer = unsafe { block.add(size - 8).cast::<usize>().read() };
                if footer != size {
                    return Err(HeapInvariantError::FreeFooter {
                        block: at,
                        size,
                        footer,
                    });
                }
                let bin = bin_of(size);
                if header >> BIN_SHIFT != bin {
                    return Err(HeapInvariantError::WrongBin {
                        block: at,
                        bin: header >> BIN_SHIFT,
                        expected: bin,
                    });
                }
                if !self.list_contains(bin, block) {
                    return Err(HeapInvariantError::NotInBin { block: at, bin });
                }
                free += 1;
            } else {
                if header >> BIN_SHIFT != 0 {
                    return Err(HeapInvariantError::UsedBlockBin { block: at });
                }
                used += 1;
            }
            prev_free = header & FREE != 0;
            // SAFETY: bounded by the check above.
            block = unsafe { block.add(size) };
        }
        let listed = self.list_members()?;
        if listed != free {
            return Err(HeapInvariantError::FreeCount {
                blocks: free,
                listed,
            });
        }
        for first in 0..FL {
            for second in 0..SL {
                let bin = first * SL + second;
                let bit = self.sl_bitmap[first] & (1 << second) != 0;
                if bit == self.heads[bin].is_null() {
                    return Err(HeapInvariantError::BinBitmap { bin });
                }
            }
            if (self.fl_bitmap & (1 << first) != 0) != (self.sl_bitmap[first] != 0) {
                return Err(HeapInvariantError::FirstLevelBitmap { first_level: first });
            }
        }
        Ok((used, free))
    }

    /// Most blocks the span can hold: a bound for list walks (a cycle ends).
    fn max_blocks(&self) -> usize {
        (self.brk - self.start) / MIN_BLOCK
    }

    /// Counts the members of every list, checking that each names its bin
    /// and that back links match.
    fn list_members(&self) -> Result<usize, HeapInvariantError> {
        let mut total = 0;
        for (bin, &head) in self.heads.iter().enumerate() {
            let (mut block, mut prev) = (head, null_mut());
            while !block.is_null() {
                // SAFETY: list members are free blocks in the span (each
                // is also found by the block walk, which runs first).
                let (header, links) = unsafe { (hdr(block), links(block).read()) };
                if header & FREE == 0 || header >> BIN_SHIFT != bin {
                    return Err(HeapInvariantError::ListMember {
                        bin,
                        block: block as usize,
                    });
                }
                if links.prev != prev {
                    return Err(HeapInvariantError::BackLink {
                        bin,
                        block: block as usize,
                    });
                }
                total += 1;
                if total > self.max_blocks() {
                    return Err(HeapInvariantError::ListCycle { bin });
                }
                (prev, block) = (block, links.next);
            }
        }
        Ok(total)
    }

    fn list_contains(&self, bin: usize, wanted: *mut u8) -> bool {
        let mut block = self.heads[bin];
        let mut scanned = 0;
        while !block.is_null() && scanned <= self.max_blocks() {
            if block == wanted {
                return true;
            }
            // SAFETY: list members are free blocks in the span.
            block = unsafe { (*links(block)).next };
            scanned += 1;
        }
        false
    }
}
