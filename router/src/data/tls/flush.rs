//! Flushes held to the end of an I/O thread's busy spell, and sent together.
//!
//! A proxy that writes each answer the moment it is ready wakes its client once per
//! answer. HAProxy and NGINX run their event loops in turns: they take every ready event,
//! then send what the turn produced, so a client with many connections finds several
//! answers ready at each wake-up. Here a TLS stream on an I/O thread keeps its sealed
//! records when asked to flush and holds the flush; just before the thread would sleep
//! (nothing left to run: tokio's `on_thread_park`, which runs before the thread checks
//! its queue a last time), every held flush is sent. The records are sealed and counted
//! as written all the same; only the `send` waits for the turn's end.
//!
//! A stream on a TCP socket (a client's TLS stream, a plain connection to a pod) hands
//! its held bytes to the thread (`outbox`), which sends them itself at the turn's end:
//! its flush is done at once and its task is not polled again for it. A stream that
//! cannot (on a ring, `--io-uring`) parks its task's waker instead ([`Held`]), and the
//! turn's end wakes it to send.
//!
//! A turn's first flush is not held: it sends at once (everything its stream sealed,
//! an answer's head and body together), and only the flushes after it in the same turn
//! wait. A lightly loaded thread, whose turn is one answer, then adds no wait to it
//! (holding that one too cost the HTTP cell's p99 at moderate load 3–11%:
//! `benches/RESULTS.md`), while a busy one still sends nearly all of its turn together.
//! Nor is any flush held until the turn has run for [`HOLD_AFTER`]. A turn starts as
//! the runtime unparks (`on_thread_unpark`, which tokio calls after every park hook,
//! whether the thread slept or the hook's own wakes left it work): at moderate load a
//! turn is an answer or two, over before that, and a flush held behind the first only
//! waited for nothing to join it (or for the thread to be preempted before the turn
//! ended); a saturated thread's turns run longer, and their later flushes still go out
//! together.
//!
//! Only threads that run the hook hold flushes ([`hold_on_this_thread`]); elsewhere (the
//! tests' runtimes, the admin listener) a flush sends at once, as before.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::RawFd;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use super::outbox::{self, Parcel};

/// The longest a flush is held, and the most flushes held at once (parcels waiting and
/// wakers parked): tokio calls the park
/// hook only when the thread runs dry, and a thread kept busy (a flood, a backend
/// streaming to many clients) may not for a long time, so a turn is also ended by the
/// flush that finds it this old or this full.
const TURN_MAX: Duration = Duration::from_micros(250);
const PARKED_MAX: usize = 128;

/// How long into a turn flushes still go at once: a lightly loaded thread's turn (an
/// answer or two, about 15 µs of work each) is over within it. A saturated thread's
/// turns run past it: flat out, holding the rest of them still gains the HTTP cell
/// about 2% (`benches/RESULTS.md`).
const HOLD_AFTER: Duration = Duration::from_micros(50);

thread_local! {
    /// The tasks whose flushes wait for this thread's turn to end (streams that cannot
    /// hand their bytes over); `None` on a thread that does not hold flushes.
    static PARKED: RefCell<Option<Vec<Waker>>> = const { RefCell::new(None) };
    /// Whether this thread holds flushes (the same as `PARKED` being `Some`, read
    /// without a borrow on every write).
    static HOLDING: Cell<bool> = const { Cell::new(false) };
    /// When the turn ends at the latest, once a flush is held in it: its first held
    /// flush's time plus [`TURN_MAX`] (a deadline kept, not a time, so each flush only
    /// compares).
    static ENDS_BY: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Whether this turn's first flush has been asked for (and sent at once).
    static FIRST_ASKED: Cell<bool> = const { Cell::new(false) };
    /// Until when the current turn's flushes go at once: the runtime's last unpark plus
    /// [`HOLD_AFTER`]; `None` where no unpark hook runs (flushes held from the turn's
    /// second, as before).
    static YOUNG_UNTIL: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Makes this thread hold flushes until its turn ends. Its runtime must call
/// [`end_of_turn`] before it parks.
pub(crate) fn hold_on_this_thread() {
    PARKED.with_borrow_mut(|p| {
        p.get_or_insert_with(Vec::new);
    });
    HOLDING.set(true);
}

/// Whether this thread holds flushes: a write then keeps its sealed records for the
/// flush instead of sending them at once.
#[inline]
pub(crate) fn holding() -> bool {
    HOLDING.get()
}

/// Sends every parcel handed over (`outbox`) and wakes every parked flush: called just
/// before the thread parks. The woken tasks run before it does (tokio's current-thread
/// scheduler checks its queue after the hook).
pub(crate) fn end_of_turn() {
    ENDS_BY.set(None);
    FIRST_ASKED.set(false);
    // The turn's parcels go, and it is counted ended (before the parked tasks run).
    outbox::end_turn();
    let woken = PARKED.with_borrow_mut(|p| match p {
        Some(list) if !list.is_empty() => std::mem::replace(list, Vec::with_capacity(16)),
        _ => Vec::new(),
    });
    for w in woken {
        w.wake();
    }
}

/// Ends this thread's turn if its first held flush has waited past [`TURN_MAX`]: the
/// I/O thread's heartbeat calls it. A turn otherwise ends only as the thread runs dry
/// or at a later flush that finds it old, and a thread kept busy by work that flushes
/// nothing (its tasks yielding to each other) would hold a flush for as long as that
/// lasts; with this, for at most one heartbeat.
pub(crate) fn end_overdue_turn() {
    if ENDS_BY.get().is_some_and(|by| Instant::now() > by) {
        end_of_turn();
    }
}

/// Notes a turn's start: its runtime's `on_thread_unpark` hook. Until [`HOLD_AFTER`]
/// has passed, the turn's flushes send at once.
pub(crate) fn start_of_turn() {
    YOUNG_UNTIL.set(Some(Instant::now() + HOLD_AFTER));
}

/// Whether the turn is young at `now`: its flushes go at once.
fn young(now: Instant) -> bool {
    YOUNG_UNTIL.get().is_some_and(|until| now < until)
}

/// Whether the turn has run too long at `now`, its first held flush at `now` if none
/// was held before.
fn overdue(now: Instant) -> bool {
    let by = ENDS_BY.get().unwrap_or_else(|| {
        let by = now + TURN_MAX;
        ENDS_BY.set(Some(by));
        by
    });
    now > by
}

/// Whether a flush asked now should hand its bytes to the thread (`outbox`), to go as
/// the turn ends, by the same rule as [`Held::wait`]: only on a thread that holds
/// flushes, never the turn's first, nor one asked before the turn has run
/// [`HOLD_AFTER`]. A turn too long or too full ends here, and this flush sends at once.
pub(crate) fn hand_over_now() -> bool {
    if !HOLDING.get() || !FIRST_ASKED.replace(true) {
        return false;
    }
    let now = Instant::now();
    if young(now) {
        return false;
    }
    let parked = PARKED.with_borrow(|p| p.as_ref().map_or(0, Vec::len));
    if overdue(now) || outbox::waiting() + parked >= PARKED_MAX {
        end_of_turn();
        return false;
    }
    true
}

/// A stream's held flushes handed to its thread (`outbox`), for a stream on a socket the
/// thread may send to: what the thread holds for it, and whether its socket pushed back.
/// Its owner keeps its queue (`out`, sent from `pos`) and declares this before its
/// socket: the parcel, dropped first, sends what still waits while the socket is open.
#[derive(Debug, Default)]
pub(crate) struct Handover {
    parcel: Option<Parcel>,
    /// The socket's descriptor; `None`: the stream may not hand over (it parks instead).
    fd: Option<RawFd>,
    /// The socket pushed back: nothing is handed over until it has taken what is queued.
    pushed_back: bool,
}

impl Handover {
    /// Held flushes for the socket `fd` go from the thread.
    pub(crate) fn to(fd: RawFd) -> Self {
        Self {
            fd: Some(fd),
            ..Self::default()
        }
    }

    /// Whether the stream's held flushes go from the thread.
    pub(crate) fn allowed(&self) -> bool {
        self.fd.is_some()
    }

    /// Bytes the thread holds for the stream, not known to be sent.
    pub(crate) fn len(&self) -> usize {
        self.parcel.as_ref().map_or(0, Parcel::len)
    }

    /// Whether the thread holds the stream's bytes whole, to send as this turn ends,
    /// and nothing was queued since (`queued`).
    pub(crate) fn waiting_with_nothing_since(&self, queued: usize) -> bool {
        queued == 0 && self.parcel.as_ref().is_some_and(Parcel::waiting)
    }

    /// The socket took what was queued.
    pub(crate) fn sent(&mut self) {
        self.pushed_back = false;
    }

    /// The socket refused some of what was queued: it waits for the socket, not a turn.
    pub(crate) fn pushed_back(&mut self) {
        self.pushed_back = true;
    }

    /// Takes back what the thread holds into the queue `out` (sent from `*pos`): it goes
    /// before what was queued since. Its socket's error is the stream's.
    #[inline]
    pub(crate) fn take_back(&mut self, out: &mut Vec<u8>, pos: &mut usize) -> io::Result<()> {
        if let Some(parcel) = self.parcel.take() {
            self.pushed_back |= parcel.take_back_into(out, pos)?;
        }
        Ok(())
    }

    /// A flush of the queue `out` (sent from `*pos`): true if it is done, its bytes with
    /// the thread (handed over now, joined to a parcel still waiting, or nothing new);
    /// false if the stream sends the queue itself (not the rule now, or its socket
    /// pushed back), what the thread held taken back into it first.
    pub(crate) fn flush(
        &mut self,
        out: &mut Vec<u8>,
        pos: &mut usize,
        cx: &Context<'_>,
    ) -> io::Result<bool> {
        let Some(fd) = self.fd else {
            return Ok(false);
        };
        if self.waiting_with_nothing_since(out.len() - *pos) {
            return Ok(true);
        }
        // Asked even to join a waiting parcel: a turn held too long ends here.
        let hold = *pos == 0 && !out.is_empty() && !self.pushed_back && hand_over_now();
        if hold {
            if let Some(parcel) = &mut self.parcel {
                if parcel.add(out) {
                    outbox::recycle(std::mem::take(out));
                    return Ok(true);
                }
            }
        }
        // A parcel gone with its turn, or one its socket pushed back on (its rest is
        // sent as any write), comes back.
        self.take_back(out, pos)?;
        if !hold || self.pushed_back {
            return Ok(false);
        }
        self.parcel = Some(outbox::hand_over(fd, std::mem::take(out), cx.waker()));
        Ok(true)
    }

    /// Whether a parcel is out with the thread (sent or not).
    #[cfg(test)]
    pub(crate) fn handed_over(&self) -> bool {
        self.parcel.is_some()
    }
}

/// A flush held for the turn's end by parking its task, from the turn it was asked in:
/// for a stream that cannot hand its bytes to the thread ([`hand_over_now`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Held {
    /// The turn the task's waker was parked in, if it is parked.
    parked_in: Option<u64>,
}

impl Held {
    /// Whether the flush should wait: on a thread that holds flushes, until the turn in
    /// which it was first asked has ended (the task's waker parked once per turn),
    /// unless it is the turn's first flush. `false`: send now.
    pub(crate) fn wait(&mut self, cx: &mut Context<'_>) -> bool {
        if !HOLDING.get() {
            return false;
        }
        let turn = outbox::turn();
        if self.parked_in.is_some_and(|t| t != turn) {
            // The turn it was held in has ended: send.
            self.parked_in = None;
            return false;
        }
        if self.parked_in.is_none() && !FIRST_ASKED.replace(true) {
            // The turn's first flush: nothing has gone yet for it to wait with.
            return false;
        }
        let now = Instant::now();
        if self.parked_in.is_none() && young(now) {
            // The turn has only just begun: too little of it to send together.
            return false;
        }
        let full = PARKED.with_borrow_mut(|p| {
            let Some(list) = p else { return true };
            // Parked on its first wait in a turn, and again when the last waker parked
            // is not this task's (others parked since, or the stream changed hands): a
            // parked flush always has its task's waker in the list; an extra one only
            // wakes it once more.
            if self.parked_in.is_none() || !list.last().is_some_and(|w| w.will_wake(cx.waker())) {
                list.push(cx.waker().clone());
            }
            list.len() > PARKED_MAX
        });
        if overdue(now) || full {
            // A turn too long or too full ends here: the others are woken, this one sends.
            end_of_turn();
            self.parked_in = None;
            return false;
        }
        self.parked_in = Some(turn);
        true
    }

    /// Whether a flush is held, waiting for its turn's end (not a stalled socket).
    pub(crate) fn is_held(&self) -> bool {
        self.parked_in == Some(outbox::turn())
    }

    /// Forgets a parked flush that was sent meanwhile (by a later write or a shutdown);
    /// its waker, if still parked, only wakes the task once more.
    pub(crate) fn sent(&mut self) {
        self.parked_in = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::tls::test_io::counting;

    /// Ends the turn and starts one that no clock ends (`TURN_MAX`): however slow the
    /// machine running the test, only the hook or a full list ends it.
    fn endless_turn() {
        end_of_turn();
        ENDS_BY.set(Some(Instant::now() + Duration::from_secs(3600)));
    }

    /// This thread holding flushes, in a turn no clock ends; a waker for the flushes.
    fn holding_in_an_endless_turn() -> Waker {
        hold_on_this_thread();
        endless_turn();
        counting().1
    }

    #[test]
    fn a_flush_waits_for_the_turn_to_end_only_where_the_thread_holds_them() {
        let (count, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        // Not held here yet: send at once.
        let mut held = Held::default();
        assert!(!held.wait(&mut cx));
        hold_on_this_thread();
        endless_turn();
        let mut first = Held::default();
        assert!(!first.wait(&mut cx), "the turn's first flush sends at once");
        assert!(held.wait(&mut cx), "the next parks for the turn");
        assert!(held.wait(&mut cx), "still the same turn: parked once");
        endless_turn();
        assert_eq!(count.woken(), 1, "woken once");
        assert!(!held.wait(&mut cx), "the turn ended: send");
        assert!(
            !first.wait(&mut cx),
            "the new turn's first flush sends at once"
        );
        assert!(held.wait(&mut cx), "a flush after it parks again");
        held.sent();
        endless_turn();
        assert_eq!(count.woken(), 2);
        assert!(!first.wait(&mut cx));
        assert!(held.wait(&mut cx), "sent meanwhile: a new flush parks");
    }

    #[test]
    fn a_heartbeat_ends_only_a_turn_whose_flushes_have_waited_too_long() {
        let (count, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        hold_on_this_thread();
        endless_turn();
        assert!(!Held::default().wait(&mut cx), "the turn's first sends");
        let mut held = Held::default();
        assert!(held.wait(&mut cx), "the next waits");
        // Parked just now (the endless turn's clock says so): not overdue.
        ENDS_BY.set(Some(Instant::now() + Duration::from_secs(3600)));
        end_overdue_turn();
        assert_eq!(count.woken(), 0);
        assert!(held.is_held());
        // Parked longer ago than a turn may last: the heartbeat ends it.
        ENDS_BY.set(Instant::now().checked_sub(TURN_MAX * 3));
        end_overdue_turn();
        assert_eq!(count.woken(), 1, "woken");
        assert!(!held.wait(&mut cx), "and it sends");
        // Nothing parked: nothing to end.
        end_overdue_turn();
        assert_eq!(count.woken(), 1);
    }

    #[test]
    fn a_turns_first_flush_goes_at_once_and_the_rest_wait() {
        let waker = holding_in_an_endless_turn();
        let mut cx = Context::from_waker(&waker);
        let mut streams = [Held::default(), Held::default(), Held::default()];
        let parked: Vec<bool> = streams.iter_mut().map(|h| h.wait(&mut cx)).collect();
        assert_eq!(
            parked,
            [false, true, true],
            "the first sends, the others wait"
        );
        // A second flush of the stream that went first waits too.
        assert!(streams[0].wait(&mut cx));
        endless_turn();
        assert!(
            streams.iter_mut().all(|h| !h.wait(&mut cx)),
            "the turn ended: all send"
        );
        assert!(
            !Held::default().wait(&mut cx),
            "the new turn's first sends at once"
        );
        assert!(Held::default().wait(&mut cx), "and the next waits");
    }

    #[test]
    fn flushes_go_at_once_until_the_turn_has_run_a_while() {
        let waker = holding_in_an_endless_turn();
        let mut cx = Context::from_waker(&waker);
        // A turn begun "later than now": however slow this machine, still within HOLD_AFTER.
        YOUNG_UNTIL.set(Some(Instant::now() + Duration::from_secs(60)));
        let mut streams = [Held::default(), Held::default(), Held::default()];
        assert!(
            streams.iter_mut().all(|h| !h.wait(&mut cx)),
            "a turn just begun: every flush sends at once"
        );
        // A turn older than HOLD_AFTER: its first flush sends, the rest wait.
        let Some(past) = Instant::now().checked_sub(HOLD_AFTER * 2) else {
            return;
        };
        YOUNG_UNTIL.set(Some(past));
        endless_turn();
        let parked: Vec<bool> = streams.iter_mut().map(|h| h.wait(&mut cx)).collect();
        assert_eq!(parked, [false, true, true]);
        // The hook notes the turn's start.
        start_of_turn();
        assert!(YOUNG_UNTIL.get().is_some_and(|w| w > past));
    }

    #[test]
    fn a_turn_ended_by_a_full_list_starts_with_a_flush_sent_at_once() {
        let waker = holding_in_an_endless_turn();
        let mut cx = Context::from_waker(&waker);
        assert!(!Held::default().wait(&mut cx));
        let mut held = vec![Held::default(); PARKED_MAX + 1];
        let parked: Vec<bool> = held.iter_mut().map(|h| h.wait(&mut cx)).collect();
        assert_eq!(
            parked.last(),
            Some(&false),
            "the flush that found the list full sent"
        );
        assert!(
            !Held::default().wait(&mut cx),
            "a new turn: its first flush sends"
        );
    }

    #[test]
    fn a_turn_too_full_ends_at_the_flush_that_finds_it_so() {
        hold_on_this_thread();
        endless_turn();
        // The turn's first flush, which sends at once.
        let (_, first) = counting();
        assert!(!Held::default().wait(&mut Context::from_waker(&first)));
        let (counts, wakers): (Vec<_>, Vec<_>) = (0..=PARKED_MAX).map(|_| counting()).unzip();
        let mut held = vec![Held::default(); wakers.len()];
        for (i, (h, w)) in held.iter_mut().zip(&wakers).enumerate() {
            let parked = h.wait(&mut Context::from_waker(w));
            // The last one finds the list full: it sends, and every other is woken.
            assert_eq!(parked, i < PARKED_MAX, "flush {i}");
        }
        let woken: usize = counts.iter().map(|c| c.woken()).sum();
        assert_eq!(woken, PARKED_MAX + 1);
        // Those woken send when polled again.
        let sent = held.iter_mut().zip(&wakers).take(PARKED_MAX);
        assert!(sent
            .into_iter()
            .all(|(h, w)| !h.wait(&mut Context::from_waker(w))));
    }

    #[test]
    fn parked_flushes_run_before_the_thread_sleeps() {
        // A current-thread runtime with the hook: a task that parks its flush is woken
        // and finishes without any other event.
        let rt = tokio::runtime::Builder::new_current_thread()
            .on_thread_park(end_of_turn)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let done = rt.block_on(async {
            hold_on_this_thread();
            let mut held = Held::default();
            let mut polls = 0;
            std::future::poll_fn(|cx| {
                polls += 1;
                if polls == 1 {
                    // The turn's first flush sends at once; this one is the second.
                    assert!(!Held::default().wait(cx));
                }
                if held.wait(cx) {
                    std::task::Poll::Pending
                } else {
                    std::task::Poll::Ready(polls)
                }
            })
            .await
        });
        assert_eq!(done, 2, "parked once, sent on the wake at the turn's end");
    }
}
