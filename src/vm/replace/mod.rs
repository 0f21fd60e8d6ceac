//! Page replacement: which resident page to give up when a frame is needed.
//!
//! A [`ReplacementPolicy`] tracks the resident set of pageable pages and,
//! where it needs one, a bounded history of pages it evicted. Its only
//! view of references is [`referenced`](ReplacementPolicy::referenced),
//! which a kernel calls for the pages whose hardware Accessed bit it found
//! set (and cleared) while harvesting, and which the host simulator calls
//! for every reference. Both callers therefore run the same policy code.
//!
//! - [`Clock`]: second chance, the baseline.
//! - [`ClockPro`]: CLOCK-Pro (Jiang, Chen, Zhang 2005), LIRS's reuse
//!   distance approximated with reference bits, with non-resident history
//!   of evicted pages (a refault during its test period promotes a page).
//! - [`Adaptive`]: CLOCK-Pro and CLOCK as simulated experts over every
//!   reference, the resident set following whichever missed less of late.
//!   CLOCK-Pro wins on loops, scans and skewed reuse; where recency is all
//!   there is (pages re-referenced once, at a distance beyond CLOCK-Pro's
//!   small cold space) CLOCK wins, and no setting of CLOCK-Pro's cold
//!   space wins both. The kernel's choice when it can spend about twice
//!   CLOCK-Pro's bookkeeping.
//! - [`sim`]: replays a trace against a policy and computes Belady's OPT
//!   (MIN) from next-use positions, the bound every policy is measured by.
//! - [`multi`]: several processes over one pool of frames: one policy for
//!   all (global replacement) against a policy per process, and OPT over
//!   the merged references.
//! - [`trace`]: the text trace format (one page number per line).
//! - `synth` (feature `testing`): the seeded synthetic suite.
//!
//! # Driving a policy from a kernel
//!
//! ```text
//! page fault on p:  while policy.resident_len() == policy.capacity():
//!                       victim = policy.evict()      // unmap and write out victim
//!                   policy.insert(p)                 // FaultIn::Refault counts a refault
//! harvest (batch):  for each resident page q with Accessed set:
//!                       clear Accessed, invalidate q's TLB entry,
//!                       policy.referenced(q)
//! unmap / free p:   policy.remove(p)                 // forgets p, resident or history
//! ```
//!
//! Harvest before evicting: a reference not yet reported cannot save a
//! page. The access that faulted sets Accessed too, so the first
//! `referenced` after `insert` stands for it and is not a re-reference;
//! the simulator reports the faulting access the same way, which keeps the
//! kernel's decisions and the simulator's identical when the kernel
//! harvests after every reference.
//!
//! # Costs
//!
//! All memory is allocated when the policy is made; no call allocates. A
//! tracked page (resident, or in history) costs a 24-byte node plus 4 to 8
//! bytes of hash index. [`Clock`] tracks `frames` pages (about 32 bytes a
//! frame); [`ClockPro`] tracks at most `frames` resident plus `history`
//! non-resident pages (history = frames by default: 64 to 80 bytes a frame
//! as the index rounds to a power of two, 1.6-2 % of a 4 KiB page;
//! [`ClockPro::footprint`] gives the bytes); [`Adaptive`] holds both plus
//! a node per resident page (128 to 150 bytes a frame, 3.1-3.7 %) and
//! shows every reference to both experts. Lookups
//! are O(1) expected; `evict` is O(1) amortized (each hand step either
//! frees a page or clears a bit that a reference set), O(resident +
//! history) in the worst single call.
//!
//! ```
//! use kmem::vm::replace::{Clock, FaultIn, ReplacementPolicy};
//!
//! let mut clock = Clock::new(2);
//! assert_eq!(clock.insert(10), Ok(FaultIn::Fresh));
//! clock.referenced(10); // the access that faulted
//! clock.insert(11).unwrap();
//! clock.referenced(10); // a re-reference: page 10 gets a second chance
//! assert_eq!(clock.evict(), Some(11));
//! ```

mod adaptive;
mod clock;
mod clock_pro;
mod index;
pub mod multi;
mod ring;
pub mod sim;
#[cfg(feature = "testing")]
pub mod synth;
#[cfg(test)]
mod test;
pub mod trace;

pub use adaptive::{Adaptive, Footprint};
pub use clock::Clock;
pub use clock_pro::ClockPro;

use core::fmt;

/// An opaque page identity: a kernel packs (address-space id, virtual page
/// number), or uses a frame number; the simulator uses the trace's numbers.
pub type PageId = u64;

/// What [`ReplacementPolicy::insert`] found in the policy's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultIn {
    /// The page was not in the history: a first touch, or evicted too long ago.
    Fresh,
    /// The page was evicted recently enough to be remembered: a refault.
    Refault,
}

/// What [`ReplacementPolicy::remove`] forgot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// A resident page: its frame is free again.
    Resident,
    /// A page of the non-resident history.
    History,
    /// The policy did not know the page.
    NotTracked,
}

/// Why [`ReplacementPolicy::insert`] refused a page. The policy is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplaceError {
    /// Every frame is in use: call [`evict`](ReplacementPolicy::evict) first.
    Full {
        /// The page that was to be inserted.
        page: PageId,
        /// The policy's number of frames.
        capacity: usize,
    },
    /// The page is resident already.
    AlreadyResident {
        /// The page.
        page: PageId,
    },
}

impl fmt::Display for ReplaceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Full { page, capacity } => {
                write!(
                    f,
                    "cannot insert page {page:#x}: all {capacity} frames are resident"
                )
            }
            Self::AlreadyResident { page } => write!(f, "page {page:#x} is resident already"),
        }
    }
}

impl core::error::Error for ReplaceError {}

/// What a policy did since it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplaceStats {
    /// Pages inserted (faults that brought a page in).
    pub inserts: u64,
    /// Inserts of a page found in the non-resident history.
    pub refaults: u64,
    /// Pages given up by [`evict`](ReplacementPolicy::evict).
    pub evictions: u64,
    /// Pages examined by the policy's hands while looking for victims.
    pub scanned: u64,
}

/// A page-replacement policy over a fixed number of frames.
///
/// The policy owns the bookkeeping of the resident set: pages enter by
/// [`insert`](Self::insert) and leave by [`evict`](Self::evict) or
/// [`remove`](Self::remove); it never names a page it does not hold as
/// resident. Non-resident history, if any, is bounded by
/// [`history_limit`](Self::history_limit).
pub trait ReplacementPolicy {
    /// A short name for reports (`clock`, `clock-pro`).
    fn name(&self) -> &'static str;

    /// The number of frames the policy manages.
    fn capacity(&self) -> usize;

    /// Resident pages now (at most [`capacity`](Self::capacity)).
    fn resident_len(&self) -> usize;

    /// Non-resident pages remembered now.
    fn history_len(&self) -> usize;

    /// The most non-resident pages the policy ever remembers.
    fn history_limit(&self) -> usize;

    /// Whether `page` is resident.
    fn is_resident(&self, page: PageId) -> bool;

    /// `page` was faulted in and now occupies a frame. Reports whether the
    /// policy remembered it (a refault, also counted in
    /// [`stats`](Self::stats)).
    fn insert(&mut self, page: PageId) -> Result<FaultIn, ReplaceError>;

    /// `page` was referenced (its Accessed bit was found set). Returns
    /// whether it is resident; a report for a page that is not is ignored.
    /// The first report after `insert` stands for the faulting access.
    /// Reporting twice between two looks of the policy is the same as once.
    fn referenced(&mut self, page: PageId) -> bool;

    /// Chooses a resident page to give up, removes it from the resident set
    /// (keeping it in history where the policy wants) and returns it; `None`
    /// when nothing is resident.
    fn evict(&mut self) -> Option<PageId>;

    /// `page` was unmapped or freed: forget it, resident or in history.
    fn remove(&mut self, page: PageId) -> Removed;

    /// A hint that resident `page` will not be used soon (`MADV_COLD`):
    /// forget its references and let it go early. Returns whether the
    /// policy acted on it; a policy may ignore hints (the default).
    fn demote(&mut self, page: PageId) -> bool {
        let _ = page;
        false
    }

    /// Counters since the policy was made.
    fn stats(&self) -> ReplaceStats;
}
