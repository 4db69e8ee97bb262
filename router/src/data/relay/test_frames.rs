//! WebSocket frames as peers send them, for the relay's unit tests: one builder, so every
//! test speaks the same wire format (and a fix to it reaches them all).

/// The mask key [`client_frame`] uses: any key will do, a fixed one keeps bytes readable.
pub(crate) const CLIENT_KEY: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

/// A frame as a peer would send it: any payload length (in the shortest length class
/// that holds it), masked with `mask` if there is one.
pub(crate) fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xffff => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A whole, unmasked frame, as a server (the backend) sends it.
pub(crate) fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(true, opcode, payload, None)
}

/// A whole frame masked with [`CLIENT_KEY`], as a client sends it.
pub(crate) fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(true, opcode, payload, Some(CLIENT_KEY))
}

/// The code of a close frame at the start of `bytes`, unmasking if needed; `None` when
/// `bytes` does not start with a close frame's header and code (or not yet all of it).
pub(crate) fn close_code(bytes: &[u8]) -> Option<u16> {
    if bytes.first() != Some(&0x88) {
        return None;
    }
    let b1 = *bytes.get(1)?;
    let (key, at) = if b1 & 0x80 != 0 {
        (*bytes.get(2..6)?.first_chunk::<4>()?, 6)
    } else {
        ([0; 4], 2)
    };
    let code = bytes.get(at..at + 2)?;
    Some(u16::from_be_bytes([code[0] ^ key[0], code[1] ^ key[1]]))
}

#[test]
fn the_builders_make_what_peers_send() {
    assert_eq!(server_frame(0x1, b"hi"), [0x81, 0x02, b'h', b'i']);
    assert_eq!(
        client_frame(0x2, b"ab"),
        [0x82, 0x82, 0x11, 0x22, 0x33, 0x44, b'a' ^ 0x11, b'b' ^ 0x22]
    );
    assert_eq!(frame(false, 0x0, &[0; 126], None)[..4], [0x00, 126, 0, 126]);
    assert_eq!(
        frame(true, 0x2, &[0; 1 << 16], Some([0; 4]))[..10],
        [0x82, 0x80 | 127, 0, 0, 0, 0, 0, 1, 0, 0]
    );
    for close in [
        server_frame(0x8, &1001u16.to_be_bytes()),
        client_frame(0x8, &1001u16.to_be_bytes()),
    ] {
        assert_eq!(close_code(&close), Some(1001));
        assert_eq!(close_code(&close[..close.len() - 1]), None, "cut short");
    }
    assert_eq!(close_code(&server_frame(0x1, b"xy")), None);
}
