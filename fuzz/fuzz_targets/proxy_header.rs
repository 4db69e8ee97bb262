//! `proxy_protocol::parse` on arbitrary bytes: what the listener runs on whatever a peer
//! (or a load balancer) sends before TLS.
//!
//! Besides no panic: a header found lies within the bytes and the bounds
//! (`MAX_HEADER`, `V1_MAX` for a text line) and parses alone to the same answer; and,
//! what `read_header` relies on as it peeks more and more, every prefix of the bytes
//! answers "not all here yet" or already the final answer, never something else.

#![no_main]

use libfuzzer_sys::fuzz_target;
use router::fuzzing::{parse_proxy_header as parse, Proxied, MAX_HEADER, V1_MAX};

fuzz_target!(|data: &[u8]| run(data));

fn run(data: &[u8]) {
    let whole = parse(data);
    if let Ok(Some((len, proxied))) = whole {
        assert!(len <= data.len(), "header of {len} bytes in {}", data.len());
        assert!(len > 0, "an empty header");
        let bound = if data[0] == b'P' { V1_MAX } else { MAX_HEADER };
        assert!(len <= bound, "header of {len} bytes, bound {bound}");
        assert_eq!(
            parse(&data[..len]),
            whole,
            "the header alone parses otherwise"
        );
        if let Proxied::Client {
            source,
            destination,
        } = proxied
        {
            // TCP4 names two IPv4 addresses, TCP6 two IPv6 ones.
            assert_eq!(source.is_ipv4(), destination.is_ipv4(), "{proxied:?}");
        }
    }
    // Every prefix is undecided or decided as the whole is (and stays so once decided).
    // Nothing past the longest header decides anything.
    let decisive = data.len().min(MAX_HEADER + 1);
    let mut decided = false;
    for end in 0..=decisive {
        let part = parse(&data[..end]);
        match part {
            Ok(None) => {
                assert!(
                    !decided,
                    "bytes 0..{end} undecided after a decision: {whole:?}"
                );
            }
            _ => {
                assert_eq!(part, whole, "bytes 0..{end} answer otherwise than all");
                decided = true;
            }
        }
    }
    assert!(
        decided || whole == Ok(None),
        "no prefix decides what all does: {whole:?}"
    );
}
