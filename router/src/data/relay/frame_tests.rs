//! Tests of the frame cursor: boundaries, close codes and violations, against reference
//! decoders that read the whole stream at once.

use super::*;
use crate::data::relay::test_frames::frame;

fn stream() -> (Vec<u8>, Vec<usize>) {
    let mask = Some([1, 2, 3, 4]);
    let frames = [
        frame(true, 0x1, b"hello", None),
        frame(false, 0x2, &[7; 300], mask),
        frame(true, 0x9, b"", None),
        frame(true, 0x0, &[9; 70_000], None),
        frame(true, 0x1, b"", mask),
    ];
    let mut bytes = Vec::new();
    let mut ends = Vec::new();
    for f in frames {
        bytes.extend_from_slice(&f);
        ends.push(bytes.len());
    }
    (bytes, ends)
}

#[test]
fn boundaries_found_whatever_the_chunking() {
    let (bytes, ends) = stream();
    for chunk in [1, 2, 3, 7, 13, 64, 1000, 16_384, bytes.len()] {
        let mut c = FrameCursor::default();
        let mut seen = Vec::new();
        let mut pos = 0;
        while pos < bytes.len() {
            let end = (pos + chunk).min(bytes.len());
            let mut piece = &bytes[pos..end];
            // Walk the piece boundary by boundary, as the relay does when stopping.
            while !piece.is_empty() {
                let n = match c.bytes_to_boundary(piece) {
                    // At a boundary: step into the next frame.
                    Some(0) => 1,
                    Some(n) => n,
                    None => piece.len(),
                };
                c.advance(&piece[..n]);
                pos += n;
                piece = &piece[n..];
                if c.at_boundary() {
                    seen.push(pos);
                }
            }
            assert!(!c.desynced());
        }
        assert_eq!(seen, ends, "chunk size {chunk}");
        assert!(c.at_boundary());
    }
}

#[test]
fn at_boundary_only_between_frames() {
    let f = frame(true, 0x1, b"abc", None);
    let mut c = FrameCursor::default();
    assert!(c.at_boundary());
    for (i, b) in f.iter().enumerate() {
        c.advance(std::slice::from_ref(b));
        assert_eq!(c.at_boundary(), i == f.len() - 1, "after byte {i}");
    }
}

#[test]
fn close_codes_are_read_masked_or_not() {
    for mask in [None, Some([0xde, 0xad, 0xbe, 0xef])] {
        let mut payload = 4000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        let f = frame(true, 0x8, &payload, mask);
        let mut c = FrameCursor::default();
        for b in &f {
            c.advance(std::slice::from_ref(b));
        }
        assert!(c.passed_close());
        assert_eq!(c.close_code(), Some(4000));
    }
    let mut c = FrameCursor::default();
    c.advance(&frame(true, 0x8, b"", None));
    assert!(c.passed_close());
    assert_eq!(c.close_code(), None);
}

#[test]
fn injected_close_frames_parse_back() {
    for mask in [None, Some([9, 8, 7, 6])] {
        let f = close_frame(code::GOING_AWAY, "wsrouter shutting down", mask);
        let mut c = FrameCursor::default();
        assert_eq!(c.bytes_to_boundary(&f), Some(0));
        c.advance(&f[..1]);
        assert_eq!(c.bytes_to_boundary(&f[1..]), Some(f.len() - 1));
        c.advance(&f[1..]);
        assert!(c.at_boundary() && c.passed_close());
        assert_eq!(c.close_code(), Some(1001));
    }
    // A long reason is cut to fit a control frame, on a character boundary.
    let f = close_frame(1011, &"é".repeat(100), None);
    assert!(f.len() <= 2 + 125);
    assert!(std::str::from_utf8(&f[4..]).is_ok());
}

#[test]
fn invalid_headers_desync() {
    let cases = [
        frame(true, 0x3, b"x", None),               // reserved opcode
        frame(false, 0x8, b"", None),               // fragmented control frame
        frame(true, 0x9, &[0; 126], None),          // control frame too long
        vec![0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 1], // 64-bit length with the top bit set
    ];
    for f in cases {
        let mut c = FrameCursor::default();
        c.advance(&f);
        assert!(c.desynced(), "{f:?}");
        assert!(!c.at_boundary());
        assert_eq!(c.bytes_to_boundary(b"more"), None);
    }
}

#[test]
fn extension_bits_are_allowed() {
    // permessage-deflate sets RSV1; the relay must pass such frames.
    let mut f = frame(true, 0x1, b"zz", None);
    f[0] |= 0x40;
    let mut c = FrameCursor::default();
    c.advance(&f);
    assert!(c.at_boundary());
}

/// What a reference decoder, reading the whole stream at once, finds in it.
#[derive(Debug, Default)]
struct Reference {
    /// Where each whole frame ends, with its close code if it is a close frame
    /// (`Some(None)`: a close frame without a code).
    ends: Vec<(usize, Option<Option<u16>>)>,
    /// Where the first invalid header ends: from there boundaries are unknown.
    desync_at: Option<usize>,
}

fn reference(b: &[u8]) -> Reference {
    let mut r = Reference::default();
    let mut p = 0;
    while p + 2 <= b.len() {
        let (b0, b1) = (b[p], b[p + 1]);
        let hl = header_len(b1) as usize;
        if p + hl > b.len() {
            break;
        }
        let (len, at) = match b1 & 0x7f {
            126 => (u64::from(u16::from_be_bytes([b[p + 2], b[p + 3]])), 4),
            127 => {
                let mut x = [0u8; 8];
                x.copy_from_slice(&b[p + 2..p + 10]);
                (u64::from_be_bytes(x), 10)
            }
            n => (u64::from(n), 2),
        };
        let opcode = b0 & 0x0f;
        let control = opcode & 0x8 != 0;
        if !matches!(opcode, 0 | 1 | 2 | 8 | 9 | 10)
            || len >> 63 != 0
            || (control && (b0 & 0x80 == 0 || len > 125))
        {
            r.desync_at = Some(p + hl);
            return r;
        }
        let start = p + hl;
        let end = start as u64 + len;
        if end > b.len() as u64 {
            break;
        }
        let end = end as usize;
        let close = (opcode == 8).then(|| {
            (len >= 2).then(|| {
                let key = (b1 & 0x80 != 0).then(|| [b[p + at], b[p + at + 1]]);
                let k = key.unwrap_or([0, 0]);
                u16::from_be_bytes([b[start] ^ k[0], b[start + 1] ^ k[1]])
            })
        });
        r.ends.push((end, close));
        p = end;
    }
    r
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

fn arb_frame() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    let opcode = prop_oneof![
        8 => prop::sample::select(vec![0u8, 1, 2, 8, 9, 10]),
        1 => 0u8..16,
    ];
    let len = prop_oneof![
        8 => 0usize..130,
        1 => 126usize..300,
        1 => 65_530usize..65_600,
    ];
    (
        any::<bool>(),
        opcode,
        len,
        any::<Option<[u8; 4]>>(),
        any::<u8>(),
        any::<u16>(),
    )
        .prop_map(|(fin, op, len, mask, rsv, code)| {
            let control = op & 0x8 != 0;
            // Mostly valid control frames, so streams go on past them.
            let (fin, len) = if control && rsv % 8 != 0 {
                (true, len.min(125))
            } else {
                (fin, len)
            };
            let mut payload = vec![0x5a; len];
            if op == 8 && len >= 2 {
                payload[..2].copy_from_slice(&code.to_be_bytes());
            }
            let mut f = frame(fin, op, &payload, mask);
            f[0] |= rsv & 0x70;
            f
        })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(cases()))]

    /// Any stream of frames (valid or not, garbage after), split anywhere: after
    /// every chunk the cursor agrees with a reference decoder that saw the whole
    /// stream, on boundaries, desync, close frames and their codes, and the bytes
    /// to the next boundary.
    #[test]
    fn the_cursor_agrees_with_a_reference_decoder(
        frames in proptest::collection::vec(arb_frame(), 0..12),
        garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20),
        cuts in proptest::collection::vec(0usize..70_000, 0..16),
    ) {
        let mut bytes: Vec<u8> = frames.concat();
        bytes.extend_from_slice(&garbage);
        let whole = reference(&bytes);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.push(bytes.len());
        cuts.sort_unstable();
        let mut c = FrameCursor::default();
        let mut at = 0;
        for cut in cuts {
            let rest = &bytes[at..];
            let to_boundary = c.bytes_to_boundary(rest);
            c.advance(&bytes[at..cut]);
            at = cut;
            let desynced = whole.desync_at.is_some_and(|d| at >= d);
            proptest::prop_assert_eq!(c.desynced(), desynced, "at {}", at);
            if desynced {
                proptest::prop_assert!(!c.at_boundary());
                continue;
            }
            let ended: Vec<_> = whole.ends.iter().filter(|(e, _)| *e <= at).collect();
            let boundary = at == 0 || ended.last().is_some_and(|(e, _)| *e == at);
            proptest::prop_assert_eq!(c.at_boundary(), boundary, "at {}", at);
            let closes: Vec<_> = ended.iter().filter_map(|(_, close)| *close).collect();
            proptest::prop_assert_eq!(c.passed_close(), !closes.is_empty());
            proptest::prop_assert_eq!(c.close_code(), closes.last().copied().flatten());
            // Before this chunk, the distance to the next boundary within what was
            // left was the reference's (none once the stream has desynced).
            let start = bytes.len() - rest.len();
            let next = if start == 0 || whole.ends.iter().any(|(e, _)| *e == start) {
                Some(0)
            } else {
                whole.ends.iter().find(|(e, _)| *e > start).map(|(e, _)| e - start)
            };
            let next = next.filter(|_| whole.desync_at.is_none_or(|d| start < d));
            proptest::prop_assert_eq!(to_boundary, next, "from {}", start);
        }
    }

    /// The header walk that runs on every read finds exactly what the cursor's own
    /// steps find, from any point of any stream (frames valid or not, lengths past
    /// 2^63 included, garbage after).
    #[test]
    fn the_violation_walk_agrees_with_the_cursors_steps(
        frames in proptest::collection::vec(arb_frame(), 0..10),
        bad in proptest::prelude::any::<Option<(u8, u64)>>(),
        garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20),
        cut in 0usize..70_000,
    ) {
        let mut bytes: Vec<u8> = frames.concat();
        if let Some((at, len)) = bad {
            // A header with a 64-bit length whose top bit is set, somewhere.
            let mut h = vec![0x82, 0xFF];
            h.extend_from_slice(&(len | 1 << 63).to_be_bytes());
            h.extend_from_slice(&[1, 2, 3, 4]);
            let at = usize::from(at) % (frames.len() + 1);
            let pos: usize = frames[..at].iter().map(Vec::len).sum();
            bytes.splice(pos..pos, h);
        }
        bytes.extend_from_slice(&garbage);
        let cut = cut % (bytes.len() + 1);
        let mut c = FrameCursor::default();
        c.advance(&bytes[..cut]);
        let rest = &bytes[cut..];
        proptest::prop_assert_eq!(c.violation_at(rest), c.violation_in_header(rest));
    }

    /// Arbitrary bytes, huge claimed lengths included: no panic, and the cursor's
    /// state stays its fixed size (it never buffers).
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
        step in 1usize..64,
    ) {
        let mut c = FrameCursor::default();
        for chunk in bytes.chunks(step) {
            let _ = c.bytes_to_boundary(chunk);
            c.advance(chunk);
        }
        proptest::prop_assert_eq!(std::mem::size_of_val(&c), std::mem::size_of::<FrameCursor>());
    }
}
