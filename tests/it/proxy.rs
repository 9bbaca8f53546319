//! A TCP proxy between the node and its RPC endpoint, for injecting chain faults: the endpoint
//! goes away (connections cut, new ones closed at once), hangs (connections kept open and
//! silent, as a dead middlebox would; they stay dead when the endpoint comes back), answers
//! slowly, or loses requests that contain a given string (a broadcast that never arrives). It
//! can also be pointed at another endpoint (the RPC node restarted elsewhere).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use parking_lot::Mutex;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Forwards everything.
    Open,
    /// Closes every connection, and every new one at once: the endpoint is down.
    Cut,
    /// Keeps connections open but forwards nothing, in either direction: the endpoint hangs.
    /// Connections hung this way stay hung after the proxy opens again.
    Hang,
}

#[derive(Debug)]
struct Shared {
    target: Mutex<SocketAddr>,
    mode: watch::Sender<Mode>,
    delay_ms: AtomicU64,
    /// Requests containing this are lost: the connection is closed before they are forwarded.
    lose: Mutex<Option<Vec<u8>>>,
    lost: AtomicUsize,
    /// Strings whose forwarded requests are counted.
    counted: Mutex<Vec<(Vec<u8>, Arc<AtomicUsize>)>>,
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The proxy. Dropping it closes every connection.
#[derive(Debug)]
pub(crate) struct RpcProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl RpcProxy {
    /// A proxy on a free loopback port forwarding to `target` (an `http://host:port` URL).
    pub(crate) async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared {
            target: Mutex::new(socket_of(target)),
            mode: watch::Sender::new(Mode::Open),
            delay_ms: AtomicU64::new(0),
            lose: Mutex::new(None),
            lost: AtomicUsize::new(0),
            counted: Mutex::new(Vec::new()),
        });
        let accepting = Arc::clone(&shared);
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                tokio::spawn(serve(inbound, Arc::clone(&accepting)));
            }
        });
        Self { addr, shared, accept }
    }

    /// The URL to give the node instead of the endpoint's.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn set_mode(&self, mode: Mode) {
        self.shared.mode.send_replace(mode);
    }

    /// Delays every chunk of every answer by `delay`.
    pub(crate) fn set_delay(&self, delay: Duration) {
        self.shared.delay_ms.store(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// Loses every request containing `needle` (none with `None`).
    pub(crate) fn lose_requests_with(&self, needle: Option<&str>) {
        *self.shared.lose.lock() = needle.map(|n| n.as_bytes().to_vec());
    }

    /// How many requests were lost.
    pub(crate) fn lost(&self) -> usize {
        self.shared.lost.load(Ordering::SeqCst)
    }

    /// A counter of the forwarded requests containing `needle`, from now on.
    pub(crate) fn count_requests_with(&self, needle: &str) -> Arc<AtomicUsize> {
        let counter = Arc::new(AtomicUsize::new(0));
        self.shared.counted.lock().push((needle.as_bytes().to_vec(), Arc::clone(&counter)));
        counter
    }

    /// Forwards new connections to `target` (an `http://host:port` URL).
    pub(crate) fn retarget(&self, target: &str) {
        *self.shared.target.lock() = socket_of(target);
    }
}

impl Drop for RpcProxy {
    fn drop(&mut self) {
        self.set_mode(Mode::Cut);
        self.accept.abort();
    }
}

fn socket_of(url: &str) -> SocketAddr {
    let hostport = url.trim_start_matches("http://").trim_end_matches('/');
    let hostport = hostport.replace("localhost", "127.0.0.1");
    hostport.parse().unwrap_or_else(|e| panic!("{url} is not http://ip:port: {e}"))
}

/// How a forwarded connection ended.
enum End {
    Closed,
    ModeChanged,
}

async fn serve(mut inbound: TcpStream, shared: Arc<Shared>) {
    let mut mode = shared.mode.subscribe();
    let current = *mode.borrow_and_update();
    match current {
        Mode::Cut => return,
        Mode::Hang => {
            // Read and drop whatever arrives, answer nothing, until cut.
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                tokio::select! {
                    read = inbound.read(&mut buf) => if read.map_or(true, |n| n == 0) { return },
                    _ = mode.wait_for(|m| *m == Mode::Cut) => return,
                }
            }
        }
        Mode::Open => {}
    }
    let target = *shared.target.lock();
    let Ok(outbound) = TcpStream::connect(target).await else { return };
    let (mut client_read, mut client_write) = inbound.into_split();
    let (mut server_read, mut server_write) = outbound.into_split();
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            if shared.lose.lock().as_deref().is_some_and(|needle| contains(chunk, needle)) {
                shared.lost.fetch_add(1, Ordering::SeqCst);
                return;
            }
            for (needle, counter) in shared.counted.lock().iter() {
                if contains(chunk, needle) {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            }
            if server_write.write_all(chunk).await.is_err() {
                return;
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let delay = shared.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let changed = mode.clone();
    let end = tokio::select! {
        () = up => End::Closed,
        () = down => End::Closed,
        _ = async { let mut m = changed; m.wait_for(|m| *m != Mode::Open).await.map(|_| ()) } => End::ModeChanged,
    };
    if let End::ModeChanged = end
        && *mode.borrow() == Mode::Hang
    {
        // Keep both sockets open and silent until cut, whatever happens meanwhile.
        let _ = mode.wait_for(|m| *m == Mode::Cut).await;
    }
    drop((client_read, client_write, server_read, server_write));
}
