//! Contiguous, aligned runs of frames with an optional address limit.

use x86_64::structures::paging::{frame::PhysFrameRange, PhysFrame};

use super::bitmap::Unit;
use super::{BitmapFrameAllocator, FrameError};
use crate::memory_map::FRAME_SIZE;

impl BitmapFrameAllocator<'_> {
    /// Allocates `frames` contiguous frames whose first address is a
    /// multiple of `align` bytes (a power of two >= 4 KiB, e.g. 4 KiB, 2 MiB,
    /// 1 GiB) and whose end is at most `below`, if given (e.g. 16 MiB for ISA
    /// DMA, 4 GiB for 32-bit devices). Returns the lowest such run.
    ///
    /// Runs of 64 frames or more aligned to 256 KiB or more are searched a
    /// word of 64 frames (or, from 512 frames at 2 MiB alignment, a 2 MiB
    /// block) at a time through the summaries of entirely free words and
    /// blocks, so fragmented areas are skipped without visiting their
    /// frames; per-alignment hints skip the prefix earlier searches proved
    /// full. Smaller runs go candidate by candidate from free frame to free
    /// frame.
    ///
    /// ```
    /// use kmem::frame::BitmapFrameAllocator;
    /// use kmem::memory_map::{MemoryMap, Region, RegionKind};
    ///
    /// let map: MemoryMap = MemoryMap::from_regions([Region::new(0x1000, 0x200_0000, RegionKind::Usable)])?;
    /// let mut storage = vec![0u64; BitmapFrameAllocator::storage_words(&map)];
    /// // SAFETY: the map's memory is this allocator's alone.
    /// let mut frames = unsafe { BitmapFrameAllocator::new(&map, &mut storage) }?;
    /// // 16 frames for an ISA DMA buffer below 16 MiB, then a 2 MiB page.
    /// let dma = frames.allocate_contiguous(16, 0x1000, Some(16 << 20))?;
    /// let huge = frames.allocate_contiguous(512, 2 << 20, None)?;
    /// assert_eq!(huge.start.start_address().as_u64(), 2 << 20);
    /// // SAFETY: allocated above, used by nothing.
    /// unsafe { frames.free_range(dma) }?;
    /// // SAFETY: as above.
    /// unsafe { frames.free_range(huge) }?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn allocate_contiguous(
        &mut self,
        frames: u64,
        align: u64,
        below: Option<u64>,
    ) -> Result<PhysFrameRange, FrameError> {
        if frames == 0 {
            return Err(FrameError::ZeroFrames);
        }
        if !align.is_power_of_two() || align < FRAME_SIZE {
            return Err(FrameError::BadAlignment { align });
        }
        let oom = FrameError::OutOfFrames {
            frames,
            align,
            below,
        };
        let limit = below.map_or(u64::MAX, |b| b / FRAME_SIZE);
        let hi = limit
            .saturating_sub(self.base)
            .min(self.bitmap.len() as u64);
        if frames > hi {
            return Err(oom);
        }
        let (count, hi) = (frames as usize, hi as usize);
        let align_frames = (align / FRAME_SIZE) as usize;
        let shift = align_frames.trailing_zeros();
        let from = self.hints.start(shift, count).max(self.first_free);
        let windows = |unit: Unit| {
            let u = unit.frames();
            (u..=64 * u).contains(&count) && (u..=64 * u).contains(&align_frames)
        };
        let found = if windows(Unit::Block) {
            self.find_by_windows(Unit::Block, from, count, align_frames, hi)
        } else if windows(Unit::Word) {
            self.find_by_windows(Unit::Word, from, count, align_frames, hi)
        } else if count >= 64 && align_frames >= 64 {
            self.find_by_words(from.div_ceil(64), count, align_frames, hi)
        } else {
            self.find_by_frames(from, count, align_frames, hi)
        };
        let start = found.ok_or(oom)?;
        self.hints.found(shift, count, start);
        self.bitmap
            .set_range(self.storage, start, start + count, false);
        self.free -= frames;
        Ok(PhysFrame::range(
            self.frame(start),
            self.frame(start) + frames,
        ))
    }

    /// Rounds bitmap index `i` up so its frame number is a multiple of `align`.
    #[inline]
    fn align_up(&self, i: usize, align: usize) -> usize {
        let base = self.base as usize;
        ((base + i + align - 1) & !(align - 1)) - base
    }

    /// Candidate by candidate: the next free frame, aligned up, then the
    /// first allocated frame inside the candidate run restarts the search.
    #[inline]
    fn find_by_frames(
        &self,
        mut pos: usize,
        count: usize,
        align: usize,
        hi: usize,
    ) -> Option<usize> {
        loop {
            let cand = self.align_up(self.bitmap.next_free(self.storage, pos)?, align);
            let end = cand.checked_add(count).filter(|&e| e <= hi)?;
            match self.bitmap.first_with(self.storage, cand, end, false) {
                None => return Some(cand),
                Some(used) => pos = used + 1,
            }
        }
    }

    /// Like [`find_by_frames`](Self::find_by_frames) over whole free words;
    /// `base` is a multiple of 64, so aligned candidates start on a word.
    fn find_by_words(
        &self,
        mut wpos: usize,
        count: usize,
        align: usize,
        hi: usize,
    ) -> Option<usize> {
        let (words, tail) = (count / 64, count % 64);
        loop {
            let w = self.bitmap.next_full_word(self.storage, wpos)?;
            let cand = self.align_up(w * 64, align);
            let end = cand.checked_add(count).filter(|&e| e <= hi)?;
            let cw = cand / 64;
            if let Some(partial) = self.bitmap.first_partial_word(self.storage, cw, cw + words) {
                wpos = partial + 1;
                continue;
            }
            if tail > 0
                && self
                    .bitmap
                    .first_with(self.storage, end - tail, end, false)
                    .is_some()
            {
                wpos = cw + words + 1;
                continue;
            }
            return Some(cand);
        }
    }

    /// Runs of 1 to 64 units aligned to 1 to 64 units (a unit is a word
    /// of 64 frames or a 2 MiB block), found 64 units at a time: one word
    /// of the unit summary answers, with a few shifts and ands, which
    /// aligned windows of `count / unit` free units start inside it.
    #[inline]
    fn find_by_windows(
        &self,
        unit: Unit,
        from: usize,
        count: usize,
        align: usize,
        hi: usize,
    ) -> Option<usize> {
        let us = unit.frames();
        let (units, tail) = (count / us, count % us);
        let aw = align / us;
        // Bits at every `aw`-th position (`aw` is a power of two up to 64).
        const REP: [u64; 7] = [
            !0,
            0x5555_5555_5555_5555,
            0x1111_1111_1111_1111,
            0x0101_0101_0101_0101,
            0x0001_0001_0001_0001,
            0x0000_0001_0000_0001,
            1,
        ];
        let rep = REP[aw.trailing_zeros() as usize];
        let starts = rep << (aw.wrapping_sub(self.base as usize / us) & (aw - 1));
        let mut upos = from.div_ceil(us);
        loop {
            let u = self.bitmap.next_unit(self.storage, unit, upos)?;
            let j = u / 64;
            let x = u128::from(self.bitmap.unit_bits(self.storage, unit, j))
                | u128::from(self.bitmap.unit_bits(self.storage, unit, j + 1)) << 64;
            let mut cands = window_and(x, units) as u64 & starts & (!0u64 << (u % 64));
            while cands != 0 {
                let cand = (j * 64 + cands.trailing_zeros() as usize) * us;
                let end = cand.checked_add(count).filter(|&e| e <= hi)?;
                if tail == 0
                    || self
                        .bitmap
                        .first_with(self.storage, end - tail, end, false)
                        .is_none()
                {
                    return Some(cand);
                }
                cands &= cands - 1;
            }
            upos = (j + 1) * 64;
        }
    }
}

/// Bit `p` of the result is set iff bits `p .. p + k` of `x` are all set (`1 <= k <= 64`).
fn window_and(x: u128, k: usize) -> u128 {
    let (mut y, mut covered) = (x, 1);
    while covered * 2 <= k {
        y &= y >> covered;
        covered *= 2;
    }
    if covered < k {
        y &= y >> (k - covered);
    }
    y
}

#[cfg(test)]
mod tests {
    use super::window_and;

    #[test]
    fn window_and_finds_exact_runs() {
        let x: u128 = 0b0111_1110 | 1 << 70;
        assert_eq!(window_and(x, 1), x);
        assert_eq!(window_and(x, 6), 1 << 1);
        assert_eq!(window_and(x, 3), 0b1111 << 1);
        assert_eq!(window_and(x, 7), 0);
        assert_eq!(window_and(u128::MAX, 64) as u64, u64::MAX);
    }
}
