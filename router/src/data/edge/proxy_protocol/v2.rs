//! PROXY protocol v2: a binary header, a 16-byte fixed part then an address block and
//! TLVs of a declared length.

use std::net::{IpAddr, SocketAddr};

use super::{agrees, Proxied, ProxyHeaderError, MAX_HEADER};

pub(super) const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/transport, big-endian length of the rest.
pub(super) const V2_FIXED: usize = 16;
pub(super) const TCP4: u8 = 0x11;
pub(super) const TCP6: u8 = 0x21;
pub(super) const UNSPEC: u8 = 0x00;

/// A v2 header at the start of `buf`, as [`super::parse`] says; `buf` starts with CR.
pub(super) fn parse(buf: &[u8]) -> Result<Option<(usize, Proxied)>, ProxyHeaderError> {
    use ProxyHeaderError::{Command, Family, Length, TooLong, Version};
    if !agrees(buf, V2_SIGNATURE) {
        return Err(ProxyHeaderError::Signature);
    }
    // Each fixed byte is judged as soon as it is here, not when the whole header is.
    let Some(&version_command) = buf.get(12) else {
        return Ok(None);
    };
    if version_command >> 4 != 2 {
        return Err(Version);
    }
    let proxy = match version_command & 0x0F {
        0 => false,
        1 => true,
        _ => return Err(Command),
    };
    let Some(&family) = buf.get(13) else {
        return Ok(None);
    };
    // The address block, if we are to read it, and its size. LOCAL ignores the family
    // whatever it says (spec: "discard the protocol block including the family"). The
    // spec would also have UDP and AF_UNIX fall back to "use the real endpoints"; we
    // refuse them instead: a TCP listener seeing them has a misconfigured balancer.
    let addresses = match (proxy, family) {
        (false, _) | (true, UNSPEC) => None,
        (true, TCP4) => Some((false, 2 * 4 + 2 * 2)),
        (true, TCP6) => Some((true, 2 * 16 + 2 * 2)),
        (true, _) => return Err(Family),
    };
    let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) else {
        return Ok(None);
    };
    let declared = usize::from(u16::from_be_bytes([hi, lo]));
    let total = V2_FIXED
        .checked_add(declared)
        .filter(|&total| total <= MAX_HEADER)
        .ok_or(TooLong)?;
    if addresses.is_some_and(|(_, size)| declared < size) {
        return Err(Length);
    }
    // The spec: do not parse an address before the whole block is here.
    let Some(mut block) = buf.get(V2_FIXED..total) else {
        return Ok(None);
    };
    // Whatever follows the addresses up to `total` (TLVs: ALPN, authority, CRC32C, SSL...)
    // is skipped without being looked at: we use none of it, and never reading past
    // `total` is all the safety the skip needs, well-formed TLVs or not.
    let Some((v6, _)) = addresses else {
        return Ok(Some((total, Proxied::Local)));
    };
    let (src, dst) = if v6 {
        let (src, dst) = (take::<16>(&mut block)?, take::<16>(&mut block)?);
        (IpAddr::from(src), IpAddr::from(dst))
    } else {
        let (src, dst) = (take::<4>(&mut block)?, take::<4>(&mut block)?);
        (IpAddr::from(src), IpAddr::from(dst))
    };
    let source = SocketAddr::new(src, u16::from_be_bytes(take(&mut block)?));
    let destination = SocketAddr::new(dst, u16::from_be_bytes(take(&mut block)?));
    Ok(Some((
        total,
        Proxied::Client {
            source,
            destination,
        },
    )))
}

/// The next `N` bytes of `block`. The length check above makes this infallible; the
/// error keeps it so without an index that could panic.
fn take<const N: usize>(block: &mut &[u8]) -> Result<[u8; N], ProxyHeaderError> {
    let (head, rest) = block
        .split_first_chunk::<N>()
        .ok_or(ProxyHeaderError::Length)?;
    *block = rest;
    Ok(*head)
}
