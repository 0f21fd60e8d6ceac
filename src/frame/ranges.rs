//! The table of frame ranges inside the bitmap span that are never free:
//! holes of the memory map and reservations. It lives in the allocator's
//! storage, after the bitmap, as pairs of words `(start, end | kind << 63)`,
//! sorted and disjoint. It lets a free tell "used" from "reserved" or "not
//! memory" without a second bit per frame.

use super::FrameInvariantError;

/// Why a range is out of service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Not usable memory according to the map.
    Hole,
    /// Taken out of service: the allocator's storage or a reservation.
    Reserved,
}

/// One entry: frames `[start, end)` of a kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) kind: Kind,
}

const KIND_BIT: u64 = 1 << 63;

/// The table's place in storage and its fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RangeTable {
    offset: usize,
    capacity: usize,
    len: usize,
}

impl RangeTable {
    /// An empty table of `capacity` entries at word `offset`.
    pub(crate) const fn new(offset: usize, capacity: usize) -> Self {
        Self {
            offset,
            capacity,
            len: 0,
        }
    }

    /// Storage words the table needs.
    pub(crate) const fn words(&self) -> usize {
        2 * self.capacity
    }

    /// Entry `i`.
    #[inline]
    pub(crate) fn get(&self, s: &[u64], i: usize) -> Entry {
        let (start, end) = (s[self.offset + 2 * i], s[self.offset + 2 * i + 1]);
        let kind = if end & KIND_BIT != 0 {
            Kind::Reserved
        } else {
            Kind::Hole
        };
        Entry {
            start: start as usize,
            end: (end & !KIND_BIT) as usize,
            kind,
        }
    }

    fn put(&self, s: &mut [u64], i: usize, e: Entry) {
        s[self.offset + 2 * i] = e.start as u64;
        s[self.offset + 2 * i + 1] = e.end as u64
            | if e.kind == Kind::Reserved {
                KIND_BIT
            } else {
                0
            };
    }

    /// Index of the first entry ending after `a` (binary search).
    #[inline]
    fn first_ending_after(&self, s: &[u64], a: usize) -> usize {
        let (mut lo, mut hi) = (0, self.len);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.get(s, mid).end <= a {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// The first entry overlapping `[a, b)`.
    #[inline]
    pub(crate) fn first_overlap(&self, s: &[u64], a: usize, b: usize) -> Option<Entry> {
        let i = self.first_ending_after(s, a);
        (i < self.len)
            .then(|| self.get(s, i))
            .filter(|e| e.start < b)
    }

    /// Inserts `[a, b)` of `kind`, which must overlap no entry; merges with
    /// touching entries of the same kind. Fails only when full, unchanged.
    pub(crate) fn insert(
        &mut self,
        s: &mut [u64],
        a: usize,
        b: usize,
        kind: Kind,
    ) -> Result<(), usize> {
        let i = self.first_ending_after(s, a);
        let prev = i
            .checked_sub(1)
            .map(|p| self.get(s, p))
            .filter(|e| e.end == a && e.kind == kind);
        let next = (i < self.len)
            .then(|| self.get(s, i))
            .filter(|e| e.start == b && e.kind == kind);
        match (prev, next) {
            (Some(p), Some(n)) => {
                self.put(s, i - 1, Entry { end: n.end, ..p });
                self.remove(s, i);
            }
            (Some(p), None) => self.put(s, i - 1, Entry { end: b, ..p }),
            (None, Some(n)) => self.put(s, i, Entry { start: a, ..n }),
            (None, None) => {
                self.open(s, i)?;
                self.put(
                    s,
                    i,
                    Entry {
                        start: a,
                        end: b,
                        kind,
                    },
                );
            }
        }
        Ok(())
    }

    /// Index and value of the entry holding all of `[a, b)`, if one does.
    pub(crate) fn containing(&self, s: &[u64], a: usize, b: usize) -> Option<(usize, Entry)> {
        let i = self.first_ending_after(s, a);
        (i < self.len)
            .then(|| (i, self.get(s, i)))
            .filter(|(_, e)| e.start <= a && b <= e.end)
    }

    /// Takes `[a, b)` out of entry `i`, which must hold it (see
    /// [`containing`](Self::containing)). Cutting from the middle splits
    /// the entry: that fails only when the table is full, unchanged.
    pub(crate) fn cut(&mut self, s: &mut [u64], i: usize, a: usize, b: usize) -> Result<(), usize> {
        let e = self.get(s, i);
        match (e.start == a, e.end == b) {
            (true, true) => self.remove(s, i),
            (true, false) => self.put(s, i, Entry { start: b, ..e }),
            (false, true) => self.put(s, i, Entry { end: a, ..e }),
            (false, false) => {
                self.open(s, i)?;
                self.put(s, i, Entry { end: a, ..e });
                self.put(s, i + 1, Entry { start: b, ..e });
            }
        }
        Ok(())
    }

    /// Makes room for one entry at index `i` (entries from `i` on move up
    /// one); fails only when the table is full, unchanged.
    fn open(&mut self, s: &mut [u64], i: usize) -> Result<(), usize> {
        if self.len == self.capacity {
            return Err(self.capacity);
        }
        s.copy_within(
            self.offset + 2 * i..self.offset + 2 * self.len,
            self.offset + 2 * i + 2,
        );
        self.len += 1;
        Ok(())
    }

    fn remove(&mut self, s: &mut [u64], i: usize) {
        s.copy_within(
            self.offset + 2 * i + 2..self.offset + 2 * self.len,
            self.offset + 2 * i,
        );
        self.len -= 1;
    }

    /// All entries in order.
    pub(crate) fn iter<'a>(&'a self, s: &'a [u64]) -> impl Iterator<Item = Entry> + 'a {
        (0..self.len).map(move |i| self.get(s, i))
    }

    /// Sorted, disjoint, non-empty, inside `[0, n)`, and touching entries differ in kind.
    pub(crate) fn check(&self, s: &[u64], n: usize) -> Result<(), FrameInvariantError> {
        let mut prev: Option<Entry> = None;
        for e in self.iter(s) {
            let (start, end) = (e.start, e.end);
            if start >= end || end > n {
                return Err(FrameInvariantError::BadRange { start, end });
            }
            if let Some(p) = prev {
                if p.end > start || (p.end == start && p.kind == e.kind) {
                    return Err(FrameInvariantError::UnsortedRanges { start });
                }
            }
            prev = Some(e);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_merges_and_fills() {
        let mut t = RangeTable::new(1, 2);
        let mut s = vec![0; 1 + t.words()];
        t.insert(&mut s, 10, 20, Kind::Reserved).unwrap();
        t.insert(&mut s, 0, 5, Kind::Hole).unwrap();
        assert_eq!(t.insert(&mut s, 30, 31, Kind::Reserved), Err(2));
        t.insert(&mut s, 20, 25, Kind::Reserved).unwrap();
        t.insert(&mut s, 5, 10, Kind::Reserved).unwrap();
        let all: Vec<_> = t.iter(&s).collect();
        assert_eq!(
            all,
            [
                Entry {
                    start: 0,
                    end: 5,
                    kind: Kind::Hole
                },
                Entry {
                    start: 5,
                    end: 25,
                    kind: Kind::Reserved
                }
            ]
        );
        assert_eq!(t.first_overlap(&s, 4, 6).map(|e| e.kind), Some(Kind::Hole));
        assert_eq!(t.first_overlap(&s, 25, 99), None);
        t.check(&s, 25).unwrap();
    }

    #[test]
    fn insert_between_merges_both_sides() {
        let mut t = RangeTable::new(0, 3);
        let mut s = vec![0; t.words()];
        t.insert(&mut s, 0, 2, Kind::Reserved).unwrap();
        t.insert(&mut s, 4, 6, Kind::Reserved).unwrap();
        t.insert(&mut s, 2, 4, Kind::Reserved).unwrap();
        assert_eq!(
            t.iter(&s).collect::<Vec<_>>(),
            [Entry {
                start: 0,
                end: 6,
                kind: Kind::Reserved
            }]
        );
    }
}
