//! WebSocket frame boundaries, tracked from headers alone. The relay never decodes or
//! unmasks payloads; it only needs to know where a frame ends, so it can inject a close
//! frame without cutting one in half, and which close code a peer sent, for the log.

/// Close codes the router sends itself (RFC 6455 §7.4.1 and the IANA registry).
pub mod code {
    /// The router is shutting down, or the peer went quiet (idle or ping timeout).
    pub const GOING_AWAY: u16 = 1001;
    /// The tenant moved to another backend: reconnect (`--reroute-drain`).
    pub const SERVICE_RESTART: u16 = 1012;
    /// The backend's connection ended without a close frame (it died, or dropped the
    /// socket), or broke the protocol. Not 1014 (bad gateway), which says the same more
    /// precisely: tungstenite, and so websocat, take 1014 for a protocol violation (1002).
    pub const BACKEND_GONE: u16 = 1011;
    /// The peer sent a frame no extension can make valid (RFC 6455 §7.4.1).
    pub const PROTOCOL_ERROR: u16 = 1002;
}

const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Tracks frame structure over the bytes written in one direction.
#[derive(Debug, Clone, Copy)]
pub struct FrameCursor {
    header: [u8; 14],
    have: u8,
    need: u8,
    in_payload: bool,
    remaining: u64,
    payload_seen: u64,
    opcode: u8,
    mask: Option<[u8; 4]>,
    close_code: [u8; 2],
    desynced: bool,
    /// The header that desynced the stream can never be valid (a 64-bit length with its
    /// top bit set, RFC 6455 §5.2): the peer broke the protocol, whatever extensions
    /// were negotiated.
    violated: bool,
    passed_close: bool,
    last_close_code: Option<u16>,
    /// Data frames (text, binary, continuation) begun: what "activity" means for the
    /// idle timeout; control frames do not count.
    data_frames: u64,
}

impl Default for FrameCursor {
    fn default() -> Self {
        Self {
            header: [0; 14],
            have: 0,
            need: 2,
            in_payload: false,
            remaining: 0,
            payload_seen: 0,
            opcode: 0,
            mask: None,
            close_code: [0; 2],
            desynced: false,
            violated: false,
            passed_close: false,
            last_close_code: None,
            data_frames: 0,
        }
    }
}

impl FrameCursor {
    /// True between frames: a close frame written now would not split one.
    #[inline]
    pub fn at_boundary(&self) -> bool {
        !self.desynced && !self.in_payload && self.have == 0
    }

    /// The stream carried something that is not a WebSocket frame; boundaries are unknown
    /// from here on, so the relay only ever ends it with FIN.
    pub fn desynced(&self) -> bool {
        self.desynced
    }

    /// The stream carried a frame header that no extension makes valid; see
    /// [`FrameCursor::violation_at`].
    pub fn violated(&self) -> bool {
        self.violated
    }

    /// A close frame has gone through whole, or one too bad to follow has begun.
    pub fn passed_close(&self) -> bool {
        self.passed_close
    }

    /// Data frames begun so far.
    pub fn data_frames(&self) -> u64 {
        self.data_frames
    }

    /// The code of the last close frame that went through, if it had one.
    pub fn close_code(&self) -> Option<u16> {
        self.last_close_code
    }

    /// Records that `data` was written.
    #[inline]
    pub fn advance(&mut self, mut data: &[u8]) {
        // Fast path: the middle of a large payload.
        if self.in_payload && self.opcode != OP_CLOSE && (data.len() as u64) < self.remaining {
            self.remaining -= data.len() as u64;
            return;
        }
        while !data.is_empty() && !self.desynced {
            let (used, _) = self.step(data);
            data = &data[used..];
        }
    }

    /// How many bytes of `data` can be written before the stream reaches the next frame
    /// boundary: `Some(0)` if it is at one now, `None` if the current frame does not end
    /// within `data` (or boundaries are unknown).
    pub fn bytes_to_boundary(&self, data: &[u8]) -> Option<usize> {
        if self.at_boundary() {
            return Some(0);
        }
        let mut probe = *self;
        let mut used = 0;
        while used < data.len() && !probe.desynced {
            let (n, ended) = probe.step(&data[used..]);
            used += n;
            if ended {
                return Some(used);
            }
        }
        None
    }

    /// Where in `data` (which would follow what this cursor has seen) a frame header
    /// begins that no extension can make valid, once that header is all there: the
    /// relay passes on only what comes before it. `Some(0)` also when such a header
    /// began in bytes already seen. Frames other than that pass as they are, valid or
    /// not: the peer at the other end judges them (it knows the extensions in use).
    ///
    /// Called on every read before it is written, so it walks whole headers directly
    /// (a few dozen instructions a frame); only a header begun in an earlier read takes
    /// the cursor's byte-by-byte path.
    pub fn violation_at(&self, data: &[u8]) -> Option<usize> {
        if self.desynced {
            return None;
        }
        // Where the next header starts, counted from the start of `data`.
        let mut at: u64 = match (self.in_payload, self.have) {
            (true, _) => self.remaining,
            (false, 0) => 0,
            (false, _) => return self.violation_in_header(data),
        };
        let end = data.len() as u64;
        // `at` stays below 2^63 + 2^16: lengths past 2^63 stop the walk before they are
        // added, and `end` is a slice length.
        while at < end {
            let rest = &data[at as usize..];
            let b1 = *rest.get(1)?;
            let h = rest.get(..usize::from(header_len(b1)))?;
            let len = match b1 & 0x7f {
                126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
                127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
                n => u64::from(n),
            };
            if len >> 63 != 0 {
                return Some(at as usize);
            }
            if !valid_header(h[0], len) {
                // Boundaries are unknown from here: nothing more to find.
                return None;
            }
            at += h.len() as u64 + len;
        }
        None
    }

    /// [`FrameCursor::violation_at`] when a header began in bytes already seen: the
    /// cursor's own steps, on a copy.
    fn violation_in_header(&self, data: &[u8]) -> Option<usize> {
        if self.desynced {
            return None;
        }
        let mut probe = *self;
        let mut used = 0;
        let mut header_at = 0;
        while used < data.len() {
            if !probe.in_payload && probe.have == 0 {
                header_at = used;
            }
            let (n, _) = probe.step(&data[used..]);
            used += n;
            if probe.violated {
                return Some(header_at);
            }
            if probe.desynced {
                return None;
            }
        }
        None
    }

    /// Consumes bytes up to the end of the current frame at most. Returns the bytes used
    /// and whether a frame ended there.
    fn step(&mut self, data: &[u8]) -> (usize, bool) {
        if !self.in_payload {
            let take = usize::from(self.need - self.have).min(data.len());
            let start = usize::from(self.have);
            self.header[start..start + take].copy_from_slice(&data[..take]);
            self.have += take as u8;
            if self.have < self.need {
                return (take, false);
            }
            if self.need == 2 {
                let full = header_len(self.header[1]);
                if full > 2 {
                    self.need = full;
                    return (take, false);
                }
            }
            self.begin_payload();
            if self.desynced {
                return (take, false);
            }
            if self.remaining == 0 {
                self.end_frame();
                return (take, true);
            }
            return (take, false);
        }
        let take = self.remaining.min(data.len() as u64) as usize;
        if self.opcode == OP_CLOSE {
            for (i, &b) in data[..take].iter().enumerate() {
                let pos = self.payload_seen + i as u64;
                if pos >= 2 {
                    break;
                }
                let m = self.mask.map_or(0, |k| k[pos as usize % 4]);
                self.close_code[pos as usize] = b ^ m;
            }
        }
        self.payload_seen += take as u64;
        self.remaining -= take as u64;
        if self.remaining == 0 {
            self.end_frame();
            return (take, true);
        }
        (take, false)
    }

    fn begin_payload(&mut self) {
        let h = &self.header;
        let opcode = h[0] & 0x0f;
        let masked = h[1] & 0x80 != 0;
        let (len, at) = match h[1] & 0x7f {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
            127 => (
                u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
                10,
            ),
            n => (u64::from(n), 2),
        };
        if len >> 63 != 0 || !valid_header(h[0], len) {
            self.desynced = true;
            self.violated = len >> 63 != 0;
            // A close frame, even a bad one (a payload over 125 bytes), says its sender
            // has begun closing: the router adds no close of its own after it.
            if opcode == OP_CLOSE {
                self.passed_close = true;
                self.last_close_code = None;
            }
            return;
        }
        self.mask = masked.then(|| [h[at], h[at + 1], h[at + 2], h[at + 3]]);
        self.opcode = opcode;
        if opcode & 0x8 == 0 {
            self.data_frames += 1;
        }
        self.remaining = len;
        self.payload_seen = 0;
        self.in_payload = true;
        self.have = 0;
        self.need = 2;
    }

    fn end_frame(&mut self) {
        self.in_payload = false;
        if self.opcode == OP_CLOSE {
            self.passed_close = true;
            self.last_close_code =
                (self.payload_seen >= 2).then(|| u16::from_be_bytes(self.close_code));
        }
    }
}

/// Whether a header with first byte `b0` and payload length `len` is one the cursor can
/// follow: a known opcode, and a control frame whole and at most 125 bytes.
fn valid_header(b0: u8, len: u64) -> bool {
    let opcode = b0 & 0x0f;
    let control = opcode & 0x8 != 0;
    matches!(opcode, 0x0 | 0x1 | 0x2 | 0x8 | 0x9 | 0xA)
        && (!control || (b0 & 0x80 != 0 && len <= 125))
}

/// The full header length implied by the second header byte.
fn header_len(b1: u8) -> u8 {
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
}

/// A ping frame carrying `token`, masked toward a server.
pub fn ping_frame(token: [u8; 8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + 4 + 8);
    out.push(0x80 | OP_PING);
    match mask {
        None => {
            out.push(8);
            out.extend_from_slice(&token);
        }
        Some(key) => {
            out.push(0x80 | 8);
            out.extend_from_slice(&key);
            out.extend(token.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
    }
    out
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

/// A close frame with `code` and a short reason. Frames toward a server (the backend)
/// must be masked; frames toward a client must not be.
pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    // Control frame payloads are at most 125 bytes: 2 for the code, the rest for text.
    let mut reason = &reason.as_bytes()[..reason.len().min(123)];
    while std::str::from_utf8(reason).is_err() {
        reason = &reason[..reason.len() - 1];
    }
    let payload_len = 2 + reason.len();
    let mut out = Vec::with_capacity(2 + 4 + payload_len);
    out.push(0x80 | OP_CLOSE);
    match mask {
        None => {
            out.push(payload_len as u8);
            out.extend_from_slice(&code.to_be_bytes());
            out.extend_from_slice(reason);
        }
        Some(key) => {
            out.push(0x80 | payload_len as u8);
            out.extend_from_slice(&key);
            let payload = code.to_be_bytes().into_iter().chain(reason.iter().copied());
            out.extend(payload.enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a frame as a peer would send it.
    fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
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
}
