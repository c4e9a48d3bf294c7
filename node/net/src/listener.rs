//! The accept loop: limits, implicit TLS, one task per session, graceful shutdown.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::proxy::ProxyProtocol;
use crate::stream::SessionStream;

/// How long an implicit-TLS client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Connection limits of one listener.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Open sessions in total.
    pub max_total: usize,
    /// Open sessions per client IP address.
    pub max_per_ip: usize,
    /// New connections per client IP address per minute (0: no limit).
    pub max_per_ip_per_minute: u32,
    /// Clients the per-minute limit does not apply to (monitoring, your own relays).
    pub rate_exempt: Arc<[ipnet::IpNet]>,
}

impl ConnectionLimits {
    /// Limits on open sessions only (no connection rate limit).
    pub fn open_sessions(max_total: usize, max_per_ip: usize) -> Self {
        Self { max_total, max_per_ip, max_per_ip_per_minute: 0, rate_exempt: Arc::from([]) }
    }
}

/// Most client addresses whose connection rate is tracked; past it, finished windows are
/// dropped.
const MAX_RATE_ENTRIES: usize = 100_000;
/// The connection-rate window.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// Why a connection was refused before its session started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The listener has `max_total` sessions open.
    TooManyConnections,
    /// The client's address has `max_per_ip` sessions open.
    TooManyFromAddress,
    /// The node is shutting down.
    ShuttingDown,
}

/// A protocol's side of a listener.
pub trait SessionHandler: Send + Sync + 'static {
    /// Serves one accepted connection until it ends. `shutdown` turns true when the node
    /// stops: the session should say goodbye (SMTP 421, IMAP BYE) and return.
    fn handle(
        &self,
        stream: SessionStream,
        peer: SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) -> BoxFuture<'static, ()>;

    /// Tells a refused client why (for example an SMTP `421`) before the connection closes.
    fn refuse(&self, stream: SessionStream, refusal: Refusal) -> BoxFuture<'static, ()>;
}

/// Counts open sessions, in total and per address.
#[derive(Default)]
struct Occupancy {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    /// Connections per client address in its current minute: (window start, count).
    rates: HashMap<IpAddr, (std::time::Instant, u32)>,
}

impl Occupancy {
    /// Counts a connection from `ip`; false when it exceeds the per-minute limit.
    fn within_rate(&mut self, ip: IpAddr, limits: &ConnectionLimits) -> bool {
        if limits.max_per_ip_per_minute == 0 || limits.rate_exempt.iter().any(|network| network.contains(&ip)) {
            return true;
        }
        let now = std::time::Instant::now();
        if self.rates.len() >= MAX_RATE_ENTRIES {
            self.rates.retain(|_, (start, _)| now.duration_since(*start) < RATE_WINDOW);
            if self.rates.len() >= MAX_RATE_ENTRIES / 2 {
                // A flood of distinct addresses: start every window afresh rather than scan
                // a full table on every accept.
                self.rates.clear();
            }
        }
        let (start, count) = self.rates.entry(crate::client_network(ip)).or_insert((now, 0));
        if now.duration_since(*start) >= RATE_WINDOW {
            *start = now;
            *count = 0;
        }
        *count += 1;
        *count <= limits.max_per_ip_per_minute
    }
}

/// Releases a session's place when the session ends.
struct Seat {
    occupancy: Arc<Mutex<Occupancy>>,
    ip: IpAddr,
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut occupancy = self.occupancy.lock().expect("occupancy lock");
        occupancy.total -= 1;
        if let Some(count) = occupancy.per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                occupancy.per_ip.remove(&self.ip);
            }
        }
    }
}

/// A running listener; [`ListenerHandle::stopped`] waits until its sessions have ended.
pub struct ListenerHandle {
    name: &'static str,
    sessions: SessionCount,
    accept_task: tokio::task::JoinHandle<()>,
}

/// Reads how many sessions a listener has open, for as long as it runs (and after).
#[derive(Clone)]
pub struct SessionCount(Arc<Mutex<Occupancy>>);

impl SessionCount {
    /// Returns the number of open sessions.
    pub fn open(&self) -> usize {
        self.0.lock().expect("occupancy lock").total
    }
}

impl ListenerHandle {
    /// Waits (up to `grace`) for the accept loop and every session to end after shutdown.
    pub async fn stopped(self, grace: Duration) {
        let _ = self.accept_task.await;
        let deadline = tokio::time::Instant::now() + grace;
        while self.sessions.open() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A reader of the open session count that outlives this handle (for metrics).
    pub fn session_count(&self) -> SessionCount {
        self.sessions.clone()
    }

    /// The listener's service name (`smtp`, `imaps`, ...).
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// What a listener needs to turn an accepted connection into a session.
struct Admission {
    name: &'static str,
    implicit_tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
    handler: Arc<dyn SessionHandler>,
    occupancy: Arc<Mutex<Occupancy>>,
    shutdown: watch::Receiver<bool>,
}

impl Admission {
    /// Applies the limits to the client at `peer` and starts its session in its own task
    /// (with implicit TLS, the handshake runs first, in that task), or refuses it.
    fn admit(&self, tcp: TcpStream, peer: SocketAddr) {
        // On a dual-stack listener IPv4 clients arrive as ::ffff:a.b.c.d; every limit,
        // block and check must see them as the IPv4 addresses they are.
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let (name, limits) = (self.name, &self.limits);
        let refusal = {
            let mut occupancy = self.occupancy.lock().expect("occupancy lock");
            let from_ip = occupancy.per_ip.get(&peer.ip()).copied().unwrap_or(0);
            if occupancy.total >= limits.max_total {
                Some(Refusal::TooManyConnections)
            } else if from_ip >= limits.max_per_ip || !occupancy.within_rate(peer.ip(), limits) {
                Some(Refusal::TooManyFromAddress)
            } else {
                occupancy.total += 1;
                *occupancy.per_ip.entry(peer.ip()).or_insert(0) += 1;
                None
            }
        };
        let handler = self.handler.clone();
        if let Some(refusal) = refusal {
            tracing::info!(listener = name, %peer, ?refusal, "connection refused");
            // Refusals with implicit TLS cannot be explained in cleartext: just close.
            if self.implicit_tls.is_none() {
                tokio::spawn(handler.refuse(SessionStream::Plain(tcp), refusal));
            }
            return;
        }
        let seat = Seat { occupancy: self.occupancy.clone(), ip: peer.ip() };
        let implicit_tls = self.implicit_tls.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let _seat = seat;
            let mut stream = SessionStream::Plain(tcp);
            if let Some(acceptor) = implicit_tls {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.start_tls(&acceptor)).await {
                    Ok(Ok(tls)) => stream = tls,
                    Ok(Err(error)) => {
                        tracing::debug!(listener = name, %peer, %error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(listener = name, %peer, "TLS handshake timed out");
                        return;
                    }
                }
            }
            handler.handle(stream, peer, shutdown).await;
        });
    }
}

/// Accepts connections on `listener` until `shutdown` turns true. Each session runs in its
/// own task; with `implicit_tls` the TLS handshake runs first, in that task. Connections
/// from peers `proxy` trusts start with a PROXY v2 header naming the real client, which
/// the limits and the session then see.
pub fn serve(
    listener: TcpListener,
    name: &'static str,
    implicit_tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
    proxy: ProxyProtocol,
    handler: Arc<dyn SessionHandler>,
    shutdown: watch::Receiver<bool>,
) -> ListenerHandle {
    let sessions = Arc::new(Mutex::new(Occupancy::default()));
    let mut stop = shutdown.clone();
    let (mut clients, acceptor) = accept_clients(listener, name, proxy, shutdown.clone());
    let admission = Admission { name, implicit_tls, limits, handler, occupancy: sessions.clone(), shutdown };
    let accept_task = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = clients.recv() => accepted,
                () = stopped(&mut stop) => None,
            };
            let Some((tcp, client)) = accepted else { break };
            let _ = tcp.set_nodelay(true);
            admission.admit(tcp, client);
        }
        // The listening socket is closed once the handle says the listener stopped.
        drop(clients);
        let _ = acceptor.await;
    });
    ListenerHandle { name, sessions: SessionCount(sessions), accept_task }
}

/// Accepts connections on `listener` until `shutdown` turns true (or the receiver is
/// dropped) and passes each on with its client's address: for peers `proxy` trusts, the
/// one their PROXY v2 header names, read in a task of its own so a slow proxy never stalls
/// accepting (a connection without a valid header is dropped). Every listener, mail and
/// HTTP, accepts through this. The task it returns ends (and closes the listening socket)
/// once accepting stops.
pub fn accept_clients(
    listener: TcpListener,
    name: &'static str,
    proxy: ProxyProtocol,
    mut shutdown: watch::Receiver<bool>,
) -> (tokio::sync::mpsc::Receiver<(TcpStream, SocketAddr)>, tokio::task::JoinHandle<()>) {
    let (admit, clients) = tokio::sync::mpsc::channel(1024);
    let acceptor = tokio::spawn(async move {
        loop {
            let (mut tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(listener = name, %error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = stopped(&mut shutdown) => break,
                () = admit.closed() => break,
            };
            if !proxy.trusts(peer.ip()) {
                if admit.send((tcp, peer)).await.is_err() {
                    break;
                }
                continue;
            }
            let admit = admit.clone();
            tokio::spawn(async move {
                match crate::proxy::read_header(&mut tcp).await {
                    Ok(client) => drop(admit.send((tcp, client.unwrap_or(peer))).await),
                    Err(error) => tracing::info!(listener = name, %peer, %error, "proxy connection dropped"),
                }
            });
        }
        tracing::debug!(listener = name, "stopped accepting");
    });
    (clients, acceptor)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sessions that end at once.
    struct Nothing;

    impl SessionHandler for Nothing {
        fn handle(&self, _: SessionStream, _: SocketAddr, _: watch::Receiver<bool>) -> BoxFuture<'static, ()> {
            Box::pin(async {})
        }

        fn refuse(&self, _: SessionStream, _: Refusal) -> BoxFuture<'static, ()> {
            Box::pin(async {})
        }
    }

    #[tokio::test]
    async fn a_stopped_listener_has_closed_its_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, shutdown) = watch::channel(false);
        let limits = ConnectionLimits::open_sessions(10, 10);
        let proxy = ProxyProtocol::new(&[]).unwrap();
        let handle = serve(listener, "test", None, limits, proxy, Arc::new(Nothing), shutdown);
        TcpStream::connect(address).await.expect("accepting before the shutdown");
        stop.send_replace(true);
        handle.stopped(Duration::from_secs(1)).await;
        assert!(TcpStream::connect(address).await.is_err(), "nothing listens once the listener says it stopped");
    }
}
