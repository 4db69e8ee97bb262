//! PROXY protocol v1: one line of text, `PROXY TCP4|TCP6|UNKNOWN ...` ended by CRLF.

use std::net::{IpAddr, SocketAddr};

use super::{agrees, Proxied, ProxyHeaderError, V1_MAX};

pub(super) const V1_PREFIX: &[u8] = b"PROXY ";

/// A v1 line at the start of `buf`, as [`super::parse`] says; `buf` starts with `P`.
pub(super) fn parse(buf: &[u8]) -> Result<Option<(usize, Proxied)>, ProxyHeaderError> {
    use ProxyHeaderError::{Family, TooLong, V1Syntax};
    if !agrees(buf, V1_PREFIX) {
        return Err(ProxyHeaderError::Signature);
    }
    // The line ends at the first LF, and the spec bounds where that may be. Nothing is
    // decoded before it is there: the spec says to wait for the whole line.
    let window = buf.get(..V1_MAX).unwrap_or(buf);
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if window.len() == V1_MAX {
            Err(TooLong)
        } else {
            Ok(None)
        };
    };
    // No overflow: lf < V1_MAX.
    let len = lf + 1;
    // The spec: "must not tolerate a single CR or LF character to end the line".
    let line = window
        .get(..lf)
        .and_then(|l| l.strip_suffix(b"\r"))
        .and_then(|l| l.strip_prefix(V1_PREFIX))
        .ok_or(V1Syntax)?;
    let mut fields = line.split(|&b| b == b' ');
    let protocol = fields.next().unwrap_or_default();
    // A name we do not serve (UDP4, TCP5...) is a family question; a lowercase or empty
    // one, or stray bytes, make a broken line.
    let is_name =
        |p: &[u8]| !p.is_empty() && p.iter().all(|&b| matches!(b, b'A'..=b'Z' | b'0'..=b'9'));
    let v6 = match protocol {
        // The spec: for UNKNOWN "the receiver must ignore anything presented before the
        // CRLF", so the rest of the line is not looked at (HAProxy does the same).
        b"UNKNOWN" => return Ok(Some((len, Proxied::Local))),
        b"TCP4" => false,
        b"TCP6" => true,
        p if is_name(p) => return Err(Family),
        _ => return Err(V1Syntax),
    };
    // Exactly one space between exactly four fields: an empty field (double or trailing
    // space) fails to parse, a fifth one is refused here.
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(V1Syntax);
    };
    let source = SocketAddr::new(ip(src, v6)?, port(sport)?);
    let destination = SocketAddr::new(ip(dst, v6)?, port(dport)?);
    Ok(Some((
        len,
        Proxied::Client {
            source,
            destination,
        },
    )))
}

fn ip(field: &[u8], v6: bool) -> Result<IpAddr, ProxyHeaderError> {
    // std's parsers take exactly the spec's forms: a dotted quad without leading zeros
    // (which the spec forbids as octal-looking), and IPv6 text without brackets or zone.
    let ip: IpAddr = std::str::from_utf8(field)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(ProxyHeaderError::V1Syntax)?;
    if ip.is_ipv6() != v6 {
        return Err(ProxyHeaderError::Family);
    }
    Ok(ip)
}

fn port(field: &[u8]) -> Result<u16, ProxyHeaderError> {
    // Digits only (`u16::from_str` would take a '+') and no leading zero (the spec forbids
    // it); the parse refuses anything above 65535.
    let digits = match field {
        [b'0'] => true,
        [b'1'..=b'9', rest @ ..] => rest.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    digits
        .then(|| std::str::from_utf8(field).ok()?.parse().ok())
        .flatten()
        .ok_or(ProxyHeaderError::V1Syntax)
}
