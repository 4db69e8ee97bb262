//! An io_uring data path for relayed sockets (`--io-uring`, Linux only, off by default).
//!
//! With epoll an I/O thread wakes, then makes a `recv` and a `send` per socket that had
//! something. Here each I/O thread owns one ring: a socket's receive and sends are
//! queued as submissions while the thread's tasks run, and the whole turn's submissions
//! go to the kernel in one `io_uring_enter` when the thread runs dry (the same hook that
//! ends the turn's held TLS flushes), which also reaps the completions that arrived. The
//! thread sleeps in tokio's `epoll_wait` as before, the ring's descriptor among its
//! sources, so nothing else about the event loop changes.
//!
//! Receives are single-shot and pick a buffer from the thread's pool (`bufs`): a socket
//! has one receive armed only while its reader waits, so an idle socket holds no buffer
//! and a reader that stops reading stops its socket (TCP's back-pressure, as with
//! epoll). A multishot receive would save re-arming, but it keeps taking buffers for a
//! reader that stopped, so it needs pausing (a cancel, with what was taken copied out
//! of the pool). Built that way and tried, it stalled every message larger than one
//! buffer until an unrelated timer woke the thread (about 1 s each, here): its
//! completions after the first did not wake a thread asleep in epoll (the cause was
//! not found). Not kept.
//! Writes are copied into the socket's own send buffer and sent from there, one send in
//! flight per socket; up to [`WRITE_MAX`] bytes may wait, then the writer waits.
//!
//! Used for HTTP/1.1 WebSockets once upgraded (`UringTcp`, made from the relay's TCP
//! sockets on a thread that has a ring); handshakes, plain requests and HTTP/2 stay on
//! epoll.

mod bufs;
mod stream;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::Waker;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

pub(crate) use stream::UringTcp;

use bufs::Bufs;

/// Bytes a socket's writes may have waiting (sent or not yet) before a writer waits.
pub(crate) const WRITE_MAX: usize = 64 * 1024;
/// Submission queue entries per ring (a turn with more submits early).
const ENTRIES: u32 = 4096;
/// Send buffers kept for reuse per thread.
const SPARE_BUFFERS: usize = 64;
/// How long a dropped socket's unfinished sends may take before they are cancelled and
/// it is closed: a peer that never reads must not hold it open for ever.
static SENDS_GRACE: types::Timespec = types::Timespec::new().sec(5);

const OP_RECV: u64 = 1;
const OP_SEND: u64 = 2;
const OP_CANCEL: u64 = 3;
const OP_GRACE: u64 = 4;
/// Bits of `user_data` that say which operation: the rest is the slot.
const OP_BITS: u32 = 3;
/// `IORING_RECVSEND_POLL_FIRST`: a receive waits for data before it picks a buffer, so
/// one armed on a quiet socket never fails for want of one.
const POLL_FIRST: u16 = 1;
/// Submissions queued, or how long the first has waited, past which they go to the
/// kernel at once rather than at the turn's end: a thread kept busy may not run dry
/// for a long time (tokio's non-blocking polls between tasks do not call the hook).
const QUEUED_MAX: usize = 64;
const QUEUED_FOR_MAX: std::time::Duration = std::time::Duration::from_micros(250);

thread_local! {
    static DRIVER: RefCell<Option<Driver>> = const { RefCell::new(None) };
}

/// Tells one thread's ring from another's, so a socket polled off its thread fails.
static NEXT_DRIVER: AtomicU32 = AtomicU32::new(1);

/// Whether this kernel lets this process use io_uring with provided-buffer rings:
/// checked once at start when `--io-uring` is asked for.
pub(crate) fn probe() -> io::Result<()> {
    Bufs::register(&new_ring(8)?).map(drop)
}

/// A ring only this thread submits to. Its completions are posted as task work that
/// interrupts the thread, even asleep in `epoll_wait`, which then sees the ring's
/// descriptor readable. (Deferring that work to `io_uring_enter` would spare the
/// interruptions, but then nothing woke a thread asleep in epoll for it here: neither
/// a registered eventfd nor the ring's descriptor was seen to, and each echo waited for
/// an unrelated timer, 15 to 35 ms; the cause was not found.)
fn new_ring(entries: u32) -> io::Result<IoUring> {
    IoUring::builder()
        .setup_single_issuer()
        .setup_cqsize(entries * 4)
        .build(entries)
}

/// Gives this thread a ring; its runtime must call [`end_of_turn`] before it parks, and
/// run [`reap_when_ready`]. Returns the ring's descriptor for that.
pub(crate) fn enable_on_this_thread() -> io::Result<RawFd> {
    let ring = new_ring(ENTRIES)?;
    let bufs = Bufs::register(&ring)?;
    let fd = ring.as_raw_fd();
    let driver = Driver {
        ring,
        bufs,
        id: NEXT_DRIVER.fetch_add(1, Ordering::Relaxed),
        socks: Vec::new(),
        free: Vec::new(),
        starved: Vec::new(),
        spare: Vec::new(),
        woken: Vec::new(),
        starvations: 0,
        backlog: VecDeque::new(),
        queued_since: None,
    };
    DRIVER.with_borrow_mut(|d| *d = Some(driver));
    Ok(fd)
}

/// Whether this thread has a ring.
pub(crate) fn here() -> bool {
    DRIVER.with_borrow(Option::is_some)
}

/// Submits the turn's queued operations and wakes whoever their completions are for.
/// Called as the thread runs dry; a no-op on a thread without a ring.
pub(crate) fn end_of_turn() {
    wake_all(submit_and_reap());
}

/// Submits what is queued and reaps what completed: the wakers to wake, once the
/// driver is no longer borrowed.
fn submit_and_reap() -> Vec<Waker> {
    DRIVER.with_borrow_mut(|d| match d {
        Some(d) => {
            d.enter();
            d.reap();
            std::mem::take(&mut d.woken)
        }
        None => Vec::new(),
    })
}

/// Reaps completions whenever the ring's descriptor says there are some: what wakes a
/// sleeping thread for its sockets.
pub(crate) async fn reap_when_ready(fd: RawFd) {
    // SAFETY: the ring's descriptor stays open for as long as this registration: the
    // ring lives in the thread's driver until the thread ends, after its runtime (and
    // this task with it) has been dropped.
    let watched = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(RingFd(fd), tokio::io::Interest::READABLE)
    };
    let ring = match watched {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "io_uring: the ring cannot be watched; its sockets will stall");
            return;
        }
    };
    loop {
        let Ok(mut ready) = ring.readable().await else {
            return;
        };
        let woken = submit_and_reap();
        ready.clear_ready();
        wake_all(woken);
    }
}

fn wake_all(woken: Vec<Waker>) {
    for w in woken {
        w.wake();
    }
}

/// The ring's descriptor, watched by tokio but owned (and closed) by the ring.
struct RingFd(RawFd);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// One thread's ring and the sockets on it.
struct Driver {
    ring: IoUring,
    bufs: Bufs,
    id: u32,
    /// Indexed by slot; a slot is reused only once its socket is dropped and none of
    /// its operations is still in the kernel.
    socks: Vec<Option<Sock>>,
    free: Vec<usize>,
    /// Sockets whose receive found the pool empty: re-armed as buffers come back.
    starved: Vec<usize>,
    /// Send buffers to reuse, so a message costs no allocation.
    spare: Vec<Vec<u8>>,
    /// Wakers to wake once the driver is no longer borrowed.
    woken: Vec<Waker>,
    /// Receives that found the pool empty, ever (the unit tests check the path ran).
    starvations: u64,
    /// Submissions the queue could not take yet, in order.
    backlog: VecDeque<squeue::Entry>,
    /// When the first submission still queued was queued.
    queued_since: Option<std::time::Instant>,
}

/// A socket's state on the ring.
struct Sock {
    fd: OwnedFd,
    recv: Recv,
    /// Received bytes the reader has not taken: buffer, from, to.
    got: Option<(u16, usize, usize)>,
    /// What a reader left of a pool buffer it read only part of, copied out so the
    /// buffer goes back at once (a reader reading less than a buffer must not hold one
    /// while it waits on its writer); read before `got`, from `kept_pos`.
    kept: Vec<u8>,
    kept_pos: usize,
    /// The peer closed its side.
    eof: bool,
    read_err: Option<i32>,
    reader: Option<Waker>,
    /// Bytes in the kernel's hands (one send at a time), from `sent`.
    sending: Vec<u8>,
    sent: usize,
    /// Bytes written while a send was in flight: the next send.
    queued: Vec<u8>,
    write_err: Option<i32>,
    writer: Option<Waker>,
    /// Operations submitted and not completed; the slot lives until they have.
    ops: u32,
    dropped: bool,
    /// Passing a reset on: closed with linger 0, its sends cancelled.
    reset: bool,
    /// Dropped with sends unfinished: how long they may still take.
    grace: Grace,
}

/// A dropped socket's grace for its unfinished sends ([`SENDS_GRACE`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Grace {
    None,
    Running,
    /// Its sends finished first: the timeout is being removed.
    Removing,
    /// Over: what is still unsent is cancelled, and nothing more is sent.
    Over,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Recv {
    Idle,
    Armed,
    /// No buffer was free: waits in `starved`.
    Starved,
}

impl Sock {
    fn new(fd: OwnedFd) -> Self {
        Self {
            fd,
            recv: Recv::Idle,
            got: None,
            kept: Vec::new(),
            kept_pos: 0,
            eof: false,
            read_err: None,
            reader: None,
            sending: Vec::new(),
            sent: 0,
            queued: Vec::new(),
            write_err: None,
            writer: None,
            ops: 0,
            dropped: false,
            reset: false,
            grace: Grace::None,
        }
    }

    fn unsent(&self) -> usize {
        self.sending.len() - self.sent + self.queued.len()
    }
}

fn user_data(slot: usize, op: u64) -> u64 {
    ((slot as u64) << OP_BITS) | op
}

/// Keeps the waker to wake, unless it already is the one kept.
fn keep(slot: &mut Option<Waker>, w: &Waker) {
    if !slot.as_ref().is_some_and(|k| k.will_wake(w)) {
        *slot = Some(w.clone());
    }
}

impl Driver {
    fn insert(&mut self, fd: OwnedFd) -> usize {
        let sock = Some(Sock::new(fd));
        match self.free.pop() {
            Some(i) => {
                self.socks[i] = sock;
                i
            }
            None => {
                self.socks.push(sock);
                self.socks.len() - 1
            }
        }
    }

    /// Queues `entry` for the turn's end; what the queue cannot take waits in `backlog`
    /// (never a spin: a full queue the kernel will not take now is retried at the next
    /// `enter`). Sent at once when many are queued or the first has waited long.
    fn push(&mut self, entry: squeue::Entry) {
        if !self.backlog.is_empty() || !self.try_push(&entry) {
            self.enter();
            if !self.backlog.is_empty() || !self.try_push(&entry) {
                self.backlog.push_back(entry);
                return;
            }
        }
        let since = *self
            .queued_since
            .get_or_insert_with(std::time::Instant::now);
        if self.ring.submission().len() >= QUEUED_MAX || since.elapsed() > QUEUED_FOR_MAX {
            self.enter();
        }
    }

    fn try_push(&mut self, entry: &squeue::Entry) -> bool {
        // SAFETY: every entry queued here points only at memory that outlives its
        // completion: a send at its socket's `sending`, which is neither touched nor
        // freed while the send is in flight (the slot lives until `ops` is 0), a
        // receive at no memory of ours (the kernel picks a pool buffer), a timeout at a
        // static.
        unsafe { self.ring.submission().push(entry) }.is_ok()
    }

    /// Submits what is queued (and what waited in `backlog`), and flushes completions
    /// the completion queue had no room for: one `io_uring_enter`, when there is either.
    fn enter(&mut self) {
        self.queued_since = None;
        loop {
            let (empty, overflow) = {
                let sq = self.ring.submission();
                (sq.is_empty(), sq.cq_overflow())
            };
            if empty && !overflow {
                return;
            }
            // With the overflow flag set the crate asks for completions too.
            if let Err(e) = self.ring.submit() {
                // EBUSY/EAGAIN: the completion queue is backed up; reaped at the turn's
                // end, then retried.
                tracing::debug!(error = %e, "io_uring: enter failed");
                return;
            }
            let mut moved = false;
            while let Some(next) = self.backlog.pop_front() {
                if !self.try_push(&next) {
                    self.backlog.push_front(next);
                    break;
                }
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }

    fn arm_recv(&mut self, slot: usize) {
        let Some(s) = self.socks[slot].as_mut() else {
            return;
        };
        s.recv = Recv::Armed;
        s.ops += 1;
        let entry = opcode::Recv::new(
            types::Fd(s.fd.as_raw_fd()),
            std::ptr::null_mut(),
            bufs::SIZE as u32,
        )
        .buf_group(bufs::GROUP)
        .ioprio(POLL_FIRST)
        .build()
        .flags(squeue::Flags::BUFFER_SELECT)
        .user_data(user_data(slot, OP_RECV));
        self.push(entry);
    }

    fn send_next(&mut self, slot: usize) {
        let Some(s) = self.socks[slot].as_mut() else {
            return;
        };
        let rest = &s.sending[s.sent..];
        s.ops += 1;
        let entry = opcode::Send::new(
            types::Fd(s.fd.as_raw_fd()),
            rest.as_ptr(),
            rest.len() as u32,
        )
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .user_data(user_data(slot, OP_SEND));
        self.push(entry);
    }

    fn cancel(&mut self, slot: usize, all: bool) {
        let Some(s) = self.socks[slot].as_mut() else {
            return;
        };
        s.ops += 1;
        let what = if all {
            types::CancelBuilder::fd(types::Fd(s.fd.as_raw_fd())).all()
        } else {
            types::CancelBuilder::user_data(user_data(slot, OP_RECV))
        };
        let entry = opcode::AsyncCancel2::new(what)
            .build()
            .user_data(user_data(slot, OP_CANCEL));
        self.push(entry);
    }

    /// Cancels whatever `slot` still has in the kernel once [`SENDS_GRACE`] has passed:
    /// a timeout hard-linked to a cancel, queued together.
    fn cancel_after_grace(&mut self, slot: usize) {
        let Some(s) = self.socks[slot].as_mut() else {
            return;
        };
        s.ops += 2;
        let fd = types::Fd(s.fd.as_raw_fd());
        s.grace = Grace::Running;
        let timeout = opcode::Timeout::new(&raw const SENDS_GRACE)
            .build()
            .flags(squeue::Flags::IO_HARDLINK)
            .user_data(user_data(slot, OP_GRACE));
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::fd(fd).all())
            .build()
            .user_data(user_data(slot, OP_CANCEL));
        // A link holds only within one submission: room for both first.
        let room = {
            let sq = self.ring.submission();
            sq.capacity() - sq.len()
        };
        if room < 2 || !self.backlog.is_empty() {
            self.enter();
        }
        self.push(timeout);
        self.push(cancel);
    }

    fn reap(&mut self) {
        loop {
            let Some(cqe) = self.ring.completion().next() else {
                return;
            };
            self.complete(cqe);
        }
    }

    fn complete(&mut self, cqe: cqueue::Entry) {
        let ud = cqe.user_data();
        let (slot, op) = ((ud >> OP_BITS) as usize, ud & ((1 << OP_BITS) - 1));
        let Some(s) = self.socks.get_mut(slot).and_then(Option::as_mut) else {
            tracing::error!(slot, "io_uring: a completion for no socket");
            return;
        };
        s.ops -= 1;
        match op {
            OP_RECV => self.received(slot, cqe.result(), cqe.flags()),
            OP_SEND => self.sent(slot, cqe.result()),
            OP_GRACE => s.grace = Grace::Over,
            _ => {}
        }
        self.release_if_done(slot);
    }

    fn received(&mut self, slot: usize, res: i32, flags: u32) {
        let Some(s) = self.socks[slot].as_mut() else {
            return;
        };
        s.recv = Recv::Idle;
        match res {
            n if n > 0 => match cqueue::buffer_select(flags) {
                Some(bid) if s.dropped => {
                    self.give_back(bid);
                    return;
                }
                Some(bid) => s.got = Some((bid, 0, n as usize)),
                None => s.read_err = Some(libc::EIO),
            },
            0 => s.eof = true,
            n if -n == libc::ENOBUFS => {
                s.recv = Recv::Starved;
                self.starved.push(slot);
                self.starvations += 1;
                return;
            }
            n if -n == libc::ECANCELED && s.dropped => {}
            n => s.read_err = Some(-n),
        }
        if let Some(w) = s.reader.take() {
            self.woken.push(w);
        }
    }

    fn sent(&mut self, slot: usize, res: i32) {
        let Some(s) = self.socks[slot].as_mut() else {
            return;
        };
        // A dropped socket passing a reset, or out of grace, sends nothing more.
        let done = s.dropped && (s.reset || s.grace == Grace::Over);
        if res < 0 || done {
            if res < 0 {
                s.write_err = Some(-res);
            }
            s.sending.clear();
            s.sent = 0;
            s.queued.clear();
        } else {
            s.sent += res as usize;
            if s.sent < s.sending.len() {
                self.send_next(slot);
                return;
            }
            s.sending.clear();
            s.sent = 0;
            if !s.queued.is_empty() && !s.reset {
                // The queued bytes go next; the emptied buffer is not kept by the socket.
                let emptied = std::mem::replace(&mut s.sending, std::mem::take(&mut s.queued));
                if self.spare.len() < SPARE_BUFFERS && emptied.capacity() <= WRITE_MAX {
                    self.spare.push(emptied);
                }
                self.send_next(slot);
            } else {
                let spare = std::mem::take(&mut s.sending);
                if self.spare.len() < SPARE_BUFFERS && spare.capacity() <= WRITE_MAX {
                    self.spare.push(spare);
                }
            }
        }
        if let Some(s) = self.socks[slot].as_mut() {
            if let Some(w) = s.writer.take() {
                self.woken.push(w);
            }
        }
    }

    /// Frees a dropped socket's slot (closing it) once the kernel holds none of its
    /// operations. One whose sends all finished within their grace stops waiting for it.
    fn release_if_done(&mut self, slot: usize) {
        let finished = self.socks[slot]
            .as_mut()
            .filter(|s| s.dropped && s.grace == Grace::Running && s.unsent() == 0);
        if let Some(s) = finished {
            s.grace = Grace::Removing;
            s.ops += 1;
            let entry = opcode::TimeoutRemove::new(user_data(slot, OP_GRACE))
                .build()
                .user_data(user_data(slot, OP_CANCEL));
            self.push(entry);
        }
        if self.socks[slot]
            .as_ref()
            .is_some_and(|s| s.dropped && s.ops == 0)
        {
            self.socks[slot] = None;
            self.free.push(slot);
        }
    }

    /// A buffer came back: every starved socket's reader tries again (each has data
    /// waiting, its receive having waited for it; those that find the pool empty again
    /// starve again).
    fn give_back(&mut self, bid: u16) {
        self.bufs.give_back(bid);
        for slot in std::mem::take(&mut self.starved) {
            if let Some(s) = self.socks[slot].as_mut() {
                if s.recv == Recv::Starved && !s.dropped {
                    s.recv = Recv::Idle;
                    if let Some(w) = s.reader.take() {
                        self.woken.push(w);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
