//! What a handshake in progress holds, told to whoever keeps the budget for all of them.

/// Told how many bytes a connection in its TLS handshake holds, so a budget shared by
/// all such connections can be kept.
pub(crate) trait Meter {
    fn held(&mut self, bytes: usize);
}

impl Meter for () {
    fn held(&mut self, _: usize) {}
}
