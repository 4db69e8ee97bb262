//! The receive buffers an I/O thread's ring picks from (io_uring's provided-buffer ring):
//! one pool for every socket on the thread, so an idle socket with a receive armed holds
//! no buffer; a buffer is taken only when data arrives, and given back once the reader
//! has copied it out.

use std::alloc::Layout;
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

/// The buffer group the receives name.
pub(super) const GROUP: u16 = 0;
/// Buffers in the pool (a power of two, as the kernel's ring asks); a few in unit tests,
/// so that sockets outnumber them.
const COUNT: u16 = if cfg!(test) { 8 } else { 256 };
/// Each buffer: a full TLS record (16 KiB of plaintext and its overhead) fits in one.
pub(super) const SIZE: usize = 16 * 1024 + 512;

/// The pool and the ring through which the kernel takes from it.
pub(super) struct Bufs {
    /// `COUNT` entries, page aligned, registered with the kernel.
    ///
    /// Neither this nor `data` is ever freed: the kernel tears a ring down in the
    /// background after its descriptor closes, and a receive it finishes meanwhile could
    /// write here. A ring lives as long as its I/O thread, which is the router's life.
    entries: *mut BufRingEntry,
    /// `COUNT * SIZE` bytes; untouched pages cost nothing until the kernel writes them.
    data: &'static mut [u8],
    /// The next tail to publish.
    tail: u16,
}

impl Bufs {
    /// Allocates the pool, registers it with `ring` and gives the kernel every buffer.
    pub(super) fn register(ring: &IoUring) -> io::Result<Self> {
        let size = std::mem::size_of::<BufRingEntry>() * usize::from(COUNT);
        let entries_layout = Layout::from_size_align(size.max(4096), 4096)
            .map_err(|_| io::Error::other("buffer ring layout"))?;
        // SAFETY: the layout has a non-zero size.
        let entries = unsafe { std::alloc::alloc_zeroed(entries_layout) }.cast::<BufRingEntry>();
        if entries.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        let mut bufs = Self {
            entries,
            data: Box::leak(vec![0u8; usize::from(COUNT) * SIZE].into_boxed_slice()),
            tail: 0,
        };
        // SAFETY: `entries` holds `COUNT` entries and is never freed.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(entries as u64, COUNT, GROUP, 0)
        }?;
        for bid in 0..COUNT {
            bufs.push(bid);
        }
        bufs.publish();
        Ok(bufs)
    }

    /// The bytes the kernel put in buffer `bid`.
    pub(super) fn get(&self, bid: u16, from: usize, to: usize) -> &[u8] {
        let start = usize::from(bid) * SIZE;
        &self.data[start + from..start + to]
    }

    /// Gives buffer `bid` back to the kernel.
    pub(super) fn give_back(&mut self, bid: u16) {
        self.push(bid);
        self.publish();
    }

    fn push(&mut self, bid: u16) {
        let i = usize::from(self.tail & (COUNT - 1));
        let addr = self.data[usize::from(bid) * SIZE..].as_ptr() as u64;
        // SAFETY: `i < COUNT`; the kernel reads only entries before the published tail,
        // and this one is past it until `publish`.
        let entry = unsafe { &mut *self.entries.add(i) };
        entry.set_addr(addr);
        entry.set_len(SIZE as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the pushed entries visible to the kernel.
    fn publish(&self) {
        // SAFETY: the tail overlays the first entry's reserved field, a u16 the kernel
        // reads with acquire ordering; it is aligned and lives as long as `entries`.
        let tail = unsafe { &*BufRingEntry::tail(self.entries).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }
}
