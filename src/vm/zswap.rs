//! A compressed cache in front of a swap device (Linux's zswap): pages
//! written to swap are compressed into a bounded pool in RAM; a page that
//! does not compress to at most [`Zswap::ACCEPT`] bytes, or that the pool
//! has no room or heap for, goes to the device. When the pool is full its
//! least recently stored entries are written to the device to make room.
//! Reading a slot decompresses it from the pool when it is there (a few
//! microseconds, against a disk request) and reads the device otherwise.
//!
//! The compressor is `lz4_flex`'s block format without its `std` feature:
//! pure Rust, no allocation of its own, built for speed over ratio, the
//! trade zswap makes (its default is lzo-rle, LZ4 the usual alternative).
//!
//! [`Zswap`] is itself a [`SwapDevice`]: `vm.attach_swap(Box::new(
//! Zswap::new(disk, pool_bytes)))` and the rest of `kmem::vm` is unchanged;
//! kmem tells it when a slot is freed ([`SwapDevice::discard`]) so the pool
//! holds only live pages.
//!
//! Concurrency: the pool is behind a spin lock held only to look up,
//! insert or remove an entry (and to decompress one on a read); writes to
//! the device (pages the pool refused, entries written back) are serialized
//! by a second lock, under which a write-back checks that its entry is still
//! the slot's current one, so a stale entry never overwrites newer data.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use super::swap::{SwapDevice, SwapIoError, CLUSTER, PAGE_BYTES};

/// What the compressed cache did since it was made ([`Zswap::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ZswapStats {
    /// Pages stored compressed in the pool.
    pub stored: u64,
    /// Pages that went to the device instead: compressed to more than
    /// [`Zswap::ACCEPT`] bytes, or no room or heap for them in the pool.
    pub rejected: u64,
    /// Pool entries written to the device to make room (least recently
    /// stored first).
    pub written_back: u64,
    /// Reads served from the pool.
    pub loads: u64,
    /// Pages written to the device in all (rejected and written back).
    pub device_writes: u64,
    /// Pages read from the device.
    pub device_reads: u64,
    /// Pages in the pool now.
    pub pool_pages: u64,
    /// Compressed bytes in the pool now.
    pub pool_bytes: u64,
}

impl ZswapStats {
    /// Uncompressed bytes over compressed bytes of the pages in the pool
    /// now (0 for an empty pool).
    pub fn compression_ratio(&self) -> f64 {
        if self.pool_bytes == 0 {
            0.0
        } else {
            (self.pool_pages * PAGE_BYTES as u64) as f64 / self.pool_bytes as f64
        }
    }
}

/// One compressed page.
struct Entry {
    data: Box<[u8]>,
    /// When it was stored (the pool's clock): the write-back order.
    stamp: u64,
}

/// The pool: one entry per slot at most, and the order they were stored in.
struct Pool {
    /// By slot.
    entries: Vec<Option<Entry>>,
    /// `(slot, stamp)` oldest first; an item whose stamp no longer matches
    /// its slot's entry is stale and skipped.
    order: VecDeque<(u64, u64)>,
    bytes: usize,
    pages: usize,
    clock: u64,
}

impl Pool {
    fn remove(&mut self, slot: u64) -> Option<Entry> {
        let e = self.entries.get_mut(slot as usize)?.take()?;
        self.bytes -= e.data.len();
        self.pages -= 1;
        Some(e)
    }

    /// The oldest entry's slot and stamp, if any.
    fn oldest(&mut self) -> Option<(u64, u64)> {
        while let Some(&(slot, stamp)) = self.order.front() {
            match &self.entries[slot as usize] {
                Some(e) if e.stamp == stamp => return Some((slot, stamp)),
                _ => {
                    self.order.pop_front();
                }
            }
        }
        None
    }

    /// Drops stale order items once they outnumber the live ones.
    fn compact(&mut self) {
        if self.order.len() > 2 * self.pages + 64 {
            let entries = &self.entries;
            self.order
                .retain(|&(s, t)| matches!(&entries[s as usize], Some(e) if e.stamp == t));
        }
    }
}

/// A compressed cache of at most `limit` bytes in front of `device`.
pub struct Zswap<D: SwapDevice> {
    device: D,
    limit: usize,
    pool: spin::Mutex<Pool>,
    /// Serializes writes to the device (see the module's docs).
    device_writes: spin::Mutex<()>,
    stored: AtomicU64,
    rejected: AtomicU64,
    written_back: AtomicU64,
    loads: AtomicU64,
    written: AtomicU64,
    read: AtomicU64,
}

impl<D: SwapDevice> core::fmt::Debug for Zswap<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Zswap")
            .field("limit", &self.limit)
            .field("stats", &self.stats())
            .finish()
    }
}

/// The room lz4_flex asks for to compress a page (its worst-case bound).
const MAX_COMPRESSED: usize = lz4_flex::block::get_maximum_output_size(PAGE_BYTES);

impl<D: SwapDevice> Zswap<D> {
    /// The most bytes a page may compress to and still be stored: three
    /// quarters of a page (zswap's `max_compression_ratio` idea: a page
    /// that saves less is not worth the pool's room).
    pub const ACCEPT: usize = PAGE_BYTES * 3 / 4;

    /// A pool of at most `limit` compressed bytes in front of `device`;
    /// `None` when the per-slot table (24 bytes a slot) does not fit on the
    /// heap. Pool entries come from the kernel heap as pages are stored (a
    /// page the heap has no room for goes to the device).
    pub fn new(device: D, limit: usize) -> Option<Self> {
        let n = usize::try_from(device.slots()).ok()?;
        let mut entries = Vec::new();
        entries.try_reserve_exact(n).ok()?;
        entries.resize_with(n, || None);
        Some(Self {
            device,
            limit,
            pool: spin::Mutex::new(Pool {
                entries,
                order: VecDeque::new(),
                bytes: 0,
                pages: 0,
                clock: 0,
            }),
            device_writes: spin::Mutex::new(()),
            stored: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            written_back: AtomicU64::new(0),
            loads: AtomicU64::new(0),
            written: AtomicU64::new(0),
            read: AtomicU64::new(0),
        })
    }

    /// The counters, and what the pool holds now.
    pub fn stats(&self) -> ZswapStats {
        let (pool_pages, pool_bytes) = {
            let p = self.pool.lock();
            (p.pages as u64, p.bytes as u64)
        };
        ZswapStats {
            stored: self.stored.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            written_back: self.written_back.load(Ordering::Relaxed),
            loads: self.loads.load(Ordering::Relaxed),
            device_writes: self.written.load(Ordering::Relaxed),
            device_reads: self.read.load(Ordering::Relaxed),
            pool_pages,
            pool_bytes,
        }
    }

    /// The device behind the pool.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// Stores `page` for `slot` in the pool if it compresses well and there
    /// is room (writing older entries back for it); returns whether it did.
    fn store(&self, slot: u64, page: &[u8; PAGE_BYTES]) -> Result<bool, SwapIoError> {
        let mut buf = [0u8; MAX_COMPRESSED];
        let len = match lz4_flex::block::compress_into(page, &mut buf) {
            Ok(len) if len <= Self::ACCEPT && len <= self.limit => len,
            _ => return Ok(false),
        };
        let mut data = Vec::new();
        if data.try_reserve_exact(len).is_err() {
            return Ok(false);
        }
        data.extend_from_slice(&buf[..len]);
        let data = data.into_boxed_slice();
        loop {
            let mut pool = self.pool.lock();
            if pool.bytes + len <= self.limit || pool.oldest().is_none() {
                if pool.order.try_reserve(1).is_err() {
                    return Ok(false);
                }
                pool.remove(slot);
                pool.clock += 1;
                let stamp = pool.clock;
                pool.bytes += len;
                pool.pages += 1;
                pool.entries[slot as usize] = Some(Entry { data, stamp });
                pool.order.push_back((slot, stamp));
                pool.compact();
                return Ok(true);
            }
            let (old, stamp) = pool.oldest().expect("checked above");
            drop(pool);
            self.write_back(old, stamp)?;
        }
    }

    /// Writes the pool's entry of `slot` (if it is still the one stored at
    /// `stamp`) to the device, with the entries of the slots after it (a
    /// run kmem wrote out together, stored together: one request for up
    /// to [`CLUSTER`] pages), and drops them from the pool.
    fn write_back(&self, slot: u64, stamp: u64) -> Result<(), SwapIoError> {
        let _device = self.device_writes.lock();
        let mut pages: Vec<[u8; PAGE_BYTES]> = Vec::new();
        let mut refs: Vec<&[u8; PAGE_BYTES]> = Vec::new();
        let mut one = [0u8; PAGE_BYTES];
        let mut stamps = [0u64; CLUSTER];
        let heap = {
            let pool = self.pool.lock();
            if !matches!(&pool.entries[slot as usize], Some(e) if e.stamp == stamp) {
                return Ok(()); // replaced or discarded meanwhile
            }
            let run = (0..CLUSTER as u64)
                .take_while(|k| matches!(pool.entries.get((slot + k) as usize), Some(Some(_))))
                .count();
            // Without heap for the run, the one page, on the stack.
            let heap = pages.try_reserve_exact(run).is_ok() && refs.try_reserve_exact(run).is_ok();
            let n = if heap { run } else { 1 };
            for (k, stamp_k) in stamps.iter_mut().enumerate().take(n) {
                let e = pool.entries[slot as usize + k]
                    .as_ref()
                    .expect("counted above");
                let page = if heap {
                    pages.push([0; PAGE_BYTES]);
                    &mut pages[k]
                } else {
                    &mut one
                };
                decompress(&e.data, page, slot + k as u64)?;
                *stamp_k = e.stamp;
            }
            heap
        };
        let written: &[&[u8; PAGE_BYTES]] = if heap {
            refs.extend(pages.iter());
            &refs
        } else {
            &[&one]
        };
        self.device.write(slot, written)?;
        self.written
            .fetch_add(written.len() as u64, Ordering::Relaxed);
        let mut pool = self.pool.lock();
        for (k, &stamp) in stamps.iter().enumerate().take(written.len()) {
            let s = slot + k as u64;
            if matches!(&pool.entries[s as usize], Some(e) if e.stamp == stamp) {
                pool.remove(s);
                self.written_back.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

impl<D: SwapDevice> Zswap<D> {
    /// Writes `pages`, the request's pages from index `start` on, to the
    /// device (an older copy of theirs in the pool would shadow them).
    fn write_through(
        &self,
        first: u64,
        pages: &[&[u8; PAGE_BYTES]],
        start: usize,
    ) -> Result<(), SwapIoError> {
        let at = first + start as u64;
        let _device = self.device_writes.lock();
        {
            let mut pool = self.pool.lock();
            for slot in at..at + pages.len() as u64 {
                pool.remove(slot);
            }
        }
        self.device.write(at, pages)?;
        self.written
            .fetch_add(pages.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

fn decompress(data: &[u8], page: &mut [u8; PAGE_BYTES], slot: u64) -> Result<(), SwapIoError> {
    match lz4_flex::block::decompress_into(data, page) {
        Ok(PAGE_BYTES) => Ok(()),
        _ => Err(SwapIoError { slot, pages: 1 }),
    }
}

impl<D: SwapDevice> SwapDevice for Zswap<D> {
    fn slots(&self) -> u64 {
        self.device.slots()
    }

    fn write(&self, first: u64, pages: &[&[u8; PAGE_BYTES]]) -> Result<(), SwapIoError> {
        if first + pages.len() as u64 > self.slots() {
            return Err(SwapIoError {
                slot: first,
                pages: pages.len(),
            });
        }
        // Pages the pool refuses go to the device in runs of consecutive
        // slots, one request each (as kmem clusters them).
        let mut run: Option<usize> = None;
        for (i, page) in pages.iter().enumerate() {
            let stored = self.store(first + i as u64, page)?;
            if stored {
                self.stored.fetch_add(1, Ordering::Relaxed);
                if let Some(start) = run.take() {
                    self.write_through(first, &pages[start..i], start)?;
                }
            } else {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                run.get_or_insert(i);
            }
        }
        if let Some(start) = run {
            self.write_through(first, &pages[start..], start)?;
        }
        Ok(())
    }

    fn read(&self, first: u64, pages: &mut [&mut [u8; PAGE_BYTES]]) -> Result<(), SwapIoError> {
        // Pages in the pool are decompressed; the others are read from the
        // device in runs of consecutive slots, one request each.
        let mut i = 0;
        while i < pages.len() {
            let slot = first + i as u64;
            {
                let pool = self.pool.lock();
                if let Some(Some(e)) = pool.entries.get(slot as usize) {
                    decompress(&e.data, pages[i], slot)?;
                    self.loads.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                    continue;
                }
            }
            let end = {
                let pool = self.pool.lock();
                (i + 1..pages.len())
                    .find(|&j| matches!(pool.entries.get(first as usize + j), Some(Some(_))))
                    .unwrap_or(pages.len())
            };
            self.device.read(slot, &mut pages[i..end])?;
            self.read.fetch_add((end - i) as u64, Ordering::Relaxed);
            i = end;
        }
        Ok(())
    }

    fn discard(&self, slot: u64) {
        self.pool.lock().remove(slot);
        self.device.discard(slot);
    }

    /// Pages read back from the pool leave it (kmem frees their slots):
    /// the pool's room goes to pages that are not in memory.
    fn copy_in_ram(&self, slot: u64) -> bool {
        matches!(self.pool.lock().entries.get(slot as usize), Some(Some(_)))
    }
}
