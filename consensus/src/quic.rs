//! The cluster transport: QUIC (quinn) with mutual TLS (rustls).
//!
//! Each pair of nodes shares one connection; each request (a Raft RPC, a forwarded batch,
//! a read index, a membership change, a status query, an enrolment) takes its own
//! bidirectional stream: the request's postcard bytes, then the reply's. A connection
//! without a client certificate of the cluster CA may only enrol.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

use crate::NodeId;
use crate::network::{PeerHandler, PeerReply, PeerRequest, Sender, Transport, TransportError, TransportFuture};
use crate::tls::{self, NodeIdentity, TlsError};

/// Largest request or reply between members (an AppendEntries of 64 batches of 4 MiB).
const MAX_MESSAGE: usize = 272 * 1024 * 1024;
/// Largest request from a connection without a cluster certificate.
const MAX_ENROLMENT: usize = 64 * 1024;
/// How long a connection without a cluster certificate may take to send its request.
const ENROLMENT_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long dialling a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A connection silent this long is dead (keep-alives every [`KEEP_ALIVE`]): calls to a
/// node that died fail after this long at most.
const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
const KEEP_ALIVE: Duration = Duration::from_millis(400);
/// A peer silent this long on a connection (a live one acknowledges each keep-alive within
/// a round trip) has probably died or restarted: the next call dials afresh instead of
/// waiting out [`IDLE_TIMEOUT`], as a restarted peer never answers on its old connection.
/// Without this, a leader kept sending into the old connection for up to 2 s after a
/// follower restarted, and the follower, hearing no leader, stood for election and
/// deposed it.
const SILENT_PEER: Duration = Duration::from_millis(1_200);

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut config = quinn::TransportConfig::default();
    config.keep_alive_interval(Some(KEEP_ALIVE));
    config.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("small duration")));
    config.max_concurrent_bidi_streams(4_096u32.into());
    config.max_concurrent_uni_streams(0u32.into());
    Arc::new(config)
}

fn server_config(identity: &NodeIdentity) -> Result<quinn::ServerConfig, TlsError> {
    let crypto =
        QuicServerConfig::try_from(Arc::new(identity.server_config()?)).map_err(|e| TlsError::new("QUIC server", e))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(transport_config());
    Ok(server)
}

fn client_config(tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, TlsError> {
    let crypto = QuicClientConfig::try_from(Arc::new(tls)).map_err(|e| TlsError::new("QUIC client", e))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport_config());
    Ok(config)
}

/// The running side of a [`QuicTransport`].
struct Live {
    endpoint: quinn::Endpoint,
    /// What this node presents when it dials (replaced when its certificate is renewed).
    client: RwLock<quinn::ClientConfig>,
    /// One connection per peer, each behind its own lock so dialling one peer never waits
    /// for another.
    connections: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<Option<Cached>>>>>,
}

/// A connection to a peer, and when a datagram last arrived on it (as calls noticed).
struct Cached {
    connection: quinn::Connection,
    received: u64,
    heard_at: Instant,
}

impl Cached {
    fn new(connection: quinn::Connection) -> Self {
        Self { received: connection.stats().udp_rx.datagrams, connection, heard_at: Instant::now() }
    }

    /// Whether the connection is open and the peer was heard from lately.
    fn usable(&mut self) -> bool {
        if self.connection.close_reason().is_some() {
            return false;
        }
        let received = self.connection.stats().udp_rx.datagrams;
        if received != self.received {
            (self.received, self.heard_at) = (received, Instant::now());
        }
        self.heard_at.elapsed() < SILENT_PEER
    }
}

impl Live {
    async fn connection(&self, target: NodeId, addr: &str) -> Result<quinn::Connection, String> {
        let slot = self.connections.lock().expect("connection map").entry(target).or_default().clone();
        let mut slot = slot.lock().await;
        if let Some(cached) = slot.as_mut() {
            if cached.usable() {
                return Ok(cached.connection.clone());
            }
            // Calls already sent on it finish (or time out) on their own.
            tracing::debug!(target, %addr, "peer silent or connection closed; dialling again");
        }
        let address = resolve(addr).await?;
        let connecting = self
            .endpoint
            .connect_with(self.client.read().expect("client config lock").clone(), address, &tls::node_name(target))
            .map_err(|e| e.to_string())?;
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| format!("no answer from {addr} within {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        *slot = Some(Cached::new(connection.clone()));
        Ok(connection)
    }
}

async fn resolve(addr: &str) -> Result<SocketAddr, String> {
    tokio::net::lookup_host(addr)
        .await
        .map_err(|e| format!("cannot resolve {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr} has no address"))
}

/// Sends one request on a new stream of `connection` and reads the reply. `Err(true)`: the
/// request never left (the stream could not be opened).
async fn exchange(connection: &quinn::Connection, request: &[u8]) -> Result<PeerReply, (bool, String)> {
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| (true, e.to_string()))?;
    send.write_all(request).await.map_err(|e| (false, e.to_string()))?;
    send.finish().map_err(|e| (false, e.to_string()))?;
    let reply = recv.read_to_end(MAX_MESSAGE).await.map_err(|e| (false, e.to_string()))?;
    postcard::from_bytes(&reply).map_err(|e| (false, format!("undecodable reply: {e}")))
}

/// The QUIC transport of one node. Requests fail as unreachable until [`Self::start`].
#[derive(Default)]
pub struct QuicTransport {
    live: RwLock<Option<Arc<Live>>>,
}

impl QuicTransport {
    /// A transport that is not listening yet.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Whether [`Self::start`] has run.
    pub fn is_started(&self) -> bool {
        self.live.read().expect("transport lock").is_some()
    }

    /// Listens on `listen` (UDP), answers requests with `handler`, and from now on sends
    /// with `identity`. Returns the bound address.
    pub fn start(
        &self,
        listen: SocketAddr,
        identity: &NodeIdentity,
        handler: Arc<dyn PeerHandler>,
    ) -> Result<SocketAddr, TlsError> {
        let endpoint = quinn::Endpoint::server(server_config(identity)?, listen)
            .map_err(|e| TlsError::new(&format!("cannot listen on UDP {listen}"), e))?;
        let bound = endpoint.local_addr().map_err(|e| TlsError::new("reading the bound address", e))?;
        let live = Live {
            endpoint: endpoint.clone(),
            client: RwLock::new(client_config(identity.client_config()?)?),
            connections: Mutex::default(),
        };
        *self.live.write().expect("transport lock") = Some(Arc::new(live));
        tokio::spawn(accept(endpoint, handler));
        tracing::info!(%bound, "cluster transport listening (QUIC, mutual TLS)");
        Ok(bound)
    }

    /// Presents `identity` (a renewed certificate) from now on, to peers that connect and
    /// to peers this node dials; established connections keep the one they began with.
    pub fn renew(&self, identity: &NodeIdentity) -> Result<(), TlsError> {
        let Some(live) = self.live.read().expect("transport lock").clone() else { return Ok(()) };
        live.endpoint.set_server_config(Some(server_config(identity)?));
        *live.client.write().expect("client config lock") = client_config(identity.client_config()?)?;
        Ok(())
    }

    /// Closes every connection and stops listening.
    pub async fn stop(&self) {
        let live = self.live.write().expect("transport lock").take();
        if let Some(live) = live {
            live.endpoint.close(0u32.into(), b"node stopping");
            let _ = tokio::time::timeout(Duration::from_secs(1), live.endpoint.wait_idle()).await;
        }
    }
}

impl Transport for QuicTransport {
    fn call(&self, target: NodeId, node: &openraft::BasicNode, request: PeerRequest) -> TransportFuture {
        let live = self.live.read().expect("transport lock").clone();
        let addr = node.addr.clone();
        Box::pin(async move {
            let Some(live) = live else { return Err(TransportError::Unreachable(target)) };
            let request = postcard::to_allocvec(&request)
                .map_err(|e| TransportError::Failed { node: target, reason: e.to_string() })?;
            // A cached connection may have died since its last use: dial once more.
            for _ in 0..2 {
                let connection = match live.connection(target, &addr).await {
                    Ok(connection) => connection,
                    Err(reason) => {
                        tracing::debug!(target, %addr, %reason, "peer unreachable");
                        return Err(TransportError::Unreachable(target));
                    }
                };
                match exchange(&connection, &request).await {
                    Ok(reply) => return Ok(reply),
                    Err((true, _)) => continue,
                    Err((false, reason)) => return Err(TransportError::Failed { node: target, reason }),
                }
            }
            Err(TransportError::Unreachable(target))
        })
    }
}

async fn accept(endpoint: quinn::Endpoint, handler: Arc<dyn PeerHandler>) {
    while let Some(incoming) = endpoint.accept().await {
        let handler = handler.clone();
        tokio::spawn(async move {
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(error) => {
                    // A certificate from another CA ends here.
                    tracing::warn!(%error, "refused a cluster connection");
                    return;
                }
            };
            let certificate = connection
                .peer_identity()
                .and_then(|identity| identity.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok())
                .and_then(|chain| chain.first().map(|cert| Arc::new(cert.to_vec())));
            let sender = match certificate {
                Some(der) => Sender::Certified(der),
                None => Sender::Anonymous,
            };
            let member = matches!(sender, Sender::Certified(_));
            if !member {
                // Enrolment only: one request at a time, and not for long.
                connection.set_max_concurrent_bi_streams(1u32.into());
            }
            while let Ok((send, recv)) = connection.accept_bi().await {
                tokio::spawn(serve_stream(handler.clone(), sender.clone(), send, recv));
            }
        });
    }
}

async fn serve_stream(
    handler: Arc<dyn PeerHandler>,
    sender: Sender,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let member = matches!(sender, Sender::Certified(_));
    let limit = if member { MAX_MESSAGE } else { MAX_ENROLMENT };
    let read = recv.read_to_end(limit);
    let bytes = if member {
        read.await.ok()
    } else {
        tokio::time::timeout(ENROLMENT_READ_TIMEOUT, read).await.ok().and_then(Result::ok)
    };
    let Some(bytes) = bytes else { return };
    let Ok(request) = postcard::from_bytes::<PeerRequest>(&bytes) else {
        let _ = send.reset(1u32.into());
        return;
    };
    let reply = handler.handle(request, sender).await;
    let Ok(bytes) = postcard::to_allocvec(&reply) else { return };
    if send.write_all(&bytes).await.is_ok() {
        let _ = send.finish();
        // Keep the stream until the peer has read the reply.
        let _ = send.stopped().await;
    }
}

/// Why an enrolment request got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EnrolError {
    /// The member answered with a refusal.
    #[error("{0}")]
    Refused(String),
    /// The member could not be reached, or the answer was lost on the way (the member may
    /// have acted on the request).
    #[error("{0}")]
    Failed(String),
}

/// Sends an enrolment request to the member at `addr`, which must prove it holds a
/// certificate of the CA with fingerprint `ca_fingerprint`; returns the member's answer.
pub async fn enrol(addr: &str, ca_fingerprint: [u8; 32], request: Vec<u8>) -> Result<Vec<u8>, EnrolError> {
    let answer = exchange_enrolment(addr, ca_fingerprint, request).await.map_err(EnrolError::Failed)?;
    answer.map_err(EnrolError::Refused)
}

async fn exchange_enrolment(
    addr: &str,
    ca_fingerprint: [u8; 32],
    request: Vec<u8>,
) -> Result<Result<Vec<u8>, String>, String> {
    let address = resolve(addr).await?;
    let local: SocketAddr = if address.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
    let endpoint = quinn::Endpoint::client(local).map_err(|e| e.to_string())?;
    let client = client_config(tls::join_client_config(ca_fingerprint)).map_err(|e| e.to_string())?;
    let connecting = endpoint.connect_with(client, address, tls::CLUSTER_NAME).map_err(|e| e.to_string())?;
    let connection = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Err(_) => return Err(format!("no answer from {addr} within {CONNECT_TIMEOUT:?}")),
        Ok(Ok(connection)) => connection,
        // A TLS failure (RFC 9001 §4.8: crypto errors are 0x100-0x1ff), such as a member
        // whose chain lacks the token's CA: asking again would not change it.
        Ok(Err(quinn::ConnectionError::TransportError(error))) if (0x100..0x200).contains(&u64::from(error.code)) => {
            return Ok(Err(format!(
                "the TLS handshake with {addr} failed ({error}): is this a member of the cluster that issued the token?"
            )));
        }
        Ok(Err(error)) => return Err(format!("cannot reach the cluster at {addr}: {error}")),
    };
    let request = postcard::to_allocvec(&PeerRequest::Join(request)).map_err(|e| e.to_string())?;
    let reply = exchange(&connection, &request).await.map_err(|(_, reason)| reason);
    connection.close(0u32.into(), b"enrolled");
    endpoint.wait_idle().await;
    match reply? {
        PeerReply::Join(answer) => Ok(answer),
        _ => Err("the member answered with the wrong kind of reply".into()),
    }
}
