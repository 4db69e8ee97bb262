//! The router's heartbeat pings: how often ([`Ping`]), each direction's share of them
//! ([`PingState`]: a ping to write toward the sink at a frame boundary, and the pong
//! awaited from the source), and finding that pong in the stream, so that it is taken
//! out rather than passed on to a peer that never pinged.

use std::time::Duration;

use crate::data::relay::frame::{FrameCursor, OP_PONG};

/// Router-originated pings toward one peer.
#[derive(Debug, Clone, Copy)]
pub struct Ping {
    pub interval: Duration,
    pub timeout: Duration,
}

/// The router's pings in one direction: one going to the sink, and the pong coming from
/// the source (the answer to a ping the other direction carried). Allocated on the first
/// ping: most sockets never see one, and each holds two of these for its whole life.
#[derive(Debug, Default)]
pub(super) struct PingState(Option<Box<Pings>>);

#[derive(Debug, Default)]
struct Pings {
    /// A router ping to write toward the sink at the next frame boundary.
    out: Option<Vec<u8>>,
    /// The router pinged the source with this token: its pong is taken out of the
    /// stream, never passed on.
    token: Option<[u8; 8]>,
    /// That pong has come.
    seen: bool,
    /// The start of what may be that pong, read but not yet all here.
    partial: Vec<u8>,
}

impl PingState {
    fn pings(&mut self) -> &mut Pings {
        self.0.get_or_insert_with(Box::default)
    }

    /// A ping waits for the next frame boundary.
    #[inline]
    pub(super) fn has_out(&self) -> bool {
        self.0.as_ref().is_some_and(|p| p.out.is_some())
    }

    /// Queues `ping` (a whole ping frame) for the next frame boundary.
    pub(super) fn send(&mut self, ping: Vec<u8>) {
        self.pings().out = Some(ping);
    }

    /// The ping to write now, at a frame boundary.
    pub(super) fn take_out(&mut self) -> Option<Vec<u8>> {
        self.0.as_mut().and_then(|p| p.out.take())
    }

    /// Boundaries are unknown: a ping could land inside a frame, so none is sent.
    pub(super) fn cancel_out(&mut self) {
        if let Some(p) = self.0.as_mut() {
            p.out = None;
        }
    }

    /// The source was pinged with `token`: its pong is to be taken out of the stream.
    pub(super) fn await_pong(&mut self, token: [u8; 8]) {
        self.pings().token = Some(token);
    }

    /// Whether the awaited pong has come since the last call.
    pub(super) fn take_pong_seen(&mut self) -> bool {
        self.0.as_mut().is_some_and(|p| std::mem::take(&mut p.seen))
    }

    /// Reads must be searched for the pong (or may finish one): they are copied, once
    /// per ping, so the pong can be cut out.
    #[inline]
    pub(super) fn searching(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|p| p.token.is_some() || !p.partial.is_empty())
    }

    /// Freshly read `fresh` (following what `frames` has seen, after any start of a pong
    /// kept from the last read) with the router's pong taken out; the start of a pong
    /// that is not all here yet is kept for the next read.
    pub(super) fn strip(&mut self, frames: &FrameCursor, fresh: &[u8]) -> Vec<u8> {
        let p = self.pings();
        let mut data = std::mem::take(&mut p.partial);
        data.extend_from_slice(fresh);
        let Some(token) = p.token else {
            return data;
        };
        match find_pong(frames, &data, &token) {
            PongScan::Found { at, len } => {
                p.seen = true;
                p.token = None;
                data.drain(at..at + len);
            }
            PongScan::Partial { at } => p.partial = data.split_off(at),
            PongScan::Absent => {}
        }
        data
    }

    /// The source ended: the start of a pong kept back, if any, is a partial frame at
    /// the end, passed on as it came.
    pub(super) fn take_unfinished(&mut self) -> Option<Vec<u8>> {
        let p = self.0.as_mut()?;
        (!p.partial.is_empty()).then(|| std::mem::take(&mut p.partial))
    }
}

/// What the bytes at a frame boundary say about a pong carrying `token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PongMatch {
    /// A whole pong frame of this many bytes, carrying the token.
    Ours(usize),
    /// Not (or not yet known to be) our pong: pass it on.
    Other,
    /// Could be our pong, but the frame is not all here yet (at most 14 + 125 bytes).
    Partial,
}

/// Where the router's pong is in freshly read `data`, which follows what `cursor` has
/// seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PongScan {
    /// A whole pong carrying the token: `len` bytes at `at`.
    Found { at: usize, len: usize },
    /// What may be that pong begins at `at`, but is not all here yet.
    Partial { at: usize },
    /// Not in `data`; or a header that is not a valid frame stops the search, since
    /// boundaries are unknown past it.
    Absent,
}

/// Finds the pong carrying `token` at a frame boundary of `data`. The walk follows
/// frames with a copy of `cursor`, so it reads lengths exactly as the relay does (a
/// claimed length past 2^63 desyncs it, never wraps) and each step moves forward.
pub fn find_pong(cursor: &FrameCursor, data: &[u8], token: &[u8; 8]) -> PongScan {
    let mut probe = *cursor;
    let mut at = 0;
    loop {
        match probe.bytes_to_boundary(&data[at..]) {
            Some(n) => {
                probe.advance(&data[at..at + n]);
                at += n;
            }
            None => return PongScan::Absent,
        }
        if at == data.len() {
            return PongScan::Absent;
        }
        match match_pong(&data[at..], token) {
            PongMatch::Ours(len) => return PongScan::Found { at, len },
            PongMatch::Partial => return PongScan::Partial { at },
            // Into the frame by one byte; the next turn finds where it ends.
            PongMatch::Other => {
                probe.advance(&data[at..at + 1]);
                at += 1;
            }
        }
    }
}

/// Whether `data`, starting at a frame boundary, begins with a pong carrying `token`.
/// Only headers and the small control payload are read: a pong is at most 125 bytes.
pub fn match_pong(data: &[u8], token: &[u8; 8]) -> PongMatch {
    if data.len() < 2 {
        return if data.first().is_none_or(|b| b & 0x0f == OP_PONG) {
            PongMatch::Partial
        } else {
            PongMatch::Other
        };
    }
    let (b0, b1) = (data[0], data[1]);
    if b0 & 0x0f != OP_PONG || b0 & 0x80 == 0 || b1 & 0x7f != 8 {
        return PongMatch::Other;
    }
    let masked = b1 & 0x80 != 0;
    let header = if masked { 6 } else { 2 };
    let total = header + 8;
    if data.len() < total {
        return PongMatch::Partial;
    }
    let key = if masked {
        [data[2], data[3], data[4], data[5]]
    } else {
        [0; 4]
    };
    let ours = data[header..total]
        .iter()
        .enumerate()
        .all(|(i, b)| b ^ key[i % 4] == token[i]);
    if ours {
        PongMatch::Ours(total)
    } else {
        PongMatch::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::relay::frame::ping_frame;
    use crate::data::relay::test_frames::{client_frame, frame, server_frame};

    const TOKEN: [u8; 8] = *b"01234567";

    #[test]
    fn a_ping_waits_for_a_boundary_then_goes_once() {
        let mut p = PingState::default();
        assert!(!p.has_out());
        p.send(ping_frame(TOKEN, None));
        assert!(p.has_out());
        assert_eq!(p.take_out(), Some(ping_frame(TOKEN, None)));
        assert_eq!((p.has_out(), p.take_out()), (false, None));
        p.send(ping_frame(TOKEN, None));
        p.cancel_out();
        assert!(!p.has_out(), "cancelled");
    }

    #[test]
    fn nothing_is_searched_or_taken_out_without_a_ping() {
        let mut p = PingState::default();
        assert!(!p.searching());
        let pong = client_frame(0xA, &TOKEN);
        assert_eq!(p.strip(&FrameCursor::default(), &pong), pong);
        assert!(!p.take_pong_seen());
    }

    #[test]
    fn our_pong_is_taken_out_and_a_strangers_passes() {
        let mut p = PingState::default();
        p.await_pong(TOKEN);
        assert!(p.searching());
        let stranger = frame(true, 0xA, b"76543210", Some([9, 9, 9, 9]));
        let after = client_frame(0x1, b"after");
        let read = [stranger.clone(), client_frame(0xA, &TOKEN), after.clone()].concat();
        assert_eq!(
            p.strip(&FrameCursor::default(), &read),
            [stranger, after].concat()
        );
        assert!(p.take_pong_seen());
        assert!(!p.take_pong_seen(), "seen once");
        assert!(!p.searching(), "one pong per ping");
        let again = client_frame(0xA, &TOKEN);
        assert_eq!(p.strip(&FrameCursor::default(), &again), again);
    }

    #[test]
    fn a_pong_split_across_reads_is_kept_until_it_is_whole() {
        let mut p = PingState::default();
        p.await_pong(TOKEN);
        let before = server_frame(0x2, b"data");
        let pong = server_frame(0xA, &TOKEN);
        let read = [before.clone(), pong[..3].to_vec()].concat();
        assert_eq!(p.strip(&FrameCursor::default(), &read), before);
        assert!(p.searching() && !p.take_pong_seen());
        // The next read follows what was passed on: the cursor is at a boundary again.
        let mut frames = FrameCursor::default();
        frames.advance(&before);
        assert_eq!(p.strip(&frames, &pong[3..]), b"");
        assert!(p.take_pong_seen());
        assert_eq!(p.take_unfinished(), None);
    }

    #[test]
    fn a_pong_cut_short_by_the_end_is_passed_on_as_it_came() {
        let mut p = PingState::default();
        p.await_pong(TOKEN);
        let pong = client_frame(0xA, &TOKEN);
        assert_eq!(p.strip(&FrameCursor::default(), &pong[..7]), b"");
        assert_eq!(p.take_unfinished(), Some(pong[..7].to_vec()));
        assert_eq!(p.take_unfinished(), None);
    }

    #[test]
    fn only_a_whole_final_eight_byte_pong_with_the_token_is_ours() {
        let ours = server_frame(0xA, &TOKEN);
        assert_eq!(match_pong(&ours, &TOKEN), PongMatch::Ours(ours.len()));
        assert_eq!(match_pong(&ours[..5], &TOKEN), PongMatch::Partial);
        assert_eq!(match_pong(&ours[..1], &TOKEN), PongMatch::Partial);
        assert_eq!(match_pong(&[], &TOKEN), PongMatch::Partial);
        let not_final = frame(false, 0xA, &TOKEN, None);
        assert_eq!(match_pong(&not_final, &TOKEN), PongMatch::Other);
        assert_eq!(
            match_pong(&server_frame(0x9, &TOKEN), &TOKEN),
            PongMatch::Other
        );
        assert_eq!(
            match_pong(&server_frame(0xA, b"0123456"), &TOKEN),
            PongMatch::Other
        );
        assert_eq!(
            match_pong(&server_frame(0xA, b"01234566"), &TOKEN),
            PongMatch::Other
        );
        // A pong that only begins inside another frame's payload is not at a boundary.
        let inside = server_frame(0x2, &ours);
        assert_eq!(
            find_pong(&FrameCursor::default(), &inside, &TOKEN),
            PongScan::Absent
        );
        let after = [server_frame(0x2, b"x"), ours.clone()].concat();
        assert_eq!(
            find_pong(&FrameCursor::default(), &after, &TOKEN),
            PongScan::Found {
                at: 3,
                len: ours.len()
            }
        );
    }
}
