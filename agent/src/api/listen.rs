//! The accept loops of the two listeners, each with its own connection budget, so a flood on
//! the TCP side never takes the operator's Unix socket.
//!
//! Per connection: hyper's header read timeout (a client must send a request's headers in
//! time), an idle timeout (no request in flight and no byte moved either way; a `logs -f`
//! stream that carries data moves bytes, so it stays), a cap on open connections (and per
//! client address on TCP): a connection over the cap is accepted and closed at once, so it
//! holds no fd. When a burst of connections is gone, freed heap goes back to the kernel
//! (`malloc_trim`), so RSS returns after a flood.

use std::{
    collections::HashMap,
    net::IpAddr,
    pin::pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{Router, extract::Request};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, UnixListener},
    sync::{Semaphore, watch},
};
use tower::ServiceExt as _;
use tracing::{debug, info, warn};

/// A listener's limits (from `[http]`).
#[derive(Debug, Clone)]
pub struct ListenLimits {
    pub max_connections: usize,
    /// TCP only.
    pub max_per_ip: Option<usize>,
    pub header_read_timeout: Duration,
    /// `None`: connections stay open until the client closes them (the Unix socket).
    pub idle_timeout: Option<Duration>,
}

/// Open connections of one listener: the cap and, on TCP, the count per client address.
struct Budget {
    name: &'static str,
    limits: ListenLimits,
    open: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Most connections open at once since the last trim.
    peak: AtomicUsize,
}

/// Held while a connection is open.
struct Slot {
    budget: Arc<Budget>,
    ip: Option<IpAddr>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Budget {
    fn new(name: &'static str, limits: ListenLimits) -> Arc<Self> {
        Arc::new(Self {
            name,
            open: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            per_ip: Mutex::new(HashMap::new()),
            peak: AtomicUsize::new(0),
        })
    }

    fn take(self: &Arc<Self>, ip: Option<IpAddr>) -> Option<Slot> {
        let permit = self.open.clone().try_acquire_owned().ok()?;
        if let (Some(ip), Some(max)) = (ip, self.limits.max_per_ip) {
            let mut map = self.per_ip.lock().expect("lock");
            let n = map.entry(ip).or_default();
            if *n >= max {
                return None;
            }
            *n += 1;
        }
        let open = self.limits.max_connections - self.open.available_permits();
        self.peak.fetch_max(open, Ordering::Relaxed);
        Some(Slot {
            budget: self.clone(),
            ip,
            _permit: permit,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let b = &self.budget;
        if let Some(ip) = self.ip {
            let mut map = b.per_ip.lock().expect("lock");
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
            if map.is_empty() {
                // Give the map's table back too.
                map.shrink_to_fit();
            }
        }
        // This slot's permit is still held: 1 open means this was the last connection.
        let open = b.limits.max_connections - b.open.available_permits();
        if open <= 1 && b.peak.swap(0, Ordering::Relaxed) >= 64 {
            debug!(
                listener = b.name,
                "connection burst over: returning freed memory"
            );
            trim_heap();
        }
    }
}

/// Returns the allocator's free memory to the kernel (glibc keeps it otherwise).
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Serves `app` on the TCP listener until `down` turns true.
pub async fn serve_tcp(
    listener: TcpListener,
    app: Router,
    limits: ListenLimits,
    down: watch::Receiver<bool>,
) {
    let budget = Budget::new("tcp", limits);
    let mut stop = down.clone();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => { accept_error("tcp", e).await; continue; }
            },
            _ = stopped(&mut stop) => break,
        };
        let Some(slot) = budget.take(Some(peer.ip())) else {
            // Over the cap: closing now frees the fd at once.
            debug!(%peer, "TCP connection over the cap: closed");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, app.clone(), slot, down.clone()));
    }
    drain(&budget).await;
}

/// Serves `app` on the Unix socket until `down` turns true.
pub async fn serve_unix(
    listener: UnixListener,
    app: Router,
    limits: ListenLimits,
    down: watch::Receiver<bool>,
) {
    let budget = Budget::new("unix", limits);
    let mut stop = down.clone();
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => { accept_error("unix", e).await; continue; }
            },
            _ = stopped(&mut stop) => break,
        };
        let Some(slot) = budget.take(None) else {
            warn!("API socket connection over http.max_socket_connections: closed");
            drop(stream);
            continue;
        };
        tokio::spawn(connection(stream, app.clone(), slot, down.clone()));
    }
    drain(&budget).await;
}

/// Returns once the shutdown flag is set (holding no borrow of it across an await).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|d| *d).await;
}

/// EMFILE and the like: wait a moment instead of spinning (connections will close).
async fn accept_error(listener: &str, e: std::io::Error) {
    warn!(listener, error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Waits (at most 2 s) for the open connections to finish after a shutdown.
async fn drain(budget: &Budget) {
    let all = budget.limits.max_connections as u32;
    if tokio::time::timeout(Duration::from_secs(2), budget.open.acquire_many(all))
        .await
        .is_err()
    {
        info!(listener = budget.name, "connections still open at shutdown");
    }
}

async fn connection<IO>(io: IO, app: Router, slot: Slot, mut down: watch::Receiver<bool>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = slot.budget.limits.clone();
    let activity = Arc::new(Activity::default());
    let io = Tracked {
        inner: io,
        activity: activity.clone(),
    };
    let in_flight = activity.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let app = app.clone();
        let guard = InFlight::enter(in_flight.clone());
        async move {
            let res = app.oneshot(req.map(axum::body::Body::new)).await;
            drop(guard);
            res
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut conn = pin!(builder.serve_connection(TokioIo::new(io), service));
    let idle = limits.idle_timeout;
    loop {
        let wait = match idle {
            Some(t) => activity.until_idle(t),
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(error = %e, "connection ended");
                }
                break;
            }
            _ = tokio::time::sleep(wait) => {
                if idle.is_some_and(|t| activity.until_idle(t).is_zero()) {
                    debug!("idle connection closed");
                    break;
                }
            }
            _ = stopped(&mut down) => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.as_mut()).await;
                break;
            }
        }
    }
    drop(slot);
}

/// When a connection last moved a byte, and how many requests it has in flight.
struct Activity {
    start: Instant,
    /// Milliseconds since `start`.
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }
}

impl Activity {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Time left before the connection counts as idle; zero once it is.
    fn until_idle(&self, timeout: Duration) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return timeout;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        let since = self.start.elapsed().saturating_sub(last);
        timeout.saturating_sub(since)
    }
}

/// Counts a request as in flight until its response head is ready (a slow change through the
/// API is not idleness); the body's bytes then count as activity.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(a: Arc<Activity>) -> Self {
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(a)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The connection's IO, noting every byte moved.
struct Tracked<IO> {
    inner: IO,
    activity: Arc<Activity>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}
