//! Big reads for bulk traffic, paid for from one budget shared by every relay.
//!
//! A relay reads into a scratch buffer and writes what it read; what the sink does not
//! take yet (its socket buffer is full) stays with the connection until it does. Reading
//! [`READ_SMALL`] (16 KiB, one TLS record) at a time bounds that to 16 KiB per direction,
//! but costs a read, a TLS record and a send per 16 KiB: at 16 KiB messages that is
//! twice the syscalls and a quarter more CPU than reading [`READ_BIG`] (64 KiB) at a
//! time. So relays read 64 KiB at a time while the bytes held above 16 KiB, summed over
//! every connection, stay under the budget; past it they read 16 KiB again. The most a
//! connection holds is then what it held before, plus its share of one shared budget,
//! not 48 KiB more per direction for every socket.
//!
//! Each relay counts what it holds above [`READ_SMALL`] per direction (in its own buffer
//! and queued in the sink, see `Peer::queued`) after every poll, and returns it
//! when the bytes are written or the relay ends. The check before a big read and the
//! count after it are not one atomic step, so the total may pass the budget by what one
//! read per I/O thread can add (48 KiB each).

use std::sync::atomic::{AtomicUsize, Ordering};

/// What a relay reads at a time while the budget lasts.
pub(crate) const READ_BIG: usize = 64 << 10;
/// What it reads at a time otherwise: one TLS record's plaintext.
pub(crate) const READ_SMALL: usize = 16 << 10;

/// The budget every relay in the process draws from (32 MiB).
pub(crate) static BUDGET: ReadBudget = ReadBudget::new(32 << 20);

/// Bytes held by relays above [`READ_SMALL`] per direction, against a limit.
#[derive(Debug)]
pub struct ReadBudget {
    over: AtomicUsize,
    limit: usize,
}

impl ReadBudget {
    pub const fn new(limit: usize) -> Self {
        Self {
            over: AtomicUsize::new(0),
            limit,
        }
    }

    /// How much the next read may take.
    pub fn read_size(&self) -> usize {
        if self.over.load(Ordering::Relaxed) < self.limit {
            READ_BIG
        } else {
            READ_SMALL
        }
    }

    /// One direction now holds `held` bytes (read, or queued in its sink, not yet sent),
    /// and had `charged` counted: counts the change, and returns the new charge. Holding
    /// 16 KiB or less, as nearly every poll does, touches no shared memory.
    #[inline]
    pub fn settle(&self, charged: u32, held: usize) -> u32 {
        // At most a big read plus a record's overhead is ever held, far under u32::MAX.
        let now = u32::try_from(held.saturating_sub(READ_SMALL)).unwrap_or(u32::MAX);
        if now > charged {
            self.over
                .fetch_add((now - charged) as usize, Ordering::Relaxed);
        } else if now < charged {
            self.over
                .fetch_sub((charged - now) as usize, Ordering::Relaxed);
        }
        now
    }

    /// Bytes counted now, above 16 KiB per direction, over every relay.
    pub fn held_over(&self) -> usize {
        self.over.load(Ordering::Relaxed)
    }
}

/// What one direction of a relay holds above [`READ_SMALL`], as counted in a
/// [`ReadBudget`]: settled after every poll, given back when the relay ends.
#[derive(Debug, Default)]
pub(crate) struct Charge(u32);

impl Charge {
    /// The direction now holds `held` bytes: the budget counts the change.
    #[inline]
    pub(crate) fn settle(&mut self, budget: &ReadBudget, held: usize) {
        self.0 = budget.settle(self.0, held);
    }

    /// The relay is ending: everything counted goes back.
    pub(crate) fn give_back(&mut self, budget: &ReadBudget) {
        self.settle(budget, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::relay::close::Stop;
    use crate::data::relay::peer::Peer;
    use crate::data::relay::pump::{run, RelayConfig};
    use crate::data::relay::test_frames::frame;
    use bytes::Bytes;
    use std::io;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};
    use std::time::Duration;
    use tokio::io::{
        duplex, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf,
    };

    const WAIT: Duration = Duration::from_secs(10);

    /// A client side that records the largest read the relay asks of it.
    struct Asks {
        inner: DuplexStream,
        largest: Arc<AtomicUsize>,
    }

    impl AsyncRead for Asks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.largest.fetch_max(buf.remaining(), Ordering::Relaxed);
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Asks {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    impl Peer for Asks {
        fn reset(&mut self) {}
    }

    /// One masked binary frame of `len` zero bytes (mask 0, so the payload stays zeros),
    /// as a client sends it.
    fn zeros_frame(len: usize) -> Vec<u8> {
        frame(true, 0x2, &vec![0; len], Some([0; 4]))
    }

    struct Relayed {
        client: DuplexStream,
        backend: DuplexStream,
        largest_read: Arc<AtomicUsize>,
        relay: tokio::task::JoinHandle<crate::data::relay::pump::RelayReport>,
    }

    fn relay_with(budget: &'static ReadBudget) -> Relayed {
        let (client, relay_client) = duplex(256 << 10);
        let (backend, relay_backend) = duplex(256 << 10);
        let largest_read = Arc::new(AtomicUsize::new(0));
        let asks = Asks {
            inner: relay_client,
            largest: largest_read.clone(),
        };
        let config = RelayConfig {
            budget,
            ..RelayConfig::closing_within(WAIT)
        };
        let stop = std::future::pending::<Stop>();
        let relay = tokio::spawn(run(
            asks,
            relay_backend,
            Bytes::new(),
            Bytes::new(),
            stop,
            config,
        ));
        Relayed {
            client,
            backend,
            largest_read,
            relay,
        }
    }

    /// 1 MiB from the client through to the backend: the largest read the relay made.
    async fn largest_read_for_a_mebibyte(budget: &'static ReadBudget) -> usize {
        let Relayed {
            mut client,
            mut backend,
            largest_read,
            relay,
        } = relay_with(budget);
        let frame = zeros_frame(1 << 20);
        let mut got = vec![0u8; frame.len()];
        let (w, r) = tokio::time::timeout(WAIT, async {
            tokio::join!(client.write_all(&frame), backend.read_exact(&mut got))
        })
        .await
        .expect("the mebibyte went through in time");
        w.unwrap();
        r.unwrap();
        assert!(got == frame, "the relay changed the bytes");
        relay.abort();
        largest_read.load(Ordering::Relaxed)
    }

    #[tokio::test]
    async fn relays_read_64_kib_while_the_budget_lasts_and_16_after() {
        let plenty: &'static ReadBudget = Box::leak(Box::new(ReadBudget::new(32 << 20)));
        assert_eq!(largest_read_for_a_mebibyte(plenty).await, READ_BIG);
        let spent: &'static ReadBudget = Box::leak(Box::new(ReadBudget::new(0)));
        assert_eq!(largest_read_for_a_mebibyte(spent).await, READ_SMALL);
        assert_eq!(spent.held_over(), 0, "small reads are never counted");
    }

    /// A backend that stops reading: the relay holds at most one big read's excess in
    /// that direction, counted in the budget, and gives it back when it ends.
    #[tokio::test]
    async fn a_stalled_sink_is_counted_and_given_back() {
        let budget: &'static ReadBudget = Box::leak(Box::new(ReadBudget::new(32 << 20)));
        let Relayed {
            mut client,
            backend,
            relay,
            ..
        } = relay_with(budget);
        let writer = tokio::spawn(async move {
            let _ = client.write_all(&zeros_frame(4 << 20)).await;
            client
        });
        tokio::time::timeout(WAIT, async {
            while budget.held_over() == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the relay held bytes for the stalled backend");
        assert!(
            budget.held_over() <= READ_BIG - READ_SMALL,
            "{}",
            budget.held_over()
        );
        writer.abort();
        relay.abort();
        let _ = relay.await;
        assert_eq!(budget.held_over(), 0, "the relay gave its charge back");
        drop(backend);
    }

    #[test]
    fn a_charge_counts_only_what_is_held_above_16_kib_and_gives_it_back() {
        let b = ReadBudget::new(1 << 20);
        let (mut up, mut down) = (Charge::default(), Charge::default());
        up.settle(&b, READ_SMALL);
        assert_eq!((up.0, b.held_over()), (0, 0), "16 KiB or less is free");
        up.settle(&b, READ_BIG);
        down.settle(&b, READ_SMALL + 100);
        assert_eq!(
            b.held_over(),
            READ_BIG - READ_SMALL + 100,
            "both directions"
        );
        up.settle(&b, READ_SMALL + 10);
        assert_eq!(up.0, 10, "part written: the charge shrinks");
        assert_eq!(b.held_over(), 110);
        up.give_back(&b);
        down.give_back(&b);
        assert_eq!((up.0, down.0, b.held_over()), (0, 0, 0));
        down.give_back(&b);
        assert_eq!(b.held_over(), 0, "given back once");
    }

    #[test]
    fn big_reads_until_the_budget_is_spent_then_small() {
        let b = ReadBudget::new(100 << 10);
        assert_eq!(b.read_size(), READ_BIG);
        // Holding 16 KiB or less costs nothing.
        assert_eq!(b.settle(0, READ_SMALL), 0);
        assert_eq!(b.held_over(), 0);
        let one = b.settle(0, READ_BIG);
        assert_eq!(one as usize, READ_BIG - READ_SMALL);
        let two = b.settle(0, READ_BIG);
        assert_eq!(b.held_over(), 2 * (READ_BIG - READ_SMALL));
        assert_eq!(b.read_size(), READ_BIG);
        let three = b.settle(0, READ_BIG);
        assert!(b.held_over() >= 100 << 10);
        assert_eq!(b.read_size(), READ_SMALL);
        // Part written: the charge shrinks; all written: it is gone.
        let two = b.settle(two, READ_SMALL + 10);
        assert_eq!(two, 10);
        assert_eq!(b.read_size(), READ_BIG);
        for c in [one, two, three] {
            b.settle(c, 0);
        }
        assert_eq!(b.held_over(), 0);
    }
}
