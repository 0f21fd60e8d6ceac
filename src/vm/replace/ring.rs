//! An arena of nodes on one circular doubly linked list, the clock face
//! both policies sweep. Node numbers are `u32` so a node is 24 bytes.

use super::PageId;
use alloc::vec::Vec;

/// No node.
pub(crate) const NIL: u32 = u32::MAX;

/// A flag: referenced since the hand last passed.
pub(crate) const REFERENCED: u8 = 1;
/// A flag: inserted and not yet reported: the next report is the faulting access.
pub(crate) const FRESH: u8 = 2;

/// One tracked page. `state` belongs to the policy; `flags` are [`REFERENCED`] and [`FRESH`].
#[derive(Clone, Copy)]
pub(crate) struct Node {
    pub(crate) key: PageId,
    pub(crate) prev: u32,
    pub(crate) next: u32,
    pub(crate) state: u8,
    pub(crate) flags: u8,
}

impl Node {
    /// A reported reference: the first report of a fresh node is the access that brought
    /// it in and sets nothing.
    #[inline]
    pub(crate) fn report_reference(&mut self) {
        if self.flags & FRESH != 0 {
            self.flags &= !FRESH;
        } else {
            self.flags |= REFERENCED;
        }
    }
}

/// Nodes in a preallocated arena; free nodes are chained through `next`.
pub(crate) struct Ring {
    pub(crate) nodes: Vec<Node>,
    free: u32,
    limit: usize,
}

impl Ring {
    /// Room for `limit` nodes, allocated now.
    pub(crate) fn with_capacity(limit: usize) -> Self {
        Self {
            nodes: Vec::with_capacity(limit),
            free: NIL,
            limit,
        }
    }

    /// A detached node for `key`; `None` when all `limit` nodes are in use.
    pub(crate) fn alloc(&mut self, key: PageId, state: u8) -> Option<u32> {
        let node = Node {
            key,
            prev: NIL,
            next: NIL,
            state,
            flags: 0,
        };
        if self.free != NIL {
            let n = self.free;
            self.free = self.nodes[n as usize].next;
            self.nodes[n as usize] = node;
            return Some(n);
        }
        if self.nodes.len() == self.limit {
            return None;
        }
        self.nodes.push(node);
        Some((self.nodes.len() - 1) as u32)
    }

    /// Returns a detached node to the arena.
    pub(crate) fn release(&mut self, n: u32) {
        self.nodes[n as usize].next = self.free;
        self.nodes[n as usize].prev = NIL;
        self.free = n;
    }

    pub(crate) fn key(&self, n: u32) -> PageId {
        self.nodes[n as usize].key
    }

    pub(crate) fn next(&self, n: u32) -> u32 {
        self.nodes[n as usize].next
    }

    pub(crate) fn prev(&self, n: u32) -> u32 {
        self.nodes[n as usize].prev
    }

    pub(crate) fn node(&self, n: u32) -> &Node {
        &self.nodes[n as usize]
    }

    pub(crate) fn node_mut(&mut self, n: u32) -> &mut Node {
        &mut self.nodes[n as usize]
    }

    /// Links detached node `n` just before `at` (between `at.prev` and
    /// `at`); with `at == NIL` it becomes a ring of one.
    pub(crate) fn link_before(&mut self, n: u32, at: u32) {
        if at == NIL {
            self.nodes[n as usize].prev = n;
            self.nodes[n as usize].next = n;
            return;
        }
        let p = self.prev(at);
        self.nodes[n as usize].prev = p;
        self.nodes[n as usize].next = at;
        self.nodes[p as usize].next = n;
        self.nodes[at as usize].prev = n;
    }

    /// Unlinks `n`; returns false when `n` was alone on the ring.
    pub(crate) fn unlink(&mut self, n: u32) -> bool {
        let (p, x) = (self.prev(n), self.next(n));
        self.nodes[n as usize].prev = NIL;
        self.nodes[n as usize].next = NIL;
        if x == n {
            return false;
        }
        self.nodes[p as usize].next = x;
        self.nodes[x as usize].prev = p;
        true
    }
}
