//! The bodies a forwarded exchange streams, never buffered: the client's request body
//! on its way to the pod (bounded by `--max-request-body`, cut when it stalls), the
//! pod's response on its way to the client (cut when it stalls, ended at a chunk
//! boundary when its tenant moves or the drain ends), and [`ProxyBody`], every answer
//! the listener sends.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;

use crate::data::relay::drain::DrainReason;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Instant;

use crate::data::http::error::ProxyError;
use crate::data::http::in_flight::InFlight;
use crate::data::shared::coarse::Deadline;
use crate::data::upstream::pool::pooled::PooledBody;
use crate::data::upstream::pool::BoxError;

/// Every answer on the listener: the router's own (a refusal, a page, a 101), a
/// backend's refusal of an upgrade, or a forwarded response.
pub(crate) enum ProxyBody {
    Full(Full<Bytes>),
    Backend(Incoming),
    /// Boxed: the answer is moved a dozen times on its way out (each step of the forward
    /// path returns it, then hyper's dispatch), and unboxed its 300 bytes were copied
    /// each time, some 3 KB per request, against one allocation.
    Forwarded(Box<ForwardBody>),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Full(b) => Pin::new(b).poll_frame(cx).map_err(|e| match e {}),
            Self::Backend(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::Forwarded(b) => Pin::new(&mut **b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(b) => b.is_end_stream(),
            Self::Backend(b) => b.is_end_stream(),
            Self::Forwarded(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(b) => b.size_hint(),
            Self::Backend(b) => b.size_hint(),
            Self::Forwarded(b) => b.size_hint(),
        }
    }
}

/// Why a body was cut by the router, as [`ProxyError`]s name it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Cut {
    #[error("body larger than {0} bytes")]
    TooLarge(u64),
    #[error("no data for {0:?}")]
    Stalled(Duration),
}

/// What the client's body came to, read by the forward step: whether it was cut (the
/// body's own error does not survive hyper's client as a value), whether it has ended,
/// and when it last moved, so the wait for the pod's answer starts once the client has
/// stopped sending.
#[derive(Debug)]
pub(crate) struct BodyOutcome {
    cut: AtomicU8,
    ended: std::sync::atomic::AtomicBool,
    since: Instant,
    /// Milliseconds from `since` to the body's last stamp.
    last_ms: std::sync::atomic::AtomicU64,
    /// A frame came since the last stamp: set per frame, without reading the clock.
    fresh: std::sync::atomic::AtomicBool,
}

const TOO_LARGE: u8 = 1;
const STALLED: u8 = 2;

impl BodyOutcome {
    fn new(ended: bool, since: Instant) -> Self {
        Self {
            cut: AtomicU8::new(0),
            ended: ended.into(),
            since,
            last_ms: 0.into(),
            fresh: false.into(),
        }
    }

    /// Whether the client has sent its whole body.
    pub(crate) fn ended(&self) -> bool {
        self.ended.load(Ordering::Relaxed)
    }

    /// When the body last moved (or the request began), as of its last [`stamp`]:
    /// frames read back to back are stamped once, when the body next waits or ends,
    /// or when a wait on it checks.
    ///
    /// [`stamp`]: Self::stamp
    pub(crate) fn last_moved(&self) -> Instant {
        self.since + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// A frame came: noted, not timed (see [`stamp`](Self::stamp)).
    fn frame(&self) {
        self.fresh.store(true, Ordering::Relaxed);
    }

    /// Times the frames noted since the last stamp, as of now: the body's reader
    /// stamps when it waits or the body ends, and the wait for the pod's answer when
    /// its timer fires, so an upload read without a pause (its pod reading slowly,
    /// a frame always ready) still counts as moving.
    pub(crate) fn stamp(&self) {
        if self.fresh.swap(false, Ordering::Relaxed) {
            let ms = self.since.elapsed().as_millis() as u64;
            self.last_ms.store(ms, Ordering::Relaxed);
        }
    }

    /// The client's answer, if its body was cut.
    pub(crate) fn error(&self, limit: u64, idle: Option<Duration>) -> Option<ProxyError> {
        match self.cut.load(Ordering::Relaxed) {
            TOO_LARGE => Some(ProxyError::BodyTooLarge { limit }),
            STALLED => Some(ProxyError::BodyStalled {
                idle: idle.unwrap_or_default(),
            }),
            _ => None,
        }
    }
}

/// What the forward step keeps of the client's body: the body's outcome, shared with it
/// while it streams. A body that had ended before the request was forwarded (a GET's)
/// shares nothing: it goes to the pod as an empty one, and its outcome is the step's.
pub(crate) enum Outcome {
    Ended(BodyOutcome),
    Streaming(Arc<BodyOutcome>),
}

impl Outcome {
    /// The outcome of a body already ended at `since`.
    pub(crate) fn ended(since: Instant) -> Self {
        Self::Ended(BodyOutcome::new(true, since))
    }
}

impl std::ops::Deref for Outcome {
    type Target = BodyOutcome;

    fn deref(&self) -> &BodyOutcome {
        match self {
            Self::Ended(o) => o,
            Self::Streaming(o) => o,
        }
    }
}

/// A stall timer, armed only while the body waits: a frame that comes moves its
/// deadline (the body's last frame, which the body keeps) without touching the timer;
/// the timer checks it when it fires. A coarse deadline (`shared::coarse`), as the wait
/// for the answer's head is: `--http-idle-timeout` ends up to 100 ms late, never early.
struct Stall {
    idle: Duration,
    timer: Option<Deadline>,
}

impl Stall {
    fn new(idle: Option<Duration>) -> Option<Self> {
        idle.map(|idle| Self { idle, timer: None })
    }

    /// The idle time, once a body waiting on `stall` (if it has one) has waited that
    /// long since `last`, its last frame.
    fn expired(stall: &mut Option<Self>, last: Instant, cx: &mut Context<'_>) -> Option<Duration> {
        let s = stall.as_mut()?;
        s.poll_expired(last, cx).is_ready().then_some(s.idle)
    }

    /// Ready once the body has waited `idle` since `last`.
    fn poll_expired(&mut self, last: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = last + self.idle;
        let timer = self.timer.get_or_insert_with(|| Deadline::until(deadline));
        timer.reset(deadline);
        Pin::new(timer).poll(cx)
    }
}

/// The client's request body on its way to the pod.
pub(crate) struct ClientBody<B> {
    inner: B,
    limit: u64,
    read: u64,
    stall: Option<Stall>,
    outcome: Arc<BodyOutcome>,
}

impl<B: Body> ClientBody<B> {
    /// The body of a request that began at `since`.
    pub(crate) fn new(
        inner: B,
        limit: u64,
        idle: Option<Duration>,
        since: Instant,
    ) -> (Self, Arc<BodyOutcome>) {
        let outcome = Arc::new(BodyOutcome::new(inner.is_end_stream(), since));
        let body = Self {
            inner,
            limit,
            read: 0,
            stall: Stall::new(idle),
            outcome: outcome.clone(),
        };
        (body, outcome)
    }

    /// The whole body is in: the pod's answer may now take the idle time from its
    /// last frame.
    fn end(&self) {
        self.outcome.stamp();
        self.outcome.ended.store(true, Ordering::Relaxed);
    }

    fn cut(&self, why: Cut) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let code = match why {
            Cut::TooLarge(_) => TOO_LARGE,
            Cut::Stalled(_) => STALLED,
        };
        self.outcome.cut.store(code, Ordering::Relaxed);
        Poll::Ready(Some(Err(why.into())))
    }
}

impl<B> Body for ClientBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.read += data.len() as u64;
                    if this.read > this.limit {
                        return this.cut(Cut::TooLarge(this.limit));
                    }
                }
                this.outcome.frame();
                if this.inner.is_end_stream() {
                    this.end();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.end();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Pending => {
                this.outcome.stamp();
                match Stall::expired(&mut this.stall, this.outcome.last_moved(), cx) {
                    Some(idle) => this.cut(Cut::Stalled(idle)),
                    None => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What ends a forwarded request early on the router's own initiative: the tenant's
/// move (`--reroute-drain`) or the drain's end.
pub(crate) type Stop = Pin<Box<dyn Future<Output = Ended> + Send>>;

/// Why the router ended a forwarded request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The drain's grace period is over.
    Drained,
    /// Its tenant now routes to another pod.
    Moved,
}

impl Ended {
    /// The drain scheduler's reason, for an answer: its pod left or its tenant moved is
    /// a move (the client retries to the tenant's pod now); the shutdown is the drain.
    pub(crate) fn drained(why: DrainReason) -> Self {
        match why {
            DrainReason::Shutdown => Self::Drained,
            DrainReason::PodGone | DrainReason::Rerouted => Self::Moved,
        }
    }
}

impl From<Ended> for ProxyError {
    fn from(why: Ended) -> Self {
        match why {
            Ended::Drained => Self::ShuttingDown,
            Ended::Moved => Self::TenantMoved,
        }
    }
}

/// The pod's response on its way to the client. It holds the request's places (`held`)
/// until it is dropped: a request counts until its answer has been sent.
pub(crate) struct ForwardBody {
    inner: PooledBody,
    stall: Option<Stall>,
    /// When its last frame came (or the answer's head), as seen when it next waited.
    last: Instant,
    /// A frame came since it last waited: an answer read in one go reads no clock.
    moved: bool,
    /// `None` once it has ended the answer.
    stop: Option<Stop>,
    _held: InFlight,
}

impl ForwardBody {
    pub(crate) fn new(
        inner: PooledBody,
        idle: Option<Duration>,
        stop: Stop,
        held: InFlight,
        answered: Instant,
    ) -> Self {
        Self {
            inner,
            stall: Stall::new(idle),
            last: answered,
            moved: false,
            stop: Some(stop),
            _held: held,
        }
    }
}

impl Body for ForwardBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        // Between two frames, never inside one: the client gets whole events and a
        // clean end (the last chunk), and reconnects where it now belongs.
        let Some(stop) = this.stop.as_mut() else {
            return Poll::Ready(None);
        };
        if stop.as_mut().poll(cx).is_ready() {
            this.stop = None;
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.moved = true;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => Poll::Ready(other.map(|r| r.map_err(Into::into))),
            Poll::Pending => {
                if std::mem::take(&mut this.moved) && this.stall.is_some() {
                    this.last = Instant::now();
                }
                match Stall::expired(&mut this.stall, this.last, cx) {
                    Some(idle) => Poll::Ready(Some(Err(Cut::Stalled(idle).into()))),
                    None => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stop.is_none() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
