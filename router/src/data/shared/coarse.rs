//! Deadlines kept per I/O thread at a tenth of a second's grain, for the timeouts a
//! request almost never reaches: `--http-idle-timeout` (the wait for a pod's answer, and
//! a body's stall either way) and the wait for a request head (`--request-timeout`,
//! hyper's header read timeout).
//!
//! Each plain request armed two tokio timers and dropped both within microseconds: a
//! timer-wheel insert and removal under the driver's lock each, about 1,300 instructions
//! per request under callgrind (`benches/http_instructions.sh`). Here a deadline is a
//! slot in its thread's table, written and freed without a lock, and one tokio timer per
//! thread (a tick every [`GRAIN`] while any deadline is set) fires those that are due.
//! A deadline fires at its instant or up to a grain later, never before.
//!
//! Only threads that run the tick ([`run_on_this_thread`]: the I/O threads) keep a table,
//! for as long as the tick runs (its end wakes every deadline still set, and they carry
//! on as tokio sleeps); elsewhere (the tests' runtimes, the admin listener), or polled on
//! a thread other than the one it was set on, a deadline is a plain tokio sleep.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// How late a deadline may fire, and how often a thread with deadlines set looks.
pub(crate) const GRAIN: Duration = Duration::from_millis(100);

thread_local! {
    static TABLE: RefCell<Option<Table>> = const { RefCell::new(None) };
}

/// One thread's deadlines. A slot's generation moves on each time it is freed, so a
/// deadline that finds its slot's generation moved knows it fired.
struct Table {
    /// Tells a deadline set on this thread from one set on another.
    id: u64,
    slots: Vec<Slot>,
    free: Vec<u32>,
    set: usize,
    /// The tick, waiting for a first deadline.
    tick: Option<Waker>,
    /// When the tick last looked: a deadline already past it when set is due at once.
    checked: Instant,
}

struct Slot {
    /// 64 bits: a slot freed and set again 2^32 times while a stale deadline still held
    /// its old generation could otherwise be taken for it.
    generation: u64,
    at: Instant,
    waker: Option<Waker>,
}

/// Where a deadline waits.
enum Place {
    /// Not polled yet.
    New,
    /// In its thread's table.
    Table {
        table: u64,
        key: u32,
        generation: u64,
    },
    /// A tokio sleep: no table on the thread it was polled on.
    Sleep(Pin<Box<Sleep>>),
    Fired,
}

/// A future that resolves at `at` or up to [`GRAIN`] later.
pub(crate) struct Deadline {
    at: Instant,
    place: Place,
}

/// The tick that keeps this thread's table, to be spawned on the thread's current-thread
/// runtime: the table is there from its first poll until it is dropped.
pub(crate) fn run_on_this_thread() -> impl Future<Output = ()> {
    tick()
}

/// Fires the due deadlines every [`GRAIN`] while any is set; sleeps without a timer
/// while none is.
async fn tick() {
    let Some(_table) = Kept::install() else {
        debug_assert!(false, "a second tick on one thread");
        return;
    };
    let mut due = Vec::new();
    loop {
        let kept = std::future::poll_fn(|cx| {
            with_table(|t| {
                if t.set > 0 {
                    return Poll::Ready(true);
                }
                t.tick = Some(cx.waker().clone());
                Poll::Pending
            })
            // Its table gone: it cannot be while the tick keeps it; stop, not spin.
            .unwrap_or(Poll::Ready(false))
        })
        .await;
        if !kept {
            return;
        }
        tokio::time::sleep(GRAIN).await;
        let now = Instant::now();
        with_table(|t| t.fire(now, &mut due));
        // Woken outside the table's borrow: a woken task may set a deadline.
        due.drain(..).for_each(Waker::wake);
    }
}

/// The table's life, held by the tick: dropped (the runtime ending), it takes the table
/// off the thread and wakes the deadlines still in it, which then wait as tokio sleeps.
struct Kept;

impl Kept {
    /// `None` if the thread already has a table (and its tick).
    fn install() -> Option<Self> {
        static IDS: AtomicU64 = AtomicU64::new(1);
        TABLE
            .try_with(|t| {
                let mut t = t.try_borrow_mut().ok()?;
                if t.is_some() {
                    return None;
                }
                *t = Some(Table {
                    id: IDS.fetch_add(1, Ordering::Relaxed),
                    slots: Vec::new(),
                    free: Vec::new(),
                    set: 0,
                    tick: None,
                    checked: Instant::now(),
                });
                Some(Self)
            })
            .ok()
            .flatten()
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        let table = TABLE
            .try_with(|t| t.try_borrow_mut().ok().and_then(|mut t| t.take()))
            .ok()
            .flatten();
        for slot in table.into_iter().flat_map(|t| t.slots) {
            if let Some(waker) = slot.waker {
                waker.wake();
            }
        }
    }
}

fn with_table<R>(f: impl FnOnce(&mut Table) -> R) -> Option<R> {
    TABLE
        .try_with(|t| t.try_borrow_mut().ok()?.as_mut().map(f))
        .ok()
        .flatten()
}

impl Table {
    /// Sets a deadline: its slot and generation, and the tick to wake if it is the only
    /// one (woken by the caller, outside the table's borrow).
    fn insert(&mut self, at: Instant, waker: &Waker) -> (u32, u64, Option<Waker>) {
        let key = match self.free.pop() {
            Some(key) => key,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    at,
                    waker: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[key as usize];
        slot.at = at;
        slot.waker = Some(waker.clone());
        self.set += 1;
        let tick = if self.set == 1 {
            self.tick.take()
        } else {
            None
        };
        (key, slot.generation, tick)
    }

    /// The slot of a deadline still set, or `None` once it has fired (or was freed).
    fn slot(&mut self, key: u32, generation: u64) -> Option<&mut Slot> {
        self.slots
            .get_mut(key as usize)
            .filter(|s| s.generation == generation && s.waker.is_some())
    }

    fn remove(&mut self, key: u32) {
        let slot = &mut self.slots[key as usize];
        slot.waker = None;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(key);
        self.set -= 1;
    }

    fn fire(&mut self, now: Instant, due: &mut Vec<Waker>) {
        self.checked = now;
        for key in 0..self.slots.len() {
            let slot = &mut self.slots[key];
            if slot.at <= now {
                if let Some(waker) = slot.waker.take() {
                    due.push(waker);
                    slot.generation = slot.generation.wrapping_add(1);
                    self.free.push(key as u32);
                    self.set -= 1;
                }
            }
        }
    }
}

impl Deadline {
    pub(crate) fn until(at: Instant) -> Self {
        Self {
            at,
            place: Place::New,
        }
    }

    /// Moves the deadline to `at` (a deadline that has fired fires again only if `at`
    /// is another instant).
    pub(crate) fn reset(&mut self, at: Instant) {
        if at == self.at {
            return;
        }
        self.at = at;
        match &mut self.place {
            Place::Table {
                table,
                key,
                generation,
            } => {
                let (table, key, generation) = (*table, *key, *generation);
                let moved = with_table(|t| {
                    let here = t.id == table;
                    match t.slot(key, generation) {
                        Some(slot) if here => {
                            slot.at = at;
                            true
                        }
                        _ => false,
                    }
                });
                if moved != Some(true) {
                    self.release();
                    self.place = Place::New;
                }
            }
            Place::Sleep(sleep) => sleep.as_mut().reset(at),
            Place::New => {}
            Place::Fired => self.place = Place::New,
        }
    }

    /// Frees its slot, if it holds one on this thread's table.
    fn release(&mut self) {
        if let Place::Table {
            table,
            key,
            generation,
        } = self.place
        {
            with_table(|t| {
                if t.id == table && t.slot(key, generation).is_some() {
                    t.remove(key);
                }
            });
        }
    }

    fn sleep(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut sleep = Box::pin(tokio::time::sleep_until(self.at));
        let ready = sleep.as_mut().poll(cx);
        self.place = match ready {
            Poll::Ready(()) => Place::Fired,
            Poll::Pending => Place::Sleep(sleep),
        };
        ready
    }
}

impl Deadline {
    /// The first poll: a slot in this thread's table, at once if it is already due, or
    /// a tokio sleep where there is no table.
    fn poll_new(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let at = self.at;
        let set = with_table(|t| {
            // Already past the tick's last look: the next would be a grain late.
            if at <= t.checked {
                return None;
            }
            let (key, generation, tick) = t.insert(at, cx.waker());
            Some((t.id, key, generation, tick))
        });
        match set {
            Some(Some((table, key, generation, tick))) => {
                self.place = Place::Table {
                    table,
                    key,
                    generation,
                };
                if let Some(tick) = tick {
                    tick.wake();
                }
                Poll::Pending
            }
            Some(None) => {
                self.place = Place::Fired;
                Poll::Ready(())
            }
            None => self.sleep(cx),
        }
    }

    /// A later poll of a deadline in a table: fired once its slot's generation moved.
    fn poll_table(
        &mut self,
        cx: &mut Context<'_>,
        table: u64,
        key: u32,
        generation: u64,
    ) -> Poll<()> {
        let state = with_table(|t| {
            if t.id != table {
                return None;
            }
            Some(match t.slot(key, generation) {
                Some(slot) => {
                    if let Some(w) = slot.waker.as_mut() {
                        w.clone_from(cx.waker());
                    }
                    Poll::Pending
                }
                None => Poll::Ready(()),
            })
        })
        .flatten();
        match state {
            Some(Poll::Ready(())) => {
                self.place = Place::Fired;
                Poll::Ready(())
            }
            Some(Poll::Pending) => Poll::Pending,
            // Polled on another thread than the one it was set on (or its table ended
            // with its tick): its old slot, if any, fires unheeded there and is freed
            // then; it waits here as a sleep.
            None => self.sleep(cx),
        }
    }
}

impl Future for Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        match &mut this.place {
            Place::Fired => Poll::Ready(()),
            Place::Sleep(sleep) => {
                let ready = sleep.as_mut().poll(cx);
                if ready.is_ready() {
                    this.place = Place::Fired;
                }
                ready
            }
            Place::New => this.poll_new(cx),
            &mut Place::Table {
                table,
                key,
                generation,
            } => this.poll_table(cx, table, key, generation),
        }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        self.release();
    }
}

/// hyper's timer (the request head's timeout) on the same tables.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CoarseTimer;

impl hyper::rt::Timer for CoarseTimer {
    /// tokio's clock, by which the deadlines are kept (hyper adds its timeouts to it).
    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Deadline::until(Instant::now() + duration))
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Deadline::until(Instant::from_std(deadline)))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: std::time::Instant) {
        match sleep.as_mut().downcast_mut_pin::<Deadline>() {
            Some(mut d) => d.reset(Instant::from_std(new_deadline)),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

impl hyper::rt::Sleep for Deadline {}

#[cfg(test)]
#[path = "coarse_tests.rs"]
mod tests;
