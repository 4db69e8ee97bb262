//! Ending a relayed connection: why it ended ([`CloseReason`]), why the router ends one
//! itself ([`Stop`]), and each direction's part in the close handshake
//! ([`CloseState`]): the close the router injects at a frame boundary, and what the
//! source ending without a close frame becomes.

use crate::data::relay::drain::DrainReason;
use crate::data::relay::frame::{close_frame, code, FrameCursor, Toward};

/// Why a relayed connection ended: the first thing that happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The client sent a close frame.
    ClientClosed,
    /// The backend sent a close frame.
    BackendClosed,
    /// The client's connection ended without a close frame.
    ClientGone,
    /// The backend's connection ended without a close frame.
    BackendGone,
    /// Reading from or writing to the client failed.
    ClientError,
    /// Reading from or writing to the backend failed.
    BackendError,
    /// The router closed it while draining.
    Shutdown,
    /// The router closed it because the tenant's route moved (`--reroute-drain`).
    Rerouted,
    /// The router closed it because its pod left the routing table.
    PodGone,
    /// No data frame either way for `--idle-timeout`.
    Idle,
    /// The client (or the backend) did not answer the router's ping in time.
    PingTimeout,
    /// The socket reached `--max-connection-age`.
    MaxAge,
    /// The token it was opened with expired (`--auth jwt`).
    TokenExpired,
    /// The client sent a frame no extension makes valid.
    ClientProtocolError,
    /// The backend sent a frame no extension makes valid.
    BackendProtocolError,
}

impl CloseReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::ClientClosed => "client_closed",
            Self::BackendClosed => "backend_closed",
            Self::ClientGone => "client_gone",
            Self::BackendGone => "backend_gone",
            Self::ClientError => "client_error",
            Self::BackendError => "backend_error",
            Self::Shutdown => "shutdown",
            Self::Rerouted => "rerouted",
            Self::PodGone => "pod_gone",
            Self::Idle => "idle",
            Self::PingTimeout => "ping_timeout",
            Self::MaxAge => "max_age",
            Self::TokenExpired => "token_expired",
            Self::ClientProtocolError => "client_protocol_error",
            Self::BackendProtocolError => "backend_protocol_error",
        }
    }
}

/// A close frame the router sends: its code and reason. Always `'static` and passed by
/// reference, so a direction keeps one pointer for each close it may send rather than
/// the pair (24 bytes): every socket's relay holds four.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CloseMsg {
    pub code: u16,
    pub reason: &'static str,
}

impl CloseMsg {
    /// The client ended without a close frame: the backend hears 1001.
    pub(crate) const CLIENT_WENT_AWAY: CloseMsg = CloseMsg {
        code: code::GOING_AWAY,
        reason: "client went away",
    };
    /// The backend ended without a close frame: the client hears 1011.
    pub(crate) const BACKEND_WENT_AWAY: CloseMsg = CloseMsg {
        code: code::BACKEND_GONE,
        reason: "backend went away",
    };
    /// A peer sent a frame no extension makes valid: it hears 1002.
    pub(crate) const PROTOCOL_ERROR: CloseMsg = CloseMsg {
        code: code::PROTOCOL_ERROR,
        reason: "protocol error",
    };
    const CLIENT_BROKE: CloseMsg = CloseMsg {
        code: code::GOING_AWAY,
        reason: "client broke the WebSocket protocol",
    };
    const BACKEND_BROKE: CloseMsg = CloseMsg {
        code: code::BACKEND_GONE,
        reason: "backend broke the WebSocket protocol",
    };
}

/// Why the router ends a relay itself, and what it tells both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stop {
    pub said: &'static CloseMsg,
    pub close_reason: CloseReason,
}

impl Stop {
    /// The router is draining: 1001 going away.
    pub(crate) const SHUTDOWN: Stop = Stop {
        said: &CloseMsg {
            code: code::GOING_AWAY,
            reason: "wsrouter shutting down",
        },
        close_reason: CloseReason::Shutdown,
    };
    /// The tenant's route moved: 1012 service restart, so the client reconnects to its
    /// new home.
    pub(crate) const REROUTED: Stop = Stop {
        said: &CloseMsg {
            code: code::SERVICE_RESTART,
            reason: "tenant moved; reconnect",
        },
        close_reason: CloseReason::Rerouted,
    };
    /// Its pod left the routing table (a scale-down): 1012 service restart, so the
    /// client reconnects to the tenant's pod now.
    pub(crate) const POD_GONE: Stop = Stop {
        said: &CloseMsg {
            code: code::SERVICE_RESTART,
            reason: "backend pod left; reconnect",
        },
        close_reason: CloseReason::PodGone,
    };
    /// The drain scheduler's close for `why`.
    pub(crate) fn drained(why: DrainReason) -> Stop {
        match why {
            DrainReason::Shutdown => Self::SHUTDOWN,
            DrainReason::PodGone => Self::POD_GONE,
            DrainReason::Rerouted => Self::REROUTED,
        }
    }
    /// No data either way for the idle timeout: 1001 going away.
    pub(crate) const IDLE: Stop = Stop {
        said: &CloseMsg {
            code: code::GOING_AWAY,
            reason: "idle timeout",
        },
        close_reason: CloseReason::Idle,
    };
    /// A peer did not answer the router's ping: the other side hears 1001.
    pub(crate) const PING_TIMEOUT: Stop = Stop {
        said: &CloseMsg {
            code: code::GOING_AWAY,
            reason: "peer did not answer ping",
        },
        close_reason: CloseReason::PingTimeout,
    };
    /// The socket is as old as it may get: 1012, reconnect (to wherever it routes now).
    pub(crate) const MAX_AGE: Stop = Stop {
        said: &CloseMsg {
            code: code::SERVICE_RESTART,
            reason: "connection age limit; reconnect",
        },
        close_reason: CloseReason::MaxAge,
    };
    /// The token the socket was opened with expired: 1008, so a revoked customer does
    /// not keep a stream; the client reconnects with a fresh token or not at all.
    pub(crate) const TOKEN_EXPIRED: Stop = Stop {
        said: &CloseMsg {
            code: code::POLICY_VIOLATION,
            reason: "token expired",
        },
        close_reason: CloseReason::TokenExpired,
    };
}

/// One direction's part in ending the connection: the close the router means to send
/// its sink, the one it is sending, and how the source's end is passed on.
#[derive(Debug)]
pub(super) struct CloseState {
    /// Inject this close at the next frame boundary.
    stop: Option<&'static CloseMsg>,
    /// The router's close frame, as far as it is still to be written.
    frame: Vec<u8>,
    /// The code of the close frame the router began to send.
    injected: Option<u16>,
    /// The source ending without a close frame (EOF or reset) is passed on as this
    /// close frame (then FIN), not as a FIN or a reset. Dropped once a close has passed
    /// either way.
    on_source_end: Option<&'static CloseMsg>,
    /// The source sent a frame no extension makes valid; nothing more of it is passed,
    /// and once every held byte is written (they end at a frame boundary) the sink gets
    /// the router's close.
    violated: bool,
}

impl CloseState {
    pub(super) fn new(on_source_end: Option<&'static CloseMsg>) -> Self {
        Self {
            stop: None,
            frame: Vec::new(),
            injected: None,
            on_source_end,
            violated: false,
        }
    }

    /// The close waiting for the next frame boundary, if any.
    #[inline]
    pub(super) fn pending(&self) -> Option<&'static CloseMsg> {
        self.stop
    }

    /// Asks for this close at the next frame boundary; a close asked for earlier stays.
    pub(super) fn request(&mut self, msg: &'static CloseMsg) {
        self.stop.get_or_insert(msg);
    }

    /// The source broke the protocol: see [`CloseState::answer_violation`].
    pub(super) fn mark_violated(&mut self) {
        self.violated = true;
    }

    #[inline]
    pub(super) fn violated(&self) -> bool {
        self.violated
    }

    /// The source broke the protocol and no close is pending yet.
    #[inline]
    pub(super) fn violation_unanswered(&self) -> bool {
        self.violated && self.stop.is_none()
    }

    /// What came before the violation is out: the sink gets the router's close here,
    /// and the source is never read on. A client that broke it is gone (1001); a
    /// backend that broke it failed its client (1011).
    pub(super) fn answer_violation(&mut self, toward: Toward) {
        self.stop = Some(match toward {
            Toward::Backend => &CloseMsg::CLIENT_BROKE,
            Toward::Client => &CloseMsg::BACKEND_BROKE,
        });
    }

    /// A close frame has passed either way: the peers' own handshake is under way. A
    /// stop not yet begun (`forwarding`) is dropped, but not a violated source's: that
    /// source is never read again, and its stop ends this direction (with FIN alone,
    /// since a close has passed). The source's end is passed on as it comes.
    pub(super) fn withdraw(&mut self, forwarding: bool) {
        if forwarding && self.stop.is_some() && !self.violated {
            self.stop = None;
        }
        self.on_source_end = None;
    }

    /// The source's end is passed on as it comes (a FIN or a reset), not as a close of
    /// the router's.
    pub(super) fn forget_source_end(&mut self) {
        self.on_source_end = None;
    }

    /// The close the sink gets if the source ends without one.
    pub(super) fn on_source_end(&self) -> Option<&'static CloseMsg> {
        self.on_source_end
    }

    /// Begins the router's close toward the sink: true when the close frame is ready to
    /// write. False when the sink may only get FIN: a close already went through (the
    /// peers are mid-handshake) or boundaries are unknown, and a close frame now would
    /// be a protocol error.
    pub(super) fn begin(&mut self, frames: &FrameCursor, toward: Toward, msg: &CloseMsg) -> bool {
        if frames.passed_close() || !frames.at_boundary() {
            return false;
        }
        self.frame = close_frame(msg.code, msg.reason, toward.mask());
        self.injected = Some(msg.code);
        true
    }

    /// What of the close frame is still to be written.
    pub(super) fn unsent(&self) -> &[u8] {
        &self.frame
    }

    /// `n` more bytes of the close frame are written.
    pub(super) fn sent(&mut self, n: usize) {
        self.frame.drain(..n);
    }

    /// The code of the close frame the router began to send, if it did.
    pub(super) fn injected(&self) -> Option<u16> {
        self.injected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::relay::test_frames::{client_frame, close_code, server_frame};

    /// 1001 and 1012: two of the router's own closes.
    const GOING: &CloseMsg = Stop::SHUTDOWN.said;
    const MOVED: &CloseMsg = Stop::REROUTED.said;

    #[test]
    fn a_close_is_injected_only_at_a_boundary_before_any_close() {
        for toward in [Toward::Client, Toward::Backend] {
            let mut frames = FrameCursor::default();
            let mut c = CloseState::new(None);
            assert!(c.begin(&frames, toward, GOING));
            assert_eq!(c.injected(), Some(code::GOING_AWAY));
            assert_eq!(close_code(c.unsent()), Some(code::GOING_AWAY));
            let masked = c.unsent()[1] & 0x80 != 0;
            assert_eq!(
                masked,
                toward == Toward::Backend,
                "masked toward a server only"
            );

            // Mid-frame: FIN only, nothing injected.
            frames.advance(&server_frame(0x1, b"hello")[..3]);
            let mut c = CloseState::new(None);
            assert!(!c.begin(&frames, toward, GOING));
            assert_eq!((c.injected(), c.unsent()), (None, &[][..]));

            // After a peer's close: FIN only too.
            let mut frames = FrameCursor::default();
            frames.advance(&client_frame(0x8, &1000u16.to_be_bytes()));
            assert!(!c.begin(&frames, toward, GOING));
            assert_eq!(c.injected(), None);
        }
    }

    #[test]
    fn the_close_frame_is_written_in_pieces() {
        let mut c = CloseState::new(None);
        assert!(c.begin(&FrameCursor::default(), Toward::Client, GOING));
        let whole = c.unsent().to_vec();
        c.sent(3);
        assert_eq!(c.unsent(), &whole[3..]);
        c.sent(whole.len() - 3);
        assert!(c.unsent().is_empty());
        assert_eq!(c.injected(), Some(1001), "still reported once written");
    }

    #[test]
    fn the_first_stop_asked_for_is_the_one_sent() {
        let mut c = CloseState::new(None);
        assert_eq!(c.pending(), None);
        c.request(MOVED);
        c.request(GOING);
        assert_eq!(c.pending(), Some(MOVED));
    }

    #[test]
    fn a_violation_is_answered_once_by_which_side_broke_it() {
        for (toward, want) in [
            (Toward::Backend, code::GOING_AWAY),
            (Toward::Client, code::BACKEND_GONE),
        ] {
            let mut c = CloseState::new(None);
            assert!(!c.violation_unanswered());
            c.mark_violated();
            assert!(c.violated() && c.violation_unanswered());
            c.answer_violation(toward);
            assert!(!c.violation_unanswered());
            assert_eq!(c.pending().map(|m| m.code), Some(want));
        }
        // A stop already pending answers it too.
        let mut c = CloseState::new(None);
        c.request(GOING);
        c.mark_violated();
        assert!(!c.violation_unanswered());
    }

    #[test]
    fn a_passed_close_withdraws_stops_but_a_violations() {
        let end = Some(&CloseMsg::BACKEND_WENT_AWAY);
        let mut c = CloseState::new(end);
        assert_eq!(c.on_source_end(), end);
        c.request(GOING);
        c.withdraw(false);
        assert_eq!(c.pending(), Some(GOING), "already begun");
        assert_eq!(c.on_source_end(), None);
        c.withdraw(true);
        assert_eq!(c.pending(), None, "not begun: dropped");

        let mut c = CloseState::new(end);
        c.mark_violated();
        c.answer_violation(Toward::Client);
        c.withdraw(true);
        assert!(c.pending().is_some(), "a violated source's stop stays");
        assert_eq!(c.on_source_end(), None);

        let mut c = CloseState::new(end);
        c.forget_source_end();
        assert_eq!((c.on_source_end(), c.pending()), (None, None));
    }
}
