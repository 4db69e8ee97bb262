//! WebSocket frame boundaries, tracked from headers alone. The relay never decodes or
//! unmasks payloads; it only needs to know where a frame ends, so it can inject a close
//! frame without cutting one in half, and which close code a peer sent, for the log.

/// Close codes the router sends itself (RFC 6455 §7.4.1 and the IANA registry).
pub(crate) mod code {
    /// The router is shutting down, or the peer went quiet (idle or ping timeout).
    pub(crate) const GOING_AWAY: u16 = 1001;
    /// The tenant moved to another backend: reconnect (`--reroute-drain`).
    pub(crate) const SERVICE_RESTART: u16 = 1012;
    /// The backend's connection ended without a close frame (it died, or dropped the
    /// socket), or broke the protocol. Not 1014 (bad gateway), which says the same more
    /// precisely: tungstenite, and so websocat, take 1014 for a protocol violation (1002).
    pub(crate) const BACKEND_GONE: u16 = 1011;
    /// The peer sent a frame no extension can make valid (RFC 6455 §7.4.1).
    pub(crate) const PROTOCOL_ERROR: u16 = 1002;
    /// The token the socket was opened with expired (`--auth jwt`).
    pub(crate) const POLICY_VIOLATION: u16 = 1008;
}

const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
pub(super) const OP_PONG: u8 = 0xA;

/// Which way a frame the router writes goes, which says how it is masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Toward {
    Client,
    Backend,
}

impl Toward {
    /// The mask of a frame written this way: none toward a client; toward a server
    /// masking is mandatory, and the key need not be secret here, only varied.
    pub(crate) fn mask(self) -> Option<[u8; 4]> {
        match self {
            Toward::Client => None,
            Toward::Backend => Some(fastrand::u32(..).to_ne_bytes()),
        }
    }
}

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
pub(crate) fn ping_frame(token: [u8; 8], mask: Option<[u8; 4]>) -> Vec<u8> {
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

/// A close frame with `code` and a short reason. Frames toward a server (the backend)
/// must be masked; frames toward a client must not be.
pub(crate) fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
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
#[path = "frame_tests.rs"]
mod tests;
