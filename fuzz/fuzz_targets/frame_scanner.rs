//! The relay's frame tracking on arbitrary bytes, split into arbitrary reads.
//!
//! Each read goes through `FrameCursor` the way one direction of the relay
//! (`data/relay/direction.rs`) handles it (`poll_forward`, `PingState::strip` in
//! `pings.rs`, `passable`, `wrote`): a pong held back from the last read is put in
//! front, `find_pong` cuts the router's pong out (or holds back the start of one),
//! `violation_at` cuts the read at a header no extension makes valid (and the relay
//! stops after it), `bytes_to_boundary` walks what is passed as a pending stop would,
//! and `advance` records it as written.
//!
//! Input: `token[8] flags nsizes sizes[nsizes % 8] stream...`
//! - `flags & 1`: a ping is out, so its pong (carrying `token`) is looked for;
//!   `flags & 2`: a new ping goes out as soon as the pong is found (the token stays);
//!   `flags & 4`: what is passed is written boundary by boundary, not in one piece.
//! - the reads are `size + 1` bytes, the sizes taken in turn; none: one read of it all.

#![no_main]

use libfuzzer_sys::fuzz_target;
use router::fuzzing::{find_pong, match_pong, FrameCursor, PongMatch, PongScan};

/// A pong carrying the 8-byte token: 2 header bytes and the token, plus 4 bytes of
/// mask if it is masked (`match_pong`: `header + 8`, header 2 or 6).
const PONG_LENS: [usize; 2] = [2 + 8, 2 + 4 + 8];

fuzz_target!(|data: &[u8]| run(data));

fn run(data: &[u8]) {
    let Some((token, rest)) = data.split_first_chunk::<8>() else {
        return;
    };
    let [flags, nsizes, rest @ ..] = rest else {
        return;
    };
    let (sizes, stream) = rest.split_at(usize::from(nsizes % 8).min(rest.len()));
    let (armed, rearm, walk) = (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0);

    let mut cursor = FrameCursor::default();
    let mut pong_token = armed.then_some(*token);
    let mut pong_partial: Vec<u8> = Vec::new();
    // Everything written toward the sink, pong cut out, in order.
    let mut out: Vec<u8> = Vec::new();
    let mut violated = false;

    for read in reads(stream, sizes) {
        let before = cursor;
        let mut data = std::mem::take(&mut pong_partial);
        data.extend_from_slice(read);

        // PingState::strip
        if let Some(token) = pong_token {
            match find_pong(&cursor, &data, &token) {
                PongScan::Found { at, len } => {
                    assert!(PONG_LENS.contains(&len), "pong of {len} bytes");
                    assert!(
                        at + len <= data.len(),
                        "pong {at}+{len} past {}",
                        data.len()
                    );
                    assert_eq!(match_pong(&data[at..], &token), PongMatch::Ours(len));
                    let mut probe = cursor;
                    probe.advance(&data[..at]);
                    assert!(
                        probe.at_boundary(),
                        "pong found off a frame boundary at {at}"
                    );
                    data.drain(at..at + len);
                    pong_token = rearm.then_some(token);
                }
                PongScan::Partial { at } => {
                    assert!(at < data.len(), "partial pong at {at} of {}", data.len());
                    // What the relay holds back is less than one whole pong.
                    assert!(
                        data.len() - at < PONG_LENS[1],
                        "held back {}",
                        data.len() - at
                    );
                    assert_eq!(match_pong(&data[at..], &token), PongMatch::Partial);
                    let mut probe = cursor;
                    probe.advance(&data[..at]);
                    assert!(probe.at_boundary(), "partial pong off a boundary at {at}");
                    pong_partial = data.split_off(at);
                }
                PongScan::Absent => {}
            }
        }

        // passable
        let passed = match cursor.violation_at(&data) {
            None => &data[..],
            Some(at) => {
                assert!(at <= data.len(), "violation at {at} of {}", data.len());
                // Before it, only valid frames: a header begins right there (or began
                // in bytes already written, then `at` is 0).
                let mut probe = cursor;
                probe.advance(&data[..at]);
                assert!(!probe.desynced(), "desynced before the violation at {at}");
                assert!(
                    at == 0 || probe.at_boundary(),
                    "violation off a boundary at {at}"
                );
                probe.advance(&data[at..]);
                assert!(
                    probe.violated(),
                    "violation_at({at}) but advancing does not violate"
                );
                // A held-back pong starts at a boundary of valid frames: never after a
                // violating header.
                assert!(pong_partial.is_empty(), "pong held back past a violation");
                violated = true;
                &data[..at]
            }
        };

        // forward / poll_write_held, then wrote
        if walk {
            write_walking(&mut cursor, passed);
        } else {
            let to_boundary = cursor.bytes_to_boundary(passed);
            let mut probe = cursor;
            match to_boundary {
                Some(n) => {
                    assert!(
                        n <= passed.len(),
                        "{n} bytes to a boundary in {}",
                        passed.len()
                    );
                    probe.advance(&passed[..n]);
                    assert!(probe.at_boundary(), "no boundary {n} bytes on");
                }
                None => {
                    probe.advance(passed);
                    assert!(!probe.at_boundary(), "a boundary bytes_to_boundary missed");
                }
            }
            cursor.advance(passed);
        }
        out.extend_from_slice(passed);

        // Desync is for good; closes and data frames are counted, never uncounted.
        assert!(!before.desynced() || cursor.desynced());
        assert!(!cursor.desynced() || !cursor.at_boundary());
        assert!(!before.passed_close() || cursor.passed_close());
        assert!(cursor.data_frames() >= before.data_frames());
        // What is written never holds a whole violating header.
        assert!(!cursor.violated(), "a violating header was passed on");

        if violated {
            break;
        }
    }
    // At the end of the stream, a held-back partial pong is passed on as it came.
    if !violated {
        cursor.advance(&pong_partial);
        out.extend_from_slice(&pong_partial);
    }

    // However it was read and written, the cursor agrees with one that saw the written
    // bytes one at a time.
    let mut reference = FrameCursor::default();
    for b in &out {
        reference.advance(std::slice::from_ref(b));
    }
    assert_eq!(cursor.at_boundary(), reference.at_boundary(), "at_boundary");
    assert_eq!(cursor.desynced(), reference.desynced(), "desynced");
    assert_eq!(cursor.violated(), reference.violated(), "violated");
    assert_eq!(
        cursor.passed_close(),
        reference.passed_close(),
        "passed_close"
    );
    assert_eq!(cursor.close_code(), reference.close_code(), "close_code");
    assert_eq!(cursor.data_frames(), reference.data_frames(), "data_frames");
}

/// Writes `passed` as a pending stop does: up to the next boundary, then on.
fn write_walking(cursor: &mut FrameCursor, passed: &[u8]) {
    let mut piece = passed;
    while !piece.is_empty() {
        let to_boundary = cursor.bytes_to_boundary(piece);
        let n = match to_boundary {
            // At a boundary (where the close would go): step into the next frame.
            Some(0) => {
                assert!(cursor.at_boundary(), "Some(0) off a boundary");
                1
            }
            Some(n) => {
                assert!(
                    n <= piece.len(),
                    "{n} bytes to a boundary in {}",
                    piece.len()
                );
                n
            }
            None => piece.len(),
        };
        cursor.advance(&piece[..n]);
        match to_boundary {
            Some(0) => {}
            Some(n) => assert!(cursor.at_boundary(), "no boundary {n} bytes on"),
            None => assert!(!cursor.at_boundary(), "a boundary bytes_to_boundary missed"),
        }
        piece = &piece[n..];
    }
}

/// `stream` cut into reads of `size + 1` bytes, `sizes` taken in turn.
fn reads<'a>(stream: &'a [u8], sizes: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut rest = stream;
    let mut next = sizes.iter().cycle();
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let size = next.next().map_or(rest.len(), |&s| usize::from(s) + 1);
        let (read, after) = rest.split_at(size.min(rest.len()));
        rest = after;
        Some(read)
    })
}
