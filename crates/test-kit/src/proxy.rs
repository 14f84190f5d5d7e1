//! A TCP proxy a test can cut: how tests take PostgreSQL or Redis "down" for one service
//! without stopping the server that parallel tests share. It also counts round trips, for
//! tests that pin down how many a protocol exchange costs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy to `target`.
pub struct TcpProxy {
    /// Port it listens on (127.0.0.1).
    pub port: u16,
    up: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
    counter: Arc<AtomicU64>,
    turns: Arc<Turns>,
    task: tokio::task::JoinHandle<()>,
}

/// Round trips seen across all connections: a client's bytes that follow an answer from the
/// server (or open the conversation) start one; more bytes before the next answer (a pipelined
/// request, a request split over several writes) belong to the same.
struct Turns {
    round_trips: AtomicU64,
    /// Whether the server spoke last, on the connection that spoke last (tests that count
    /// use one connection).
    answered: AtomicBool,
}

impl TcpProxy {
    /// Starts proxying 127.0.0.1:<port> → `target` (`host:port`).
    ///
    /// # Panics
    /// When it cannot bind.
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(AtomicBool::new(true));
        let (generation, _) = watch::channel(0u64);
        let counter = Arc::new(AtomicU64::new(0));
        let turns = Arc::new(Turns {
            round_trips: AtomicU64::new(0),
            answered: AtomicBool::new(true),
        });
        let target = target.to_owned();
        let task = {
            let up = up.clone();
            let generation = generation.clone();
            let turns = turns.clone();
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    // Subscribe before looking at `up`: `down` clears `up` and then cuts, so a
                    // connection that saw `up` is certain to hear the cut. (The other order let
                    // a connection accepted at the instant of a cut live through the outage.)
                    let mut cut = generation.subscribe();
                    if !up.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let target = target.clone();
                    let turns = turns.clone();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = TcpStream::connect(&target).await else {
                            return;
                        };
                        let (mut client_rx, mut client_tx) = inbound.split();
                        let (mut server_rx, mut server_tx) = outbound.split();
                        let asks = pump(&mut client_rx, &mut server_tx, || {
                            if turns.answered.swap(false, Ordering::SeqCst) {
                                turns.round_trips.fetch_add(1, Ordering::SeqCst);
                            }
                        });
                        let answers = pump(&mut server_rx, &mut client_tx, || {
                            turns.answered.store(true, Ordering::SeqCst);
                        });
                        tokio::select! {
                            _ = async { tokio::join!(asks, answers) } => {}
                            _ = cut.changed() => {}
                        }
                    });
                }
            })
        };
        Self {
            port,
            up,
            generation,
            counter,
            turns,
            task,
        }
    }

    /// Round trips so far: client bytes sent after the server last answered, counted once per
    /// answer. Meaningful for one connection at a time.
    #[must_use]
    pub fn round_trips(&self) -> u64 {
        self.turns.round_trips.load(Ordering::SeqCst)
    }

    /// A proxy to the test PostgreSQL server.
    pub async fn postgres() -> Self {
        Self::start(&host_port(&crate::database_url(), "127.0.0.1:5432")).await
    }

    /// A proxy to the test Redis server.
    pub async fn redis() -> Self {
        Self::start(&host_port(&crate::redis_url(), "127.0.0.1:6379")).await
    }

    /// Cuts every open connection and refuses new ones.
    pub fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        let n = self.counter.fetch_add(1, Ordering::SeqCst) + 1;
        let _ = self.generation.send(n);
    }

    /// Accepts connections again.
    pub fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// `postgres://…` URL through the proxy, for the test database.
    #[must_use]
    pub fn postgres_url(&self) -> String {
        let base = crate::database_url();
        let db = base.rsplit('/').next().unwrap_or("test");
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// `redis://…` URL through the proxy.
    #[must_use]
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.down();
        self.task.abort();
    }
}

/// Copies `from` to `to` until either side closes, calling `seen` on each chunk read before it
/// is forwarded (so a count is updated before the other side can answer it).
async fn pump(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    seen: impl Fn(),
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        seen();
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// The `host:port` of a `scheme://[user@]host:port[/path]` URL.
fn host_port(url: &str, default: &str) -> String {
    url.split_once("://")
        .map(|(_, rest)| rest)
        .and_then(|rest| rest.split('/').next())
        .map(|auth| auth.rsplit('@').next().unwrap_or(auth).to_owned())
        .filter(|hp| hp.contains(':'))
        .unwrap_or_else(|| default.to_owned())
}
