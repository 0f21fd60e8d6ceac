//! The kernel's table of address spaces, as global reclaim and faults that
//! may reclaim over every space see it.

use super::VmSpace;
use crate::paging::PhysMem;
use core::borrow::Borrow;

/// The kernel's address spaces that joined global reclaim.
///
/// Every space it hands out is held for reading (its address-space lock,
/// as for a fault) from before the reclaim call that uses the table until
/// that call returns, so no `&mut` operation (unmap, fork, destroy) runs
/// on it in between; a space the kernel cannot lock may be left out. A
/// frame shared after a fork is evicted only when every space mapping it
/// is in the table: a fork's child should join too.
pub trait SpaceTable<P: PhysMem> {
    /// Calls `f` with every space that joined.
    fn for_each(&self, f: &mut dyn FnMut(&VmSpace<P>));
    /// Calls `f` with the space that joined as `id`, if it exists; returns
    /// whether it did.
    fn with(&self, id: u32, f: &mut dyn FnMut(&VmSpace<P>)) -> bool;
}

/// A slice of spaces, or of references to them, is a table (a kernel with
/// its own locking wraps its process list instead).
impl<P: PhysMem, S: Borrow<VmSpace<P>>> SpaceTable<P> for [S] {
    fn for_each(&self, f: &mut dyn FnMut(&VmSpace<P>)) {
        for s in self.iter().map(Borrow::borrow) {
            if s.global_id().is_some() {
                f(s);
            }
        }
    }

    fn with(&self, id: u32, f: &mut dyn FnMut(&VmSpace<P>)) -> bool {
        match self
            .iter()
            .map(Borrow::borrow)
            .find(|s: &&VmSpace<P>| s.global_id() == Some(id))
        {
            Some(s) => {
                f(s);
                true
            }
            None => false,
        }
    }
}
