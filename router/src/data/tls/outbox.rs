//! Bytes a stream hands to its I/O thread at a held flush, which the thread sends itself
//! as its turn ends (`flush`).
//!
//! A held flush used to park its task's waker, and the turn's end woke the task only for
//! it to send: a whole pass over its connection's futures per held flush (about 2,500
//! instructions per plain request, 5% of one), after which tokio looked for I/O once more
//! without sleeping. Now a stream on a socket hands over its sealed bytes with the
//! socket's descriptor and its flush is done; as the turn ends the thread sends every
//! parcel. Only a parcel its socket does not take whole (it pushed back, or failed) wakes
//! its task, which takes the rest back and sends it as any write, waiting on the socket.
//!
//! A parcel lives in a thread-local table, reached through its [`Parcel`], which its
//! stream keeps in place of the bytes (in its `flush::Handover`, which decides when to
//! hand over) and must declare before its socket: dropping the
//! parcel (the stream closing) sends what still waits at once, best effort, while the
//! socket is open. So a flush that returned means the bytes will be offered to the socket
//! by the turn's end, not that the socket has them: a stream dropped without a shutdown
//! loses what the socket then refuses, as it loses what its socket's buffer holds.
//!
//! Streams never move between threads: a connection's task stays on the I/O thread that
//! runs it, and only I/O threads hold flushes. A parcel reached from another thread would
//! leave its entry, descriptor and all, in the first thread's table, to be sent to a
//! descriptor that may by then name another client's socket; rather than risk that, the
//! process aborts.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::RawFd;
use std::task::Waker;

use crate::data::socket::send_now;

thread_local! {
    static OUTBOX: RefCell<Outbox> = const { RefCell::new(Outbox::new()) };
    /// This thread's table, told apart from every other thread's (0: none yet).
    static TABLE: Cell<u64> = const { Cell::new(0) };
    /// Parcels this thread's sockets did not take whole, ever: a parcel handed over
    /// since the last of them, whose turn has ended, was sent, and its stream learns so
    /// without looking in the table.
    static TROUBLES: Cell<u64> = const { Cell::new(0) };
    /// Turns ended on this thread (`flush`): a parcel handed over in this one is sent
    /// as it ends, and a flush parked in an earlier one sends.
    static TURN: Cell<u64> = const { Cell::new(0) };
}

/// Spare buffers a thread keeps at most, and the largest it keeps: a held flush is at
/// most 16 KiB of plaintext, a little more sealed.
const SPARES: usize = 64;
const SPARE_MAX: usize = 32 << 10;

/// The slot of a parcel that is spent (taken back or dropped).
const SPENT: u32 = u32::MAX;

/// One thread's parcels.
struct Outbox {
    slots: Vec<Slot>,
    /// Slots free for the next parcel.
    free: Vec<u32>,
    /// The parcels handed over this turn, in order, each with its generation (one taken
    /// back meanwhile no longer matches).
    listed: Vec<(u32, u64)>,
    /// Of those, the ones still waiting (not taken back).
    waiting: usize,
    /// Buffers of parcels sent whole, emptied, for the streams' next (`spare`).
    spares: Vec<Vec<u8>>,
    /// Wakers to wake (`true`) or drop after the table is let go, kept for its room.
    wakers: Vec<(Waker, bool)>,
}

struct Slot {
    /// Raised each time the slot is freed: a parcel whose generation no longer matches
    /// has been sent.
    generation: u64,
    state: State,
}

enum State {
    Free,
    /// To be sent as the turn ends.
    Waiting {
        fd: RawFd,
        bytes: Vec<u8>,
        waker: Waker,
    },
    /// The socket took only the bytes before `from`; its task was woken for the rest.
    PushedBack {
        bytes: Vec<u8>,
        from: usize,
    },
    /// The socket failed; its task was woken to hear it.
    Failed(io::Error),
}

impl Outbox {
    const fn new() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            listed: Vec::new(),
            waiting: 0,
            spares: Vec::new(),
            wakers: Vec::new(),
        }
    }
}

/// What a stream takes back from the thread.
#[derive(Debug)]
pub(crate) enum Returned {
    /// All of it went (or nothing had been handed over).
    Sent,
    /// The socket pushed back: these bytes are still to go, `from` on.
    Unsent { bytes: Vec<u8>, from: usize },
    /// Still waiting for the turn's end, whole.
    Waiting(Vec<u8>),
}

/// Bytes handed to this thread, to be sent as its turn ends. Keep it in place of the
/// bytes, declared before the socket they go to (see the module's doc).
#[derive(Debug)]
pub(crate) struct Parcel {
    table: u64,
    slot: u32,
    generation: u64,
    len: usize,
    /// The turn it was handed over in: it waits until that turn ends.
    turn: u64,
    /// `TROUBLES` when it was handed over.
    troubles: u64,
}

/// This thread's table's identity, given on first use.
fn table() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = TABLE.get();
    if id != 0 {
        return id;
    }
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    TABLE.set(id);
    id
}

/// This thread's count of ended turns.
#[inline]
pub(crate) fn turn() -> u64 {
    TURN.get()
}

/// Ends this thread's turn: counts it and sends every parcel handed over in it
/// (`flush::end_of_turn`).
pub(crate) fn end_turn() {
    TURN.set(TURN.get().wrapping_add(1));
    send_all();
}

/// Hands `bytes` to this thread to send to `fd` as its turn ends; `waker` is woken if
/// the socket does not take them all then. `fd` must stay open while the parcel lives.
pub(crate) fn hand_over(fd: RawFd, bytes: Vec<u8>, waker: &Waker) -> Parcel {
    let len = bytes.len();
    let table = table();
    OUTBOX.with_borrow_mut(|o| {
        let state = State::Waiting {
            fd,
            bytes,
            waker: waker.clone(),
        };
        let slot = match o.free.pop() {
            Some(i) => {
                o.slots[i as usize].state = state;
                i
            }
            None => {
                // One slot per stream at most, and streams are bounded by descriptors.
                let i = u32::try_from(o.slots.len())
                    .ok()
                    .filter(|&i| i != SPENT)
                    .expect("fewer parcels than descriptors");
                o.slots.push(Slot {
                    generation: 0,
                    state,
                });
                i
            }
        };
        let generation = o.slots[slot as usize].generation;
        o.listed.push((slot, generation));
        o.waiting += 1;
        Parcel {
            table,
            slot,
            generation,
            len,
            turn: turn(),
            troubles: TROUBLES.get(),
        }
    })
}

/// An empty buffer for bytes to be held: one a sent parcel left, if the thread has one
/// (a busy thread's held flushes then allocate nothing), else a new one.
pub(crate) fn spare() -> Vec<u8> {
    OUTBOX
        .with_borrow_mut(|o| o.spares.pop())
        .unwrap_or_default()
}

/// Gives back a buffer held bytes were kept in (`spare`), emptied.
pub(crate) fn recycle(bytes: Vec<u8>) {
    // Nothing to keep, and no need to reach the thread's outbox for it.
    if bytes.capacity() != 0 {
        OUTBOX.with_borrow_mut(|o| o.keep_spare(bytes));
    }
}

/// Parcels handed over this turn and still waiting.
pub(crate) fn waiting() -> usize {
    OUTBOX.with_borrow(|o| o.waiting)
}

/// Sends every parcel handed over this turn. A socket that does not take its parcel
/// whole has its task woken.
fn send_all() {
    let mut wakers = OUTBOX.with_borrow_mut(|o| {
        if o.listed.is_empty() {
            return Vec::new();
        }
        let mut wakers = std::mem::take(&mut o.wakers);
        let listed = std::mem::take(&mut o.listed);
        for &(i, generation) in &listed {
            wakers.extend(o.send(i, generation));
        }
        // The list's room is kept for the next turn.
        o.listed = listed;
        o.listed.clear();
        o.waiting = 0;
        wakers
    });
    if wakers.capacity() == 0 {
        return;
    }
    // Woken, and dropped, with the table let go: what they set off may reach it.
    for (waker, wake) in wakers.drain(..) {
        if wake {
            waker.wake();
        }
    }
    OUTBOX.with_borrow_mut(|o| {
        if o.wakers.capacity() < wakers.capacity() {
            o.wakers = wakers;
        }
    });
}

impl Outbox {
    /// Keeps `bytes`' buffer, emptied, for a stream's next held bytes, if it is not one
    /// of the rare large ones and there is room.
    fn keep_spare(&mut self, mut bytes: Vec<u8>) {
        if bytes.capacity() <= SPARE_MAX && self.spares.len() < SPARES {
            bytes.clear();
            self.spares.push(bytes);
        }
    }

    /// Sends the parcel in slot `i` if it is still the one listed (`generation`) and
    /// waiting: its task's waker, and whether to wake it (its socket did not take it
    /// whole).
    fn send(&mut self, i: u32, generation: u64) -> Option<(Waker, bool)> {
        let slot = self.slots.get_mut(i as usize)?;
        if slot.generation != generation || !matches!(slot.state, State::Waiting { .. }) {
            // Taken back meanwhile.
            return None;
        }
        let State::Waiting { fd, bytes, waker } = std::mem::replace(&mut slot.state, State::Free)
        else {
            return None;
        };
        match send_now(fd, &bytes) {
            Ok(n) if n == bytes.len() => {
                slot.generation += 1;
                self.free.push(i);
                self.keep_spare(bytes);
                return Some((waker, false));
            }
            Ok(from) => slot.state = State::PushedBack { bytes, from },
            Err(e) => slot.state = State::Failed(e),
        }
        TROUBLES.set(TROUBLES.get() + 1);
        Some((waker, true))
    }
}

/// The process cannot go on safely: a parcel was reached from a thread other than its
/// own (see the module's doc).
#[cold]
fn moved_between_threads() -> ! {
    tracing::error!("a stream's held bytes were reached from another thread; aborting rather than send them to a descriptor that may have been reused");
    std::process::abort()
}

impl Parcel {
    /// The bytes handed over and not known to be sent: all of them until the turn has
    /// ended; after it, none, or what the socket refused if it pushed back.
    pub(crate) fn len(&self) -> usize {
        if self.slot == SPENT {
            return 0;
        }
        if self.waiting() {
            return self.len;
        }
        if TROUBLES.get() == self.troubles {
            return 0;
        }
        OUTBOX.with_borrow(|o| match o.slots.get(self.slot as usize) {
            Some(s) if s.generation == self.generation => match &s.state {
                State::PushedBack { bytes, from } => bytes.len() - from,
                State::Waiting { bytes, .. } => bytes.len(),
                State::Failed(_) | State::Free => 0,
            },
            _ => 0,
        })
    }

    /// Whether the thread still holds it whole, to send as this turn ends: the turn it
    /// was handed over in has not ended (no look in the table).
    #[inline]
    pub(crate) fn waiting(&self) -> bool {
        if self.table != TABLE.get() {
            moved_between_threads();
        }
        self.turn == turn()
    }

    /// Adds `more` to the parcel while it waits (a later flush in the same turn): true
    /// if it did; false if the parcel has gone, and `more` must be sent otherwise.
    pub(crate) fn add(&mut self, more: &[u8]) -> bool {
        if !self.waiting() {
            return false;
        }
        let added = OUTBOX.with_borrow_mut(|o| match o.slots.get_mut(self.slot as usize) {
            Some(Slot {
                generation,
                state: State::Waiting { bytes, .. },
            }) if *generation == self.generation => {
                bytes.extend_from_slice(more);
                true
            }
            _ => false,
        });
        if added {
            self.len += more.len();
        }
        added
    }

    /// Takes the parcel back into `out`, the queue its stream sends from `*pos`: what
    /// its socket has not taken goes before what was queued since. True if the socket
    /// pushed back; its error if it failed.
    pub(crate) fn take_back_into(self, out: &mut Vec<u8>, pos: &mut usize) -> io::Result<bool> {
        let (mut bytes, from, pushed_back) = match self.take_back()? {
            Returned::Sent => return Ok(false),
            Returned::Waiting(bytes) => (bytes, 0, false),
            Returned::Unsent { bytes, from } => (bytes, from, true),
        };
        if *pos == out.len() {
            recycle(std::mem::replace(out, bytes));
            *pos = from;
        } else {
            bytes.drain(..from);
            bytes.extend_from_slice(&out[*pos..]);
            recycle(std::mem::replace(out, bytes));
            *pos = 0;
        }
        Ok(pushed_back)
    }

    /// Takes the parcel back: what its socket has not taken, or its socket's error.
    pub(crate) fn take_back(mut self) -> io::Result<Returned> {
        if !self.waiting() && TROUBLES.get() == self.troubles {
            // Its turn ended and every parcel since went whole: it was sent, and its
            // slot freed.
            self.slot = SPENT;
            return Ok(Returned::Sent);
        }
        match self.remove() {
            State::Free => Ok(Returned::Sent),
            State::Waiting { bytes, .. } => Ok(Returned::Waiting(bytes)),
            State::PushedBack { bytes, from } => Ok(Returned::Unsent { bytes, from }),
            State::Failed(e) => Err(e),
        }
    }

    /// Frees the parcel's slot, for what it held. Afterwards the parcel is spent: its
    /// drop does nothing.
    fn remove(&mut self) -> State {
        let slot = std::mem::replace(&mut self.slot, SPENT);
        if slot == SPENT {
            return State::Free;
        }
        if self.table != TABLE.get() {
            moved_between_threads();
        }
        let generation = self.generation;
        // The table is gone only as the thread ends, after its streams.
        OUTBOX
            .try_with(|o| {
                let mut o = o.borrow_mut();
                let Some(s) = o.slots.get_mut(slot as usize) else {
                    return State::Free;
                };
                if s.generation != generation {
                    // Sent, and the slot freed, at the turn's end.
                    return State::Free;
                }
                s.generation += 1;
                let state = std::mem::replace(&mut s.state, State::Free);
                if matches!(state, State::Waiting { .. }) {
                    o.waiting -= 1;
                }
                o.free.push(slot);
                state
            })
            .unwrap_or(State::Free)
    }
}

impl Drop for Parcel {
    /// The stream is closing with bytes its flush promised: they go now, best effort,
    /// while the socket is still open.
    fn drop(&mut self) {
        if self.slot == SPENT {
            return;
        }
        match self.remove() {
            State::Waiting { fd, bytes, .. } => {
                let _ = send_now(fd, &bytes);
            }
            // Its task was woken for these and never took them: the stream is going.
            State::PushedBack { .. } | State::Failed(_) | State::Free => {}
        }
    }
}

#[cfg(test)]
#[path = "outbox_tests.rs"]
mod tests;
