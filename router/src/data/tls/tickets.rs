//! TLS session tickets every replica can open (`--tls-ticket-keys FILE`): a client that
//! reconnects to another replica (after a drain, a scale, a balancer's whim) resumes its
//! session instead of paying a full handshake. The file holds one or more keys of 80
//! random bytes each, concatenated, as NGINX's `ssl_session_ticket_key` takes them: a
//! 16-byte name, then 64 secret bytes. The first key is the newest: tickets are sealed
//! with it and opened with whichever key their name says, so a rotation that puts the new
//! key first and keeps the old one after it loses no resumption. The file is watched and
//! swapped live (`control::watch::tickets`).
//!
//! A ticket: the key's name (16), when it was issued (8, seconds since the Unix epoch),
//! a random nonce (12), then rustls' session state sealed with AES-256-GCM under a key
//! derived from the 64 secret bytes (the name and the time are authenticated too). One
//! older than `--tls-ticket-lifetime` is not opened, whatever key sealed it. Anything
//! that is not such a ticket opens as nothing: the client gets a full handshake.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;
use thiserror::Error;

/// One key in the file: a name, then the secret.
const KEY_LEN: usize = 80;
const NAME_LEN: usize = 16;
const ISSUED_LEN: usize = 8;
const HEAD_LEN: usize = NAME_LEN + ISSUED_LEN;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TicketKeysError {
    #[error("holds no key: it needs one or more keys of 80 random bytes each")]
    Empty,
    #[error(
        "is {0} bytes long: it needs keys of exactly 80 bytes each (e.g. head -c 80 /dev/urandom)"
    )]
    Length(usize),
    #[error("names two keys alike (key {0} repeats an earlier key's first 16 bytes)")]
    DuplicateName(usize),
    #[error("the system's random number generator failed")]
    NoRandom,
}

/// One key: its name and its sealing key.
struct TicketKey {
    name: [u8; NAME_LEN],
    aead: LessSafeKey,
}

/// The keys in force, newest first.
pub struct TicketKeys {
    keys: Vec<TicketKey>,
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: the secrets never reach a log.
        f.debug_struct("TicketKeys")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl TicketKeys {
    /// The keys in a file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, TicketKeysError> {
        if bytes.is_empty() {
            return Err(TicketKeysError::Empty);
        }
        if !bytes.len().is_multiple_of(KEY_LEN) {
            return Err(TicketKeysError::Length(bytes.len()));
        }
        let mut keys: Vec<TicketKey> = Vec::with_capacity(bytes.len() / KEY_LEN);
        for (i, raw) in bytes.chunks_exact(KEY_LEN).enumerate() {
            let mut name = [0; NAME_LEN];
            name.copy_from_slice(&raw[..NAME_LEN]);
            if keys.iter().any(|k| k.name == name) {
                return Err(TicketKeysError::DuplicateName(i + 1));
            }
            keys.push(TicketKey {
                name,
                aead: sealing_key(&raw[NAME_LEN..]),
            });
        }
        Ok(Self { keys })
    }

    /// One random key of this process's own: without a shared file (or before it is
    /// there), tickets open only on this replica, as without `--tls-ticket-keys`.
    pub fn random() -> Result<Self, TicketKeysError> {
        let mut raw = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| TicketKeysError::NoRandom)?;
        Self::parse(&raw)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The AES-256-GCM key for a key's 64 secret bytes: SHA-256 over a label and them, so
/// every byte of the secret counts (NGINX splits it into an HMAC and an AES key).
fn sealing_key(secret: &[u8]) -> LessSafeKey {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(b"wsrouter tls ticket key v1");
    ctx.update(secret);
    let digest = ctx.finish();
    // 32 bytes is AES-256-GCM's key length: this cannot fail.
    let unbound = UnboundKey::new(&AES_256_GCM, digest.as_ref())
        .unwrap_or_else(|_| unreachable!("a SHA-256 digest is an AES-256 key"));
    LessSafeKey::new(unbound)
}

/// The shared ticket keys' file and the ticketer that holds them, for the watcher.
#[derive(Debug, Clone)]
pub struct Tickets {
    pub path: std::path::PathBuf,
    pub ticketer: Arc<SharedTicketer>,
    /// The file's bytes the ticketer holds the keys of; `None`: a key of its own (the
    /// file was missing).
    pub loaded: Option<Vec<u8>>,
}

/// The ticketer rustls calls: the keys in force (swapped whole by the watcher) and how
/// long a ticket may be used.
pub struct SharedTicketer {
    keys: ArcSwap<TicketKeys>,
    lifetime: Duration,
    random: SystemRandom,
}

impl std::fmt::Debug for SharedTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTicketer")
            .field("keys", &self.keys.load().len())
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

/// One ticketer is one identity: two are equal only if they are the same.
impl PartialEq for SharedTicketer {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}
impl Eq for SharedTicketer {}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl SharedTicketer {
    pub fn new(keys: TicketKeys, lifetime: Duration) -> Arc<Self> {
        Arc::new(Self {
            keys: ArcSwap::from_pointee(keys),
            lifetime,
            random: SystemRandom::new(),
        })
    }

    /// Puts `keys` in force for the next ticket sealed or opened.
    pub fn swap(&self, keys: TicketKeys) {
        self.keys.store(Arc::new(keys));
    }

    fn seal(&self, plain: &[u8], issued: u64) -> Option<Vec<u8>> {
        let keys = self.keys.load();
        let key = keys.keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(HEAD_LEN + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&key.name);
        out.extend_from_slice(&issued.to_be_bytes());
        let aad = out.clone();
        out.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad),
                &mut sealed,
            )
            .ok()?;
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn open(&self, ticket: &[u8], now: u64) -> Option<Vec<u8>> {
        if ticket.len() < HEAD_LEN + NONCE_LEN + 16 {
            return None;
        }
        let (head, rest) = ticket.split_at(HEAD_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let issued = u64::from_be_bytes(head[NAME_LEN..].try_into().ok()?);
        // Too old, or from the future (a clock that jumped back issued it): not opened.
        if issued > now.saturating_add(60) || now.saturating_sub(issued) > self.lifetime.as_secs() {
            return None;
        }
        let keys = self.keys.load();
        let key = keys.keys.iter().find(|k| k.name[..] == head[..NAME_LEN])?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain = key
            .aead
            .open_in_place(nonce, Aad::from(head), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }
}

impl ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        u32::try_from(self.lifetime.as_secs()).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal(plain, now_secs())
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open(cipher, now_secs())
    }
}

#[cfg(test)]
mod tests;
