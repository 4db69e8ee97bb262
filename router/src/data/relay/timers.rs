//! The relay's clocks: the idle timeout, the connection's age limit, and the heartbeat
//! pings toward each peer. Each is there only when configured (an idle relay holds just
//! the ones it uses); they are checked when the relay is polled, and each sleep wakes it.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::Sleep;

use crate::data::relay::close::Stop;
use crate::data::relay::direction::Pump;
use crate::data::relay::frame::ping_frame;
use crate::data::relay::pings::Ping;

/// The relay's clocks, each only when configured.
pub(super) struct Timers {
    idle: Option<Box<Idle>>,
    age: Option<Pin<Box<Sleep>>>,
    client_ping: Option<Box<Pinger>>,
    backend_ping: Option<Box<Pinger>>,
}

/// The idle timeout, checked four times per period against the data frames counted so
/// far: a socket closes between one and one and a quarter periods after its last data.
struct Idle {
    check: Pin<Box<Sleep>>,
    every: Duration,
    frames: u64,
    quiet_checks: u8,
}

/// Pings toward one peer: each interval a ping (at a frame boundary), and the peer's
/// pong due within the timeout.
struct Pinger {
    ping: Ping,
    sleep: Pin<Box<Sleep>>,
    waiting: bool,
}

impl Timers {
    /// The clocks for an idle timeout, an age limit (already jittered) and pings
    /// toward the client and the backend, each if given.
    pub(super) fn new(
        idle_timeout: Option<Duration>,
        max_age: Option<Duration>,
        client_ping: Option<Ping>,
        backend_ping: Option<Ping>,
    ) -> Self {
        let sleep = |d: Duration| Box::pin(tokio::time::sleep(d));
        let pinger = |p: Ping| {
            Box::new(Pinger {
                ping: p,
                sleep: sleep(p.interval),
                waiting: false,
            })
        };
        Self {
            idle: idle_timeout.map(|t| {
                let every = t / 4;
                Box::new(Idle {
                    check: sleep(every),
                    every,
                    frames: 0,
                    quiet_checks: 0,
                })
            }),
            age: max_age.map(sleep),
            client_ping: client_ping.map(pinger),
            backend_ping: backend_ping.map(pinger),
        }
    }

    /// Runs the clocks: a stop when one says the socket is done; pings queued as due.
    pub(super) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        to_client: &mut Pump,
        to_backend: &mut Pump,
    ) -> Option<Stop> {
        if let Some(age) = self.age.as_mut() {
            if age.as_mut().poll(cx).is_ready() {
                self.age = None;
                return Some(Stop::MAX_AGE);
            }
        }
        if let Some(idle) = self.idle.as_mut() {
            let frames = to_client.frames.data_frames() + to_backend.frames.data_frames();
            if idle.poll(cx, frames) {
                self.idle = None;
                return Some(Stop::IDLE);
            }
        }
        // Pinging the client: the ping goes toward it, its pong comes back the other way.
        if let Some(p) = self.client_ping.as_mut() {
            if p.poll(cx, to_client, to_backend) {
                self.client_ping = None;
                return Some(Stop::PING_TIMEOUT);
            }
        }
        if let Some(p) = self.backend_ping.as_mut() {
            if p.poll(cx, to_backend, to_client) {
                self.backend_ping = None;
                return Some(Stop::PING_TIMEOUT);
            }
        }
        None
    }
}

impl Idle {
    /// True when `frames` (data frames so far, both ways) has not moved for four checks.
    fn poll(&mut self, cx: &mut Context<'_>, frames: u64) -> bool {
        while self.check.as_mut().poll(cx).is_ready() {
            if frames != self.frames {
                self.frames = frames;
                self.quiet_checks = 0;
            } else {
                self.quiet_checks += 1;
            }
            if self.quiet_checks >= 4 {
                return true;
            }
            let next = tokio::time::Instant::now() + self.every;
            self.check.as_mut().reset(next);
        }
        false
    }
}

impl Pinger {
    /// True when the peer did not answer in time.
    fn poll(&mut self, cx: &mut Context<'_>, sink: &mut Pump, source: &mut Pump) -> bool {
        if source.pings.take_pong_seen() {
            self.waiting = false;
            let next = tokio::time::Instant::now() + self.ping.interval;
            self.sleep.as_mut().reset(next);
        }
        if self.sleep.as_mut().poll(cx).is_pending() {
            return false;
        }
        if self.waiting {
            return true;
        }
        // Once a close is under way, pings would only get in its way.
        if sink.closing() || source.closing() {
            return false;
        }
        let token = fastrand::u64(..).to_ne_bytes();
        sink.pings.send(ping_frame(token, sink.toward.mask()));
        source.pings.await_pong(token);
        self.waiting = true;
        let next = tokio::time::Instant::now() + self.ping.timeout;
        self.sleep.as_mut().reset(next);
        cx.waker().wake_by_ref();
        false
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use bytes::Bytes;

    use super::*;
    use crate::data::relay::frame::Toward;
    use crate::data::relay::test_frames::{client_frame, server_frame};

    const PING: Ping = Ping {
        interval: Duration::from_secs(30),
        timeout: Duration::from_secs(10),
    };

    /// Two directions with nothing read yet: toward the client, toward the backend.
    fn pumps() -> (Pump, Pump) {
        (
            Pump::new(Toward::Client, Bytes::new(), None),
            Pump::new(Toward::Backend, Bytes::new(), None),
        )
    }

    /// Moves the (paused) clock on by `secs`, then polls the clocks once.
    async fn after(secs: u64, t: &mut Timers, c: &mut Pump, b: &mut Pump) -> Option<Stop> {
        tokio::time::advance(Duration::from_secs(secs)).await;
        t.poll(&mut Context::from_waker(Waker::noop()), c, b)
    }

    #[tokio::test(start_paused = true)]
    async fn the_age_limit_stops_the_relay_once() {
        let mut t = Timers::new(None, Some(Duration::from_secs(60)), None, None);
        let (mut c, mut b) = pumps();
        assert_eq!(after(59, &mut t, &mut c, &mut b).await, None);
        assert_eq!(after(1, &mut t, &mut c, &mut b).await, Some(Stop::MAX_AGE));
        assert_eq!(after(60, &mut t, &mut c, &mut b).await, None, "once");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_means_no_data_frame_either_way_for_four_checks() {
        let mut t = Timers::new(Some(Duration::from_secs(40)), None, None, None);
        let (mut c, mut b) = pumps();
        for _ in 0..2 {
            assert_eq!(after(10, &mut t, &mut c, &mut b).await, None);
        }
        // Data one way restarts the count; control frames do not count.
        b.frames.advance(&client_frame(0x2, b"data"));
        c.frames.advance(&server_frame(0x9, b"ping"));
        for _ in 0..4 {
            assert_eq!(after(10, &mut t, &mut c, &mut b).await, None);
        }
        assert_eq!(after(10, &mut t, &mut c, &mut b).await, Some(Stop::IDLE));
    }

    #[tokio::test(start_paused = true)]
    async fn a_ping_goes_each_interval_and_its_pong_is_due_within_the_timeout() {
        let mut t = Timers::new(None, None, Some(PING), None);
        let (mut c, mut b) = pumps();
        assert_eq!(after(29, &mut t, &mut c, &mut b).await, None);
        assert!(!c.pings.has_out());
        assert_eq!(after(1, &mut t, &mut c, &mut b).await, None);
        // Toward the client: unmasked, with a token the pong must carry back.
        let ping = c.pings.take_out().expect("a ping toward the client");
        assert_eq!(ping[..2], [0x89, 0x08]);
        assert!(b.pings.searching(), "its pong is looked for the other way");
        let pong = client_frame(0xA, &ping[2..10]);
        assert!(b.pings.strip(&b.frames, &pong).is_empty(), "taken out");
        // The relay polls its clocks after every read: the pong is noticed at once.
        assert_eq!(after(0, &mut t, &mut c, &mut b).await, None);
        // Answered: the next ping is an interval later, and it goes unanswered.
        assert_eq!(after(29, &mut t, &mut c, &mut b).await, None);
        assert!(!c.pings.has_out());
        assert_eq!(after(1, &mut t, &mut c, &mut b).await, None);
        assert!(c.pings.take_out().is_some());
        assert_eq!(after(9, &mut t, &mut c, &mut b).await, None);
        let late = after(1, &mut t, &mut c, &mut b).await;
        assert_eq!(late, Some(Stop::PING_TIMEOUT));
    }

    #[tokio::test(start_paused = true)]
    async fn pings_toward_the_backend_are_masked_and_none_go_while_closing() {
        let mut t = Timers::new(None, None, None, Some(PING));
        let (mut c, mut b) = pumps();
        assert_eq!(after(30, &mut t, &mut c, &mut b).await, None);
        let ping = b.pings.take_out().expect("a ping toward the backend");
        assert_eq!(ping[..2], [0x89, 0x88]);
        assert!(c.pings.searching());

        let mut t = Timers::new(None, None, None, Some(PING));
        let (mut c, mut b) = pumps();
        c.close.request(Stop::SHUTDOWN.said);
        for _ in 0..3 {
            assert_eq!(after(30, &mut t, &mut c, &mut b).await, None);
            assert!(!b.pings.has_out() && !c.pings.searching());
        }
    }
}
