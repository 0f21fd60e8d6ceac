//! The sanitized, fixed-capacity memory map.

use super::region::{Region, RegionKind, FRAME_SIZE, PHYS_LIMIT};
use super::MapError;

/// Default number of sanitized regions a [`MemoryMap`] holds.
pub const DEFAULT_CAPACITY: usize = 128;

const EMPTY: Region = Region::new(0, 0, RegionKind::Reserved);

/// A sorted, merged, non-overlapping physical memory map of at most `N`
/// regions. Needs no heap: it is built before any allocator exists.
///
/// Invariants kept after every call: regions are sorted by start, do not
/// overlap, are non-empty, and touching regions never share a kind. Usable
/// regions are stored byte-exact and trimmed to whole frames by
/// [`MemoryMap::usable`], so that two adjacent usable halves of one frame
/// still yield that frame.
#[derive(Clone, Copy, Debug)]
pub struct MemoryMap<const N: usize = DEFAULT_CAPACITY> {
    regions: [Region; N],
    len: usize,
}

impl<const N: usize> Default for MemoryMap<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> MemoryMap<N> {
    /// An empty map.
    pub const fn new() -> Self {
        Self {
            regions: [EMPTY; N],
            len: 0,
        }
    }

    /// Sanitizes `regions` into a new map; zero-length regions are dropped.
    pub fn from_regions<I: IntoIterator<Item = Region>>(regions: I) -> Result<Self, MapError> {
        let mut map = Self::new();
        for region in regions {
            map.add(region)?;
        }
        Ok(map)
    }

    /// Adds a region. Where it overlaps existing regions, the higher-priority
    /// kind wins (see [`RegionKind`]): a non-usable kind always beats usable.
    /// A zero-length region is dropped, wherever it starts. On error the map
    /// is unchanged.
    pub fn add(&mut self, region: Region) -> Result<(), MapError> {
        let Region { start, len, kind } = region;
        // An empty region covers no address, so where it starts cannot matter.
        if len == 0 {
            return Ok(());
        }
        let end = start
            .checked_add(len)
            .ok_or(MapError::Wraps { start, len })?;
        if end > PHYS_LIMIT {
            return Err(MapError::BeyondPhysLimit { start, len });
        }
        *self = self.painted(start, end, kind)?;
        Ok(())
    }

    /// Keeps `[start, start + len)` away from the frame allocator, e.g. the
    /// kernel image, boot data or the low 1 MiB. Same as [`MemoryMap::add`]
    /// with [`RegionKind::Reserved`].
    pub fn reserve(&mut self, start: u64, len: u64) -> Result<(), MapError> {
        self.add(Region::new(start, len, RegionKind::Reserved))
    }

    /// Reserves every `(start, len)` of `ranges`, all or none: on an error the map is as
    /// before.
    pub fn reserve_all(&mut self, ranges: &[(u64, u64)]) -> Result<(), MapError> {
        let mut map = *self;
        for &(start, len) in ranges {
            map.reserve(start, len)?;
        }
        *self = map;
        Ok(())
    }

    /// The sanitized regions, sorted by start.
    pub fn regions(&self) -> &[Region] {
        &self.regions[..self.len]
    }

    /// Usable regions trimmed to whole frames, empty ones dropped, sorted.
    pub fn usable(&self) -> impl Iterator<Item = Region> + '_ {
        self.regions()
            .iter()
            .filter(|r| r.kind.is_usable())
            .filter_map(|r| {
                let start = r.start.next_multiple_of(FRAME_SIZE);
                let end = r.end() / FRAME_SIZE * FRAME_SIZE;
                (start < end).then(|| Region::new(start, end - start, RegionKind::Usable))
            })
    }

    /// Total bytes of whole usable frames.
    pub fn usable_bytes(&self) -> u64 {
        self.usable().map(|r| r.len).sum()
    }

    /// Number of sanitized regions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the map has no region at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The fixed capacity `N`.
    pub const fn capacity(&self) -> usize {
        N
    }

    /// A copy of `self` with `[start, end)` painted as `kind` where `kind`
    /// has priority; a single merging pass, so the result stays canonical.
    fn painted(&self, start: u64, end: u64, kind: RegionKind) -> Result<Self, MapError> {
        let mut out = Self::new();
        let mut cur = start; // the new region is emitted up to here
        for p in self.regions() {
            if cur < end && cur < p.start {
                out.push(cur, end.min(p.start), kind)?;
            }
            let (os, oe) = (p.start.max(start), p.end().min(end));
            if os < oe && kind > p.kind {
                out.push(p.start, os, p.kind)?;
                out.push(os, oe, kind)?;
                out.push(oe, p.end(), p.kind)?;
            } else {
                out.push(p.start, p.end(), p.kind)?;
            }
            cur = cur.max(p.end());
        }
        if cur < end {
            out.push(cur, end, kind)?;
        }
        Ok(out)
    }

    /// Appends `[start, end)`, merging with the last region when it touches
    /// and has the same kind. Callers push in address order.
    fn push(&mut self, start: u64, end: u64, kind: RegionKind) -> Result<(), MapError> {
        if start >= end {
            return Ok(());
        }
        if let Some(last) = self.regions[..self.len].last_mut() {
            if last.kind == kind && last.end() == start {
                last.len = end - last.start;
                return Ok(());
            }
        }
        let slot = self
            .regions
            .get_mut(self.len)
            .ok_or(MapError::TooManyRegions { capacity: N })?;
        *slot = Region::new(start, end - start, kind);
        self.len += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RegionKind::*;

    fn r(start: u64, len: u64, kind: RegionKind) -> Region {
        Region::new(start, len, kind)
    }

    #[test]
    fn reserved_wins_over_usable_in_any_order() {
        let a: MemoryMap<8> =
            MemoryMap::from_regions([r(0, 0x10000, Usable), r(0x4000, 0x1000, Reserved)]).unwrap();
        let b: MemoryMap<8> =
            MemoryMap::from_regions([r(0x4000, 0x1000, Reserved), r(0, 0x10000, Usable)]).unwrap();
        assert_eq!(a.regions(), b.regions());
        assert_eq!(
            a.regions(),
            &[
                r(0, 0x4000, Usable),
                r(0x4000, 0x1000, Reserved),
                r(0x5000, 0xb000, Usable)
            ]
        );
    }

    #[test]
    fn touching_same_kind_merges_and_halves_of_a_frame_join() {
        let m: MemoryMap<4> =
            MemoryMap::from_regions([r(0x1800, 0x1800, Usable), r(0x1000, 0x800, Usable)]).unwrap();
        assert_eq!(m.regions(), &[r(0x1000, 0x2000, Usable)]);
        assert_eq!(m.usable().collect::<Vec<_>>(), [r(0x1000, 0x2000, Usable)]);
    }

    #[test]
    fn usable_is_trimmed_to_frames() {
        let m: MemoryMap<4> =
            MemoryMap::from_regions([r(0x123, 0x3000, Usable), r(0x9000, 0xfff, Usable)]).unwrap();
        assert_eq!(m.usable().collect::<Vec<_>>(), [r(0x1000, 0x2000, Usable)]);
    }

    #[test]
    fn errors_leave_map_unchanged() {
        let mut m: MemoryMap<2> =
            MemoryMap::from_regions([r(0, 0x1000, Usable), r(0x2000, 0x1000, Usable)]).unwrap();
        let before = *m.regions().first().unwrap();
        assert_eq!(
            m.add(r(0x4000, 1, Usable)),
            Err(MapError::TooManyRegions { capacity: 2 })
        );
        assert_eq!(
            m.add(r(u64::MAX, 2, Usable)),
            Err(MapError::Wraps {
                start: u64::MAX,
                len: 2
            })
        );
        assert_eq!(
            m.add(r(PHYS_LIMIT - 1, 2, Usable)),
            Err(MapError::BeyondPhysLimit {
                start: PHYS_LIMIT - 1,
                len: 2
            })
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m.regions()[0], before);
    }

    #[test]
    fn zero_length_and_duplicates_are_harmless() {
        let m: MemoryMap<4> = MemoryMap::from_regions([
            r(0x1000, 0, Bad),
            r(0, 0x2000, Usable),
            r(0, 0x2000, Usable),
        ])
        .unwrap();
        assert_eq!(m.regions(), &[r(0, 0x2000, Usable)]);
    }

    #[test]
    fn zero_length_is_dropped_at_any_address() {
        let m: MemoryMap<4> = MemoryMap::from_regions([
            r(0, 0x2000, Usable),
            r(PHYS_LIMIT, 0, Reserved),
            r(PHYS_LIMIT + 0x1000, 0, Bad),
            r(u64::MAX, 0, Usable),
        ])
        .unwrap();
        assert_eq!(m.regions(), &[r(0, 0x2000, Usable)]);
        let mut m = m;
        assert_eq!(m.add(r(1 << 60, 0, Reserved)), Ok(()));
        assert_eq!(m.regions(), &[r(0, 0x2000, Usable)]);
    }
}
