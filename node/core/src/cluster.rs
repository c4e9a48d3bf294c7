//! Growing a cluster: the cluster CA, one-time join tokens, enrolment of joining nodes,
//! this node's identity on disk, membership changes and the cluster's status.
//!
//! A token is `wmail1.` and the base64url of the CA certificate's SHA-256 fingerprint
//! followed by a 32-byte secret. The replicated state keeps the CA (so every member can
//! sign) and the SHA-256 of each unspent secret, never the secret itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use wmail_consensus::tls::{self, CaMaterial, NodeIdentity};
use wmail_consensus::{JoinHandler, MembershipChange, NodeId, NodeStatus};
use wmail_storage::{ClusterCa, Command, JoinToken, Outcome};

use crate::{BlobBackend, Core, CoreError, ErrorCode, Result, now_ms};

/// How long a join token stays valid unless told otherwise.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
const TOKEN_PREFIX: &str = "wmail1.";

/// Where a node that has not joined yet enrols.
#[derive(Debug, Clone)]
pub struct JoinTarget {
    /// `host:port` (QUIC) of any member.
    pub addr: String,
    /// The token from `wmail cluster token`.
    pub token: String,
}

/// A node's cluster identity as kept in `<data_dir>/cluster/identity.json` (mode 0600).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredIdentity {
    pub(crate) node_id: NodeId,
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
    pub(crate) ca_pem: String,
    /// The member this node enrolled at and how it was admitted; `None` for the node that
    /// founded the cluster.
    pub(crate) enrolled_at: Option<Enrolment>,
    /// When `cert_pem` expires (ms since the epoch); `None` in identities written before
    /// certificates expired (their certificate is renewed into one that does).
    #[serde(default)]
    pub(crate) cert_expires_ms: Option<u64>,
}

/// How long the certificates this node signs are valid:
/// [`tls::NODE_CERTIFICATE_VALIDITY`], or in debug builds `WMAIL_TEST_NODE_CERT_SECONDS`
/// (so the tests can watch a renewal).
pub(crate) fn certificate_validity() -> Duration {
    #[cfg(debug_assertions)]
    if let Some(seconds) = std::env::var("WMAIL_TEST_NODE_CERT_SECONDS").ok().and_then(|s| s.parse::<u64>().ok()) {
        return Duration::from_secs(seconds.max(3));
    }
    tls::NODE_CERTIFICATE_VALIDITY
}

/// A node renews its certificate once less than this share of its validity is left.
const RENEW_WHEN_LEFT: u32 = 3;

/// Renews this node's certificate when it is due (see [`Core::renew_certificate_if_due`]),
/// checking ten times per validity period (at most hourly), until the node stops.
pub(crate) async fn certificate_worker(core: Weak<Core>) {
    let period = (certificate_validity() / 10).min(Duration::from_secs(3_600));
    loop {
        tokio::time::sleep(period).await;
        let Some(core) = core.upgrade() else { return };
        if let Err(error) = core.renew_certificate_if_due().await {
            tracing::warn!(%error, "cannot renew this node's cluster certificate; will try again");
        }
    }
}

/// Whom a joined node enrolled with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Enrolment {
    pub(crate) member_id: NodeId,
    pub(crate) member_addr: String,
    pub(crate) learner: bool,
}

impl StoredIdentity {
    pub(crate) fn tls(&self) -> NodeIdentity {
        NodeIdentity {
            node_id: self.node_id,
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
            ca_pem: self.ca_pem.clone(),
        }
    }
}

fn identity_path(data_dir: &Path) -> PathBuf {
    data_dir.join("cluster").join("identity.json")
}

fn internal(what: &str, error: impl std::fmt::Display) -> CoreError {
    CoreError::internal(what, error)
}

/// Reads this node's identity, if it has one.
pub(crate) fn load_identity(data_dir: &Path) -> Result<Option<StoredIdentity>> {
    let path = identity_path(data_dir);
    match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map(Some).map_err(|e| internal(&format!("reading {}", path.display()), e))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(internal(&format!("reading {}", path.display()), error)),
    }
}

/// Writes this node's identity durably (temp file, fsync, rename, directory fsync).
pub(crate) fn save_identity(data_dir: &Path, identity: &StoredIdentity) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(identity).map_err(|e| internal("encoding the identity", e))?;
    write_private(&identity_path(data_dir), &bytes).map_err(|e| internal("writing the identity", e))
}

/// Writes `bytes` to `path` (mode 0600) durably: a temporary file, fsync, rename, fsync of
/// the directory.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().expect("a file in a directory");
    std::fs::create_dir_all(dir)?;
    let temp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The key a joining node enrols with, kept in `<data_dir>/cluster/joining-key.json` until
/// its identity is saved, so that asking again (after a lost answer, or a crash before
/// the identity was written) presents the same key and gets the same node id.
#[derive(Serialize, Deserialize)]
struct JoiningKey {
    key_pem: String,
    public_key: Vec<u8>,
}

fn joining_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("cluster").join("joining-key.json")
}

/// The joining key of an earlier attempt, else a new one (saved before it is used).
fn joining_key(data_dir: &Path) -> Result<JoiningKey> {
    let path = joining_key_path(data_dir);
    match std::fs::read(&path) {
        Ok(bytes) => {
            return serde_json::from_slice(&bytes).map_err(|e| internal(&format!("reading {}", path.display()), e));
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(internal(&format!("reading {}", path.display()), error)),
    }
    let made = tls::generate_node_key().map_err(|e| internal("making the node key", e))?;
    let key = JoiningKey { key_pem: made.key_pem, public_key: made.public_key };
    let bytes = serde_json::to_vec(&key).map_err(|e| internal("encoding the node key", e))?;
    write_private(&path, &bytes).map_err(|e| internal("saving the node key", e))?;
    Ok(key)
}

/// How often a joining node asks again when the member cannot be reached or its answer is
/// lost (safe: the same key gets the same node id).
const ENROL_ATTEMPTS: u32 = 4;

fn decode_token(token: &str) -> Result<([u8; 32], [u8; 32])> {
    let bad = || {
        CoreError::new(
            ErrorCode::InvalidInput,
            "this is not a wmail join token; copy the whole line `wmail cluster token` printed on a member",
        )
    };
    let body = token.trim().strip_prefix(TOKEN_PREFIX).ok_or_else(bad)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(body).map_err(|_| bad())?;
    if bytes.len() != 64 {
        return Err(bad());
    }
    let (fingerprint, secret) = bytes.split_at(32);
    Ok((fingerprint.try_into().expect("32 bytes"), secret.try_into().expect("32 bytes")))
}

/// What a joining node sends with its token.
#[derive(Debug, Serialize, Deserialize)]
struct JoinRequest {
    secret: [u8; 32],
    public_key: Vec<u8>,
    addr: String,
}

/// What the member answers.
#[derive(Debug, Serialize, Deserialize)]
struct JoinReply {
    node_id: NodeId,
    learner: bool,
    cert_pem: String,
    ca_pem: String,
    member_id: NodeId,
    member_addr: String,
    /// When the certificate expires (ms since the epoch).
    cert_expires_ms: u64,
}

/// Enrols this node at `target`: proves the token, receives a node id and a certificate.
/// Asks again, with the same key, when the member cannot be reached or the answer is lost.
pub(crate) async fn enrol(data_dir: &Path, target: &JoinTarget, advertise_addr: &str) -> Result<StoredIdentity> {
    let (fingerprint, secret) = decode_token(&target.token)?;
    let key = joining_key(data_dir)?;
    let request = JoinRequest { secret, public_key: key.public_key.clone(), addr: advertise_addr.to_string() };
    let request = postcard::to_allocvec(&request).map_err(|e| internal("encoding the join request", e))?;
    let mut attempt = 1;
    let reply = loop {
        let answer = wmail_consensus::quic::enrol(&target.addr, fingerprint, request.clone()).await;
        #[cfg(debug_assertions)]
        let answer = lose_first_join_answer(answer);
        match answer {
            Ok(reply) => break reply,
            Err(wmail_consensus::quic::EnrolError::Failed(reason)) if attempt < ENROL_ATTEMPTS => {
                let pause = Duration::from_secs(1 << (attempt - 1));
                tracing::warn!(member = %target.addr, %reason, "no answer to the enrolment; asking again with the same key in {pause:?}");
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
            Err(reason) => {
                return Err(CoreError::new(
                    ErrorCode::Unavailable,
                    format!("joining the cluster at {} failed: {reason}", target.addr),
                ));
            }
        }
    };
    let reply: JoinReply = postcard::from_bytes(&reply).map_err(|e| internal("decoding the join reply", e))?;
    if tls::fingerprint(&reply.ca_pem).ok() != Some(fingerprint) {
        return Err(CoreError::new(ErrorCode::Conflict, "the member sent a CA that does not match the token"));
    }
    let identity = StoredIdentity {
        node_id: reply.node_id,
        cert_pem: reply.cert_pem,
        key_pem: key.key_pem,
        ca_pem: reply.ca_pem,
        enrolled_at: Some(Enrolment {
            member_id: reply.member_id,
            member_addr: reply.member_addr,
            learner: reply.learner,
        }),
        cert_expires_ms: Some(reply.cert_expires_ms),
    };
    save_identity(data_dir, &identity)?;
    if let Err(error) = std::fs::remove_file(joining_key_path(data_dir)) {
        tracing::warn!(%error, "could not remove the joining key (its copy is in identity.json)");
    }
    tracing::info!(node_id = identity.node_id, member = %target.addr, learner = reply.learner, "enrolled in the cluster");
    Ok(identity)
}

/// Fault injection for the tests, in debug builds only: with `WMAIL_TEST_LOSE_JOIN_REPLY=1`
/// the member's first answer to the enrolment is dropped as if the connection broke after
/// the member acted on it.
#[cfg(debug_assertions)]
fn lose_first_join_answer(
    answer: std::result::Result<Vec<u8>, wmail_consensus::quic::EnrolError>,
) -> std::result::Result<Vec<u8>, wmail_consensus::quic::EnrolError> {
    static LOST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let enabled = std::env::var_os("WMAIL_TEST_LOSE_JOIN_REPLY").is_some_and(|value| value == "1");
    if enabled && answer.is_ok() && !LOST.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return Err(wmail_consensus::quic::EnrolError::Failed(
            "the member's answer was dropped (WMAIL_TEST_LOSE_JOIN_REPLY=1)".into(),
        ));
    }
    answer
}

/// Answers enrolment requests on a member.
pub(crate) struct Enroller(pub(crate) Weak<Core>);

impl JoinHandler for Enroller {
    fn join(
        &self,
        request: Vec<u8>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::result::Result<Vec<u8>, String>> + Send + '_>> {
        Box::pin(async move {
            let core = self.0.upgrade().ok_or("the node is stopping")?;
            core.enrol_node(&request).await.map_err(|error| error.to_string())
        })
    }

    fn app(
        &self,
        request: Vec<u8>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::result::Result<Vec<u8>, String>> + Send + '_>> {
        Box::pin(async move {
            let core = self.0.upgrade().ok_or("the node is stopping")?;
            let query: crate::NodeQuery = postcard::from_bytes(&request).map_err(|error| error.to_string())?;
            let answer = core.answer_locally(query).await?;
            serde_json::to_vec(&answer).map_err(|error| error.to_string())
        })
    }

    fn revoked(&self) -> Vec<NodeId> {
        let Some(core) = self.0.upgrade() else { return Vec::new() };
        // Asked on every request from a peer: read again only once more has been applied.
        let applied = core.consensus.metrics().last_applied.map_or(0, |id| id.index);
        {
            let cache = core.revoked_nodes.lock().expect("revoked cache lock");
            if cache.0 == Some(applied) {
                return cache.1.clone();
            }
        }
        // Read without holding the lock (a RocksDB read); the last reader's list wins.
        match core.state.revoked_nodes() {
            Ok(revoked) => {
                *core.revoked_nodes.lock().expect("revoked cache lock") = (Some(applied), revoked.clone());
                revoked
            }
            Err(error) => {
                tracing::error!(%error, "cannot read the revoked nodes; using the last list read");
                core.revoked_nodes.lock().expect("revoked cache lock").1.clone()
            }
        }
    }
}

/// One member as `wmail cluster status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct MemberView {
    /// The node id.
    pub id: NodeId,
    /// Its cluster address.
    pub addr: String,
    /// `voter` or `learner`.
    pub role: &'static str,
    /// What it says about itself, when it answered.
    pub status: Option<NodeStatus>,
    /// Why it did not answer.
    pub error: Option<String>,
    /// Entries it has yet to apply, against the highest commit index any member reported.
    pub lag: Option<u64>,
}

/// The cluster as this node sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterView {
    /// The node answering.
    pub node_id: NodeId,
    /// The leader it knows.
    pub leader: Option<NodeId>,
    /// Its term.
    pub term: u64,
    /// Every member, voters first.
    pub members: Vec<MemberView>,
}

impl Core {
    /// Starts the cluster transport with `identity` (QUIC on `[cluster] listen`).
    pub(crate) fn listen(self: &Arc<Self>, identity: &StoredIdentity) -> Result<SocketAddr> {
        let listen: SocketAddr = self.config.cluster_listen;
        let handler = self.consensus.peer_handler(Some(Arc::new(Enroller(Arc::downgrade(self)))));
        self.transport
            .start(listen, &identity.tls(), handler)
            .map_err(|e| CoreError::new(ErrorCode::Unavailable, format!("{e}; check [cluster] listen")))
    }

    /// Issues a one-time join token (valid for `lifetime`). The first token of a cluster
    /// creates its CA and this node's certificate, and starts the cluster transport.
    pub async fn issue_join_token(self: &Arc<Self>, learner: bool, lifetime: Duration) -> Result<String> {
        if matches!(self.config.blob_backend, BlobBackend::Local { .. }) {
            return Err(CoreError::new(
                ErrorCode::Conflict,
                "a cluster keeps message bodies in shared storage: set [blob] backend = \"s3\" on every node first",
            ));
        }
        let advertise: SocketAddr = self.config.advertise_addr.parse().map_err(|_| {
            CoreError::new(ErrorCode::InvalidInput, "[cluster] advertise must be an ip:port other nodes can reach")
        })?;
        if advertise.ip().is_unspecified() {
            return Err(CoreError::new(
                ErrorCode::InvalidInput,
                format!("other nodes cannot reach {advertise}: set [cluster] advertise to this node's address"),
            ));
        }
        let ca = self.cluster_ca().await?;
        let setup = self.cluster_setup.lock().await;
        if !self.transport.is_started() {
            let key = tls::generate_node_key().map_err(|e| internal("making the node key", e))?;
            let issued = tls::issue_node_certificate(&ca, self.config.node_id, &key.public_key, certificate_validity())
                .map_err(|e| internal("signing this node's certificate", e))?;
            let identity = StoredIdentity {
                node_id: self.config.node_id,
                cert_pem: issued.cert_pem,
                key_pem: key.key_pem,
                ca_pem: ca.cert_pem.clone(),
                enrolled_at: None,
                cert_expires_ms: Some(issued.expires_ms),
            };
            save_identity(&self.config.data_dir, &identity)?;
            self.listen(&identity)?;
            self.share_admin_token().await?;
        }
        drop(setup);
        let mut secret = [0u8; 32];
        aws_lc_rs::rand::fill(&mut secret).map_err(|e| internal("drawing a token secret", e))?;
        let token = JoinToken { learner, expires_ms: now_ms() + lifetime.as_millis() as u64 };
        self.execute(Command::AddJoinToken { hash: crate::sha256(&secret), token }).await?;
        let fingerprint = tls::fingerprint(&ca.cert_pem).map_err(|e| internal("reading the CA", e))?;
        let body = [fingerprint.as_slice(), &secret].concat();
        Ok(format!("{TOKEN_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(body)))
    }

    /// Renews this node's certificate (same key, signed by the cluster CA it holds in its
    /// replicated state, as every member does) once less than a third of its validity is
    /// left, or its expiry is unknown; a node that knows it was revoked does not renew (the
    /// other members refuse it by id anyway). The transport presents the new one from
    /// then on. Returns whether it renewed.
    pub(crate) async fn renew_certificate_if_due(&self) -> Result<bool> {
        let _setup = self.cluster_setup.lock().await;
        let Some(mut identity) = load_identity(&self.config.data_dir)? else { return Ok(false) };
        let validity = certificate_validity();
        let renew_at = validity.as_millis() as u64 / u64::from(RENEW_WHEN_LEFT);
        if identity.cert_expires_ms.is_some_and(|expires| expires.saturating_sub(now_ms()) > renew_at) {
            return Ok(false);
        }
        if self.state.revoked_nodes()?.contains(&identity.node_id) {
            return Ok(false);
        }
        // A node that joined learns the CA with the replicated state.
        let Some(ca) = self.state.cluster_ca()? else { return Ok(false) };
        let ca = CaMaterial { name: ca.name, cert_pem: ca.cert_pem, key_pem: ca.key_pem };
        let public_key = tls::public_key_of(&identity.key_pem).map_err(|e| internal("reading the node key", e))?;
        let issued = tls::issue_node_certificate(&ca, identity.node_id, &public_key, validity)
            .map_err(|e| internal("signing this node's certificate", e))?;
        identity.cert_pem = issued.cert_pem;
        identity.cert_expires_ms = Some(issued.expires_ms);
        save_identity(&self.config.data_dir, &identity)?;
        self.transport.renew(&identity.tls()).map_err(|e| internal("presenting the renewed certificate", e))?;
        let days = validity.as_secs() as f64 / 86_400.0;
        tracing::info!(node_id = identity.node_id, valid_days = days, "renewed this node's cluster certificate");
        Ok(true)
    }

    /// Makes this node's admin token valid on every node of the cluster (once).
    pub(crate) async fn share_admin_token(&self) -> Result<()> {
        let hash = self.config.admin_token_hash;
        if self.state.admin_token_node(&hash)?.is_none() {
            self.execute(Command::AddAdminToken { hash, node_id: self.config.node_id }).await?;
        }
        Ok(())
    }

    /// Whether `token` is an admin token of any node of this cluster (compared by SHA-256,
    /// so the lookup reveals nothing about the token through timing).
    pub fn is_admin_token(&self, token: &str) -> bool {
        let hash = crate::sha256(token.as_bytes());
        self.state.admin_token_node(&hash).is_ok_and(|node| node.is_some())
    }

    /// The cluster CA, made now if the cluster has none.
    async fn cluster_ca(&self) -> Result<CaMaterial> {
        if self.state.cluster_ca()?.is_none() {
            let made = tls::generate_ca().map_err(|e| internal("making the cluster CA", e))?;
            let ca = ClusterCa { name: made.name, cert_pem: made.cert_pem, key_pem: made.key_pem };
            self.execute(Command::SetClusterCa { ca }).await?;
        }
        let ca = self.state.cluster_ca()?.ok_or_else(|| internal("reading the cluster CA", "missing after commit"))?;
        Ok(CaMaterial { name: ca.name, cert_pem: ca.cert_pem, key_pem: ca.key_pem })
    }

    /// Admits a joining node: spends its token, gives it an id and signs its certificate.
    async fn enrol_node(&self, request: &[u8]) -> Result<Vec<u8>> {
        let request: JoinRequest = postcard::from_bytes(request)
            .map_err(|_| CoreError::new(ErrorCode::InvalidInput, "malformed join request"))?;
        if request.addr.parse::<SocketAddr>().is_err() {
            return Err(CoreError::new(
                ErrorCode::InvalidInput,
                format!("the joining node's [cluster] advertise {:?} is not an ip:port", request.addr),
            ));
        }
        tls::check_node_public_key(&request.public_key)
            .map_err(|e| CoreError::new(ErrorCode::InvalidInput, e.to_string()))?;
        // Checked here first so that requests with made-up tokens, which anyone who can reach
        // the port may send, never reach the Raft log; the command checks again. A token
        // spent on this very key may be asked again (the node lost the answer).
        let hash = crate::sha256(&request.secret);
        let key = crate::sha256(&request.public_key);
        let usable = match self.state.join_token(&hash)? {
            Some(token) => token.expires_ms > now_ms(),
            None => {
                self.state.spent_join_token(&hash)?.is_some_and(|spent| spent.key == key && spent.expires_ms > now_ms())
            }
        };
        if !usable {
            return Err(CoreError::new(
                ErrorCode::Unauthorized,
                "the join token is unknown, already used or expired; run `wmail cluster token` on a member for a new one",
            ));
        }
        let taken = self.consensus.metrics().membership_config.membership().nodes().map(|(id, _)| *id).collect();
        let command = Command::EnrolNodeKey { hash, addr: request.addr.clone(), taken, key };
        let Outcome::NodeEnrolled { node_id, learner } = self.execute(command).await? else {
            return Err(internal("enrolling a node", "unexpected outcome"));
        };
        let ca = self.cluster_ca().await?;
        let issued = tls::issue_node_certificate(&ca, node_id, &request.public_key, certificate_validity())
            .map_err(|e| CoreError::new(ErrorCode::InvalidInput, e.to_string()))?;
        tracing::info!(node_id, addr = %request.addr, learner, "enrolled a joining node");
        let reply = JoinReply {
            node_id,
            learner,
            cert_pem: issued.cert_pem,
            ca_pem: ca.cert_pem,
            member_id: self.config.node_id,
            member_addr: self.config.advertise_addr.clone(),
            cert_expires_ms: issued.expires_ms,
        };
        postcard::to_allocvec(&reply).map_err(|e| internal("encoding the join reply", e))
    }

    /// Changes the membership through the leader (`wmail cluster promote|leave`).
    pub async fn change_membership(&self, change: MembershipChange) -> Result<()> {
        let MembershipChange::Remove { id } = change else {
            return self.consensus.change_membership(change).await.map_err(crate::unavailable);
        };
        if id == self.config.node_id {
            // Once removed it could not propose its own revocation.
            return Err(CoreError::new(
                ErrorCode::Conflict,
                "a node cannot remove itself; run `wmail cluster leave ID` against another member (--server URL)",
            ));
        }
        // Removed first, then revoked: revoking a leader before it hands over would leave
        // its followers refusing the very change that removes it. A removed node keeps its
        // key and a CA-signed certificate; once revoked, no node takes any request from it,
        // so it cannot add itself back (it must be wiped and join with a new token).
        self.consensus.change_membership(change).await.map_err(crate::unavailable)?;
        self.execute(Command::RevokeNode { node_id: id }).await?;
        Ok(())
    }

    /// Every member's role and, from those that answer within a second, their status.
    pub async fn cluster_view(&self) -> ClusterView {
        let metrics = self.consensus.metrics();
        let membership = metrics.membership_config.membership().clone();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        let asks = membership.nodes().map(|(id, node)| {
            let (id, addr) = (*id, node.addr.clone());
            async move {
                let status = tokio::time::timeout(Duration::from_secs(1), self.consensus.peer_status(id, &addr)).await;
                let status = match status {
                    Ok(Ok(status)) => Ok(status),
                    Ok(Err(error)) => Err(error.to_string()),
                    Err(_) => Err("no answer within 1 s".to_string()),
                };
                (id, addr, status)
            }
        });
        let answers = futures::future::join_all(asks).await;
        let committed = answers.iter().filter_map(|(_, _, s)| s.as_ref().ok()?.committed_index).max();
        let mut members: Vec<MemberView> = answers
            .into_iter()
            .map(|(id, addr, status)| {
                let role = if voters.contains(&id) { "voter" } else { "learner" };
                let lag =
                    status.as_ref().ok().and_then(|s| Some(committed?.saturating_sub(s.applied_index.unwrap_or(0))));
                let (status, error) = match status {
                    Ok(status) => (Some(status), None),
                    Err(error) => (None, Some(error)),
                };
                MemberView { id, addr, role, status, error, lag }
            })
            .collect();
        members.sort_by_key(|member| (member.role != "voter", member.id));
        ClusterView {
            node_id: self.config.node_id,
            leader: metrics.current_leader,
            term: metrics.current_term,
            members,
        }
    }
}

impl Core {
    /// Where this node is in draining.
    pub fn drain_state(&self) -> tokio::sync::watch::Receiver<crate::DrainState> {
        self.drain.subscribe()
    }

    /// Tells [`Core::drain`] that every mail session has ended.
    pub fn mark_drained(&self) {
        self.drain.send_replace(crate::DrainState::Drained);
    }

    /// Drains this node before an upgrade or maintenance: it stops taking sessions (the
    /// binary closes its mail listeners and `/readyz` says so), hands leadership to another
    /// voter if it leads, and waits up to `grace` for open sessions to end. The node keeps
    /// voting and applying until it is stopped.
    pub async fn drain(&self, grace: Duration) -> Result<crate::DrainReport> {
        self.drain.send_if_modified(|state| {
            let start = *state == crate::DrainState::Serving;
            if start {
                *state = crate::DrainState::Draining;
            }
            start
        });
        let was_leader = self.consensus.metrics().state == crate::ServerState::Leader;
        if was_leader {
            self.hand_off_leadership().await?;
        }
        let mut state = self.drain.subscribe();
        let drained =
            tokio::time::timeout(grace, state.wait_for(|state| *state == crate::DrainState::Drained)).await.is_ok();
        Ok(crate::DrainReport { was_leader, leader: self.consensus.metrics().current_leader, drained })
    }

    /// openraft 0.9 has no leadership transfer: the leader leaves the voters (it steps down
    /// and the others elect one of themselves), then rejoins them through the new leader.
    /// The cluster runs with one voter fewer for that moment, so it needs three or more.
    async fn hand_off_leadership(&self) -> Result<()> {
        let me = self.config.node_id;
        let view = self.cluster_view().await;
        let others: Vec<&MemberView> = view.members.iter().filter(|m| m.role == "voter" && m.id != me).collect();
        // The voters left must form a majority of themselves, or the cluster would stall.
        let answering = others.iter().filter(|m| m.status.is_some()).count();
        if others.len() < 2 || answering < others.len() / 2 + 1 {
            tracing::warn!(
                voters = others.len() + 1,
                answering,
                "not handing off leadership: the other voters could not carry on without this node"
            );
            return Ok(());
        }
        tracing::info!("draining: handing leadership to another voter");
        self.change_membership(MembershipChange::Demote { id: me }).await?;
        let stepped_down = self.consensus.step_down(Duration::from_secs(10)).await.map_err(crate::unavailable);
        // Vote again whatever happened: a failed hand-off must not cost the cluster a voter.
        let promoted = self.change_membership(MembershipChange::Promote { id: me }).await;
        stepped_down.and(promoted)
    }
}
