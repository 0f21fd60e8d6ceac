//! The areas of one address space, sorted, with an index of the gaps
//! between them: finding the area of an address and checking a range is
//! free are O(log n); placing an area top-down walks down the gaps from
//! the top, O(log n) while they are large enough.

use super::{Area, VmInvariantError};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// Disjoint areas inside a managed range `[lo, hi)`, and the gaps between.
#[derive(Debug, Clone)]
pub(crate) struct AreaSet {
    lo: u64,
    hi: u64,
    /// By start address.
    areas: BTreeMap<u64, Area>,
    /// Every maximal free range, `start -> len`.
    by_start: BTreeMap<u64, u64>,
}

impl AreaSet {
    /// No areas: one gap covering `[lo, hi)`.
    pub(crate) fn new(lo: u64, hi: u64) -> Self {
        let mut set = Self {
            lo,
            hi,
            areas: BTreeMap::new(),
            by_start: BTreeMap::new(),
        };
        if hi > lo {
            set.add_gap(lo, hi - lo);
        }
        set
    }

    /// The managed range.
    pub(crate) fn bounds(&self) -> (u64, u64) {
        (self.lo, self.hi)
    }

    pub(crate) fn len(&self) -> usize {
        self.areas.len()
    }

    /// The area holding `addr`.
    pub(crate) fn find(&self, addr: u64) -> Option<&Area> {
        self.areas
            .range(..=addr)
            .next_back()
            .map(|(_, a)| a)
            .filter(|a| a.contains(addr))
    }

    /// The areas overlapping `[a, b)`, in order.
    pub(crate) fn overlapping(&self, a: u64, b: u64) -> impl Iterator<Item = &Area> {
        let first = self.find(a).map_or(a, |x| x.start);
        self.areas.range(first..b).map(|(_, x)| x)
    }

    /// All areas in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Area> {
        self.areas.values()
    }

    /// Whether `[a, b)` is inside the range and overlaps no area.
    pub(crate) fn is_free(&self, a: u64, b: u64) -> bool {
        self.lo <= a && a < b && b <= self.hi && self.overlapping(a, b).next().is_none()
    }

    /// Where `len` bytes go inside `[min, top)`: at the top of the highest
    /// gap there that holds them, so areas placed one after another grow
    /// down from `top` (Linux's top-down mmap). The walk goes down the gaps
    /// from `top`, one step per gap too small: areas placed this way leave
    /// none, so it is O(log n) unless unmaps left many small holes near the
    /// top (Linux keeps the largest gap of each subtree to skip them).
    pub(crate) fn place(&self, len: u64, min: u64, top: u64) -> Option<u64> {
        // The gap holding `top - 1`, if any, starts below `top`.
        self.by_start
            .range(..top)
            .rev()
            .find_map(|(&start, &glen)| {
                let (s, e) = (start.max(min), (start + glen).min(top));
                (e > s && e - s >= len).then(|| e - len)
            })
    }

    fn add_gap(&mut self, start: u64, len: u64) {
        self.by_start.insert(start, len);
    }

    fn remove_gap(&mut self, start: u64, len: u64) {
        let had = self.by_start.remove(&start);
        debug_assert_eq!(had, Some(len), "no gap of {len:#x} at {start:#x}");
    }

    /// The free range around a free `addr`: from the end of the area
    /// before it (or `lo`) to the start of the one after (or `hi`).
    fn gap_around(&self, addr: u64) -> (u64, u64) {
        let start = self
            .areas
            .range(..addr)
            .next_back()
            .map_or(self.lo, |(_, a)| a.end);
        let end = self.areas.range(addr..).next().map_or(self.hi, |(&s, _)| s);
        (start, end)
    }

    /// Inserts `area`, whose range must be free, merging it with touching
    /// areas it joins.
    pub(crate) fn insert(&mut self, area: Area) {
        debug_assert!(self.is_free(area.start, area.end));
        let (gs, ge) = self.gap_around(area.start);
        self.remove_gap(gs, ge - gs);
        if area.start > gs {
            self.add_gap(gs, area.start - gs);
        }
        if ge > area.end {
            self.add_gap(area.end, ge - area.end);
        }
        self.areas.insert(area.start, area);
        self.merge_around(area.start);
    }

    /// Joins the area at `start` with its neighbours where they join.
    fn merge_around(&mut self, start: u64) {
        let Some(mut cur) = self.areas.get(&start).copied() else {
            return;
        };
        if let Some((_, prev)) = self.areas.range(..start).next_back() {
            if prev.joins(&cur) {
                let prev = *prev;
                self.areas.remove(&cur.start);
                cur = Area {
                    end: cur.end,
                    ..prev
                };
                self.areas.insert(cur.start, cur);
            }
        }
        if let Some(next) = self.areas.get(&cur.end).copied() {
            if cur.joins(&next) {
                self.areas.remove(&next.start);
                cur.end = next.end;
                self.areas.insert(cur.start, cur);
            }
        }
    }

    /// Removes `[a, b)` from every area it overlaps (splitting the areas
    /// at its ends) and returns the removed pieces, in order.
    pub(crate) fn remove(&mut self, a: u64, b: u64) -> Vec<Area> {
        let hit: Vec<Area> = self.overlapping(a, b).copied().collect();
        let (Some(first), Some(last)) = (hit.first(), hit.last()) else {
            return Vec::new();
        };
        // The span whose gaps change: from the area before the first hit
        // to the area after the last one.
        let l = self
            .areas
            .range(..first.start)
            .next_back()
            .map_or(self.lo, |(_, x)| x.end);
        let r = self
            .areas
            .range(last.end..)
            .next()
            .map_or(self.hi, |(&s, _)| s);
        for (s, e) in self.gaps_in(l, r) {
            self.remove_gap(s, e - s);
        }
        let mut removed = Vec::with_capacity(hit.len());
        for area in hit {
            self.areas.remove(&area.start);
            if area.start < a {
                self.areas.insert(area.start, area.slice(area.start, a));
            }
            if area.end > b {
                self.areas.insert(b, area.slice(b, area.end));
            }
            removed.push(area.slice(area.start.max(a), area.end.min(b)));
        }
        for (s, e) in self.gaps_in(l, r) {
            self.add_gap(s, e - s);
        }
        removed
    }

    /// The free ranges inside `[l, r)`, which must start and end at area
    /// boundaries (or the managed range's ends).
    fn gaps_in(&self, l: u64, r: u64) -> Vec<(u64, u64)> {
        let mut gaps = Vec::new();
        let mut at = l;
        for area in self.areas.range(l..r).map(|(_, x)| x) {
            if area.start > at {
                gaps.push((at, area.start));
            }
            at = area.end;
        }
        if r > at {
            gaps.push((at, r));
        }
        gaps
    }

    /// Replaces `[a, b)`, which must be covered by areas without gaps,
    /// with `f` applied to each piece, re-merging at the edges.
    pub(crate) fn update(&mut self, a: u64, b: u64, f: impl Fn(Area) -> Area) {
        let pieces = self.remove(a, b);
        for piece in pieces {
            self.insert(f(piece));
        }
    }

    /// Whether `[a, b)` is covered by areas with no hole.
    pub(crate) fn covered(&self, a: u64, b: u64) -> bool {
        let mut at = a;
        for area in self.overlapping(a, b) {
            if area.start > at {
                return false;
            }
            at = area.end;
        }
        at >= b
    }

    /// The set's invariant: areas sorted, disjoint, non-empty, inside the
    /// range, no two touching areas that join; the gap index is exactly
    /// the complement.
    pub(crate) fn check(&self) -> Result<(), VmInvariantError> {
        let mut at = self.lo;
        let mut gaps = BTreeMap::new();
        let mut prev: Option<&Area> = None;
        for (&start, area) in &self.areas {
            let end = area.end;
            if start != area.start || area.start >= end || area.start < at {
                return Err(VmInvariantError::AreaOrder { start, end });
            }
            if end > self.hi {
                return Err(VmInvariantError::AreaOutOfRange { start, end });
            }
            if prev.is_some_and(|p| p.joins(area)) {
                return Err(VmInvariantError::UnmergedAreas { start });
            }
            if area.start > at {
                gaps.insert(at, area.start - at);
            }
            at = area.end;
            prev = Some(area);
        }
        if self.hi > at {
            gaps.insert(at, self.hi - at);
        }
        if gaps != self.by_start {
            return Err(VmInvariantError::GapIndex);
        }
        Ok(())
    }
}
