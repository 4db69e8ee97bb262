//! Tests of one direction alone, no sockets: what it passes on of a stream that carries
//! the router's pong, split across reads anywhere.

use super::*;

/// A frame for the pong-search properties: any header shape and length class
/// (7-bit, 16-bit, 64-bit, and 64-bit lengths near 2^63 and 2^64 whose payload is
/// never sent), masked at random or not, valid or not.
fn arb_frame() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    let len = prop_oneof![
        6 => (0u64..140).boxed(),
        2 => (126u64..70_000).boxed(),
        1 => Just(u64::MAX - 13).boxed(),
        1 => ((1u64 << 63)..=u64::MAX).boxed(),
        1 => ((1u64 << 62)..(1u64 << 63)).boxed(),
    ];
    let opcode = prop_oneof![
        6 => prop::sample::select(vec![0u8, 1, 2, 8, 9, 10]),
        1 => 0u8..16,
    ];
    (
        any::<bool>(),
        opcode,
        len,
        any::<Option<[u8; 4]>>(),
        any::<u8>(),
    )
        .prop_map(|(fin, op, len, mask, byte)| {
            let mut f = vec![(if fin { 0x80 } else { 0 }) | op];
            let m = if mask.is_some() { 0x80 } else { 0 };
            // The length's own class, or a wider one than it needs: both are on the wire.
            match len {
                n if n < 126 && byte % 5 != 0 => f.push(m | n as u8),
                n if n <= 0xffff && byte % 7 != 0 => {
                    f.push(m | 126);
                    f.extend_from_slice(&(n as u16).to_be_bytes());
                }
                n => {
                    f.push(m | 127);
                    f.extend_from_slice(&n.to_be_bytes());
                }
            }
            if let Some(k) = mask {
                f.extend_from_slice(&k);
            }
            // Only small payloads are sent; a huge claimed one ends the stream.
            if len < 70_000 {
                f.extend(std::iter::repeat_n(byte, len as usize));
            }
            f
        })
}

/// Our pong, masked with any key, or someone else's.
fn arb_pong(token: [u8; 8]) -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    (any::<[u8; 4]>(), any::<bool>()).prop_map(move |(key, ours)| {
        let mut payload = token;
        if !ours {
            payload[0] ^= 1;
        }
        crate::data::relay::test_frames::frame(true, 0xA, &payload, Some(key))
    })
}

/// What the pong search should do to a whole stream: take out the first frame at a
/// boundary that is our pong, looking no further than the first frame that is not
/// valid; and pass nothing from a frame no extension makes valid on. Returns what
/// passes, and that header's bytes: a read that ends inside it has passed its
/// start before it is known to be bad (the sink then gets FIN, not a close).
fn reference<'s>(stream: &'s [u8], token: &[u8; 8]) -> (Vec<u8>, &'s [u8]) {
    let mut out = Vec::new();
    let mut at = 0;
    let mut searching = true;
    while at < stream.len() {
        let rest = &stream[at..];
        if rest.len() < 2 {
            out.extend_from_slice(rest);
            break;
        }
        let b1 = rest[1];
        let header =
            2 + match b1 & 0x7f {
                126 => 2,
                127 => 8,
                _ => 0,
            } + if b1 & 0x80 != 0 { 4 } else { 0 };
        if rest.len() < header {
            out.extend_from_slice(rest);
            break;
        }
        let len = match b1 & 0x7f {
            126 => u64::from(u16::from_be_bytes([rest[2], rest[3]])),
            127 => u64::from_be_bytes(rest[2..10].try_into().unwrap()),
            n => u64::from(n),
        };
        if len >> 63 != 0 {
            return (out, &rest[..header]);
        }
        let (op, fin) = (rest[0] & 0x0f, rest[0] & 0x80 != 0);
        let valid = matches!(op, 0 | 1 | 2 | 8 | 9 | 10) && (op & 8 == 0 || (fin && len <= 125));
        let end = (header as u64 + len).min(rest.len() as u64) as usize;
        if !valid {
            // Boundaries unknown: everything passes as it is from here.
            out.extend_from_slice(rest);
            break;
        }
        let ours = searching && op == 0xA && fin && len == 8 && end == header + 8 && {
            let key = if b1 & 0x80 != 0 {
                [rest[2], rest[3], rest[4], rest[5]]
            } else {
                [0; 4]
            };
            rest[header..end]
                .iter()
                .enumerate()
                .all(|(i, b)| b ^ key[i % 4] == token[i])
        };
        if ours {
            searching = false;
        } else {
            out.extend_from_slice(&rest[..end]);
        }
        at += end;
    }
    (out, &[])
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
    ))]

    /// Any stream (every header shape and length class, random masks, our pong or
    /// a stranger's anywhere), split anywhere across reads: what the relay passes
    /// on is the stream less our first pong, up to any frame no extension makes
    /// valid; and every read's search ends.
    #[test]
    fn the_pong_search_agrees_with_a_reference_however_split(
        token in proptest::prelude::any::<[u8; 8]>(),
        frames in proptest::collection::vec(arb_frame(), 0..8),
        pongs in proptest::collection::vec(arb_pong([7; 8]), 0..3),
        at in proptest::collection::vec(0usize..8, 0..3),
        cuts in proptest::collection::vec(0usize..4096, 0..12),
    ) {
        let mut frames = frames;
        for (p, i) in pongs.into_iter().zip(at) {
            // Re-key the pong to this case's token.
            let mut p = p;
            let ours = p[6] == 7 ^ p[2];
            let mut payload = token;
            if !ours {
                payload[0] ^= 1;
            }
            for (j, b) in payload.iter().enumerate() {
                p[6 + j] = b ^ p[2 + j % 4];
            }
            frames.insert(i.min(frames.len()), p);
        }
        let stream = frames.concat();
        let (want, bad_header) = reference(&stream, &token);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();
        let mut pump = Pump::new(Toward::Backend, Bytes::new(), None);
        pump.pings.await_pong(token);
        let mut out = Vec::new();
        let mut last = 0;
        for cut in cuts {
            if pump.close.violated() || last == cut {
                continue;
            }
            let data = pump.pings.strip(&pump.frames, &stream[last..cut]);
            last = cut;
            let passed = pump.passable(&data).to_vec();
            pump.wrote(&passed);
            out.extend_from_slice(&passed);
        }
        out.extend(pump.pings.take_unfinished().unwrap_or_default());
        proptest::prop_assert!(out.len() >= want.len(), "{} < {}", out.len(), want.len());
        let (head, leaked) = out.split_at(want.len());
        proptest::prop_assert_eq!(head, &want[..]);
        proptest::prop_assert!(leaked.len() < bad_header.len().max(1));
        proptest::prop_assert_eq!(leaked, &bad_header[..leaked.len()]);
    }
}
