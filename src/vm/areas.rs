//! The areas of one address space, sorted: finding the area of an address
//! and checking a range is free are O(log n); placing an area top-down
//! walks down the gaps between areas from the top, one step per gap too
//! small.

use super::{Area, VmInvariantError};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// Disjoint areas inside a managed range `[lo, hi)`; the gaps are what
/// lies between them.
#[derive(Debug, Clone)]
pub(crate) struct AreaSet {
    lo: u64,
    hi: u64,
    /// By start address.
    areas: BTreeMap<u64, Area>,
}

impl AreaSet {
    /// No areas: one gap covering `[lo, hi)`.
    pub(crate) fn new(lo: u64, hi: u64) -> Self {
        Self {
            lo,
            hi,
            areas: BTreeMap::new(),
        }
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
        let fits = |s: u64, e: u64| (e > s && e - s >= len).then(|| e - len);
        // `end` is the top of the gap below the areas seen so far.
        let mut end = top.min(self.hi);
        for area in self.areas.range(..end).rev().map(|(_, a)| a) {
            if let Some(at) = fits(area.end.max(min), end) {
                return Some(at);
            }
            end = end.min(area.start);
            if end <= min {
                return None;
            }
        }
        fits(self.lo.max(min), end)
    }

    /// Inserts `area`, whose range must be free, merging it with touching
    /// areas it joins.
    pub(crate) fn insert(&mut self, area: Area) {
        debug_assert!(self.is_free(area.start, area.end));
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
        removed
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
    /// range, no two touching areas that join.
    pub(crate) fn check(&self) -> Result<(), VmInvariantError> {
        let mut at = self.lo;
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
            at = area.end;
            prev = Some(area);
        }
        Ok(())
    }
}
