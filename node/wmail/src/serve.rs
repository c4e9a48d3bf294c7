//! `wmail serve`: prepares the data directory, starts core and the listeners, and shuts
//! down in reverse order on SIGTERM or Ctrl-C.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use wmail_core::{BlobBackend, Core, CoreConfig, S3Config};

use crate::config::Config;

/// Name of the admin token file in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// Runs a node until SIGTERM/SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // First thing, so a SIGTERM during start-up stops the node cleanly instead of killing it.
    let mut stop = std::pin::pin!(stop_signal()?);
    let data_dir = prepare_data_dir(&config.server.data_dir)?;
    let _lock = lock_data_dir(&data_dir)?;
    tracing::info!(data_dir = %data_dir.display(), "starting");
    let tls = tls_acceptor(&config, &data_dir)?;
    let (token_path, admin_token) = admin_token(&data_dir)?;

    let starting = Core::start(CoreConfig {
        data_dir: data_dir.clone(),
        node_id: config.cluster.node_id,
        advertise_addr: config.cluster.advertise_addr().to_string(),
        cluster_listen: config.cluster.listen.parse().context("[cluster] listen")?,
        admin_token_hash: wmail_core::sha256(admin_token.as_bytes()),
        join: (!config.cluster.join.is_empty()).then(|| wmail_core::JoinTarget {
            addr: config.cluster.join.clone(),
            token: config.cluster.join_token.clone(),
        }),
        blob_backend: blob_backend(&config, &data_dir)?,
        blob_gc_grace: Duration::from_secs(config.blob.gc_grace_hours * 3600),
        blob_cache_bytes: config.blob.cache_size_mb.saturating_mul(1024 * 1024),
        snapshot_every: config.cluster.snapshot_every,
        lockout: config.security.lockout(),
        remember_logins: config.security.remember_logins(),
        search_enabled: config.search.enabled,
        min_free_disk_bytes: config.server.min_free_disk_mb.saturating_mul(1024 * 1024),
    });
    // Joining a cluster can wait for its peers: a stop request ends the wait. Everything
    // written so far is on disk already (RocksDB and the Raft log are crash-safe).
    let core = tokio::select! {
        core = starting => core.context("cannot start the node")?,
        () = &mut stop => {
            tracing::info!("stopped during start-up");
            return Ok(());
        }
    };

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    let mut http_urls = Vec::new();
    // One metrics registry for every service, rendered by every HTTP listener.
    let registry = wmail_http::Metrics::new_registry();
    let protection = protection(&config, &data_dir, &registry)?;
    if let Some(protection) = protection.clone() {
        // Other nodes (and this one's API) ask for this node's verdicts.
        core.set_local_query(Arc::new(move |query| match query {
            wmail_core::NodeQuery::Verdicts(query) => {
                let query: wmail_protection::VerdictQuery =
                    serde_json::from_str(&query).map_err(|error| format!("bad verdict query: {error}"))?;
                let records = protection.log().query(&query).map_err(|error| format!("verdict log: {error}"))?;
                serde_json::to_value(records).map_err(|error| error.to_string())
            }
        }));
    }
    let router = wmail_http::router(core.clone(), admin_token.clone(), registry.clone(), protection.clone());
    for address in &config.listen.http {
        let listener = HttpListener::new(bind(address, "http").await?, proxy_protocol(&config)?, shutdown_rx.clone())?;
        let local = listener.local;
        http_urls.push(format!("http://{local}"));
        let router = router.clone();
        let mut shutdown = shutdown_rx.clone();
        servers.push(tokio::spawn(async move {
            let stop = async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            };
            // The client's address (after any PROXY header) reaches handlers as an extension.
            let router = router.layer(axum::middleware::from_fn(
                |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<Peer>,
                 mut request: axum::extract::Request,
                 next: axum::middleware::Next| async move {
                    request.extensions_mut().insert(wmail_http::ClientAddr(peer.0));
                    next.run(request).await
                },
            ));
            let service = router.into_make_service_with_connect_info::<Peer>();
            axum::serve(listener, service).with_graceful_shutdown(stop).await
        }));
    }
    // Mail listeners and the delivery worker stop on shutdown or on `wmail node drain`.
    let (mail_stop_tx, mail_stop) = tokio::sync::watch::channel(false);
    let mut mail_listeners = start_smtp(&config, &core, &tls, &registry, protection, &mail_stop).await?;
    mail_listeners.extend(start_pop3(&config, &core, &tls, &mail_stop).await?);
    mail_listeners.extend(start_imap(&config, &core, &tls, &mail_stop).await?);
    let counts = mail_listeners.iter().map(|listener| (listener.name(), listener.session_count())).collect();
    registry.register(Box::new(OpenSessions::new(counts))).context("registering wmail_sessions_open")?;
    let delivery = tokio::spawn(delivery_worker(&config, &core, &registry)?.run(mail_stop.clone()));
    tokio::spawn(prune_security_state(Arc::downgrade(&core), config.antispam.clone()));
    let mail = {
        let (core, mut shutdown, mut drain) = (core.clone(), shutdown_rx.clone(), core.drain_state());
        tokio::spawn(async move {
            let grace = tokio::select! {
                _ = drain.wait_for(|state| *state == wmail_core::DrainState::Draining) => {
                    tracing::info!("draining: no new sessions; waiting for open ones to end");
                    Duration::from_secs(60)
                }
                _ = shutdown.wait_for(|stop| *stop) => Duration::from_secs(10),
            };
            let _ = mail_stop_tx.send(true);
            // Mail sessions say goodbye (SMTP 421) and end; transactions not yet
            // acknowledged are dropped, acknowledged ones are already committed. Every
            // listener waits at once, so the whole stop takes one grace period at most.
            let waits: Vec<_> =
                mail_listeners.into_iter().map(|listener| tokio::spawn(listener.stopped(grace))).collect();
            for wait in waits {
                let _ = wait.await;
            }
            let _ = delivery.await;
            core.mark_drained();
        })
    };
    warn_about_unserved_protocols(&config);
    announce(core.node_id(), &data_dir, &token_path, &http_urls);

    stop.await;
    tracing::info!("shutting down: finishing in-flight requests");
    let _ = shutdown_tx.send(true);
    let _ = mail.await;
    for server in servers {
        if let Ok(Err(error)) = server.await {
            tracing::warn!(%error, "http listener ended with an error");
        }
    }
    core.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

fn prepare_data_dir(path: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(path).with_context(|| {
        format!(
            "cannot create the data directory {}; fix its permissions or choose another with --data-dir",
            path.display()
        )
    })?;
    let probe = path.join(".write-test");
    std::fs::write(&probe, b"").with_context(|| {
        format!(
            "the data directory {} is not writable; fix its permissions or choose another with --data-dir",
            path.display()
        )
    })?;
    std::fs::remove_file(probe)?;
    path.canonicalize().with_context(|| format!("cannot resolve {}", path.display()))
}

/// Holds an exclusive lock on `data_dir/LOCK` for the life of the process.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = data_dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another wmail process is already using the data directory {} (it holds {}); stop it, or give this one another --data-dir",
            data_dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(error)) => Err(error).context(format!("cannot lock {}", path.display())),
    }
}

/// The outbound delivery worker, configured from `[delivery]` and `[dns]`.
fn delivery_worker(
    config: &Config,
    core: &Arc<Core>,
    registry: &prometheus::Registry,
) -> anyhow::Result<Arc<wmail_delivery::Worker>> {
    use crate::config::parse_duration;
    use wmail_delivery::{DeliveryConfig, Router, StaticRoute, TlsPolicy};
    let section = &config.delivery;
    let dns: Vec<SocketAddr> = config.dns.servers.iter().filter_map(|server| server.parse().ok()).collect();
    let routes = section
        .routes
        .iter()
        .map(|(domain, route)| {
            (domain.clone(), StaticRoute { targets: route.targets.clone(), mx_fallback: route.mx_fallback })
        })
        .collect();
    let smarthost = (!section.smarthost.is_empty()).then(|| section.smarthost.clone());
    let mut router =
        Router::new(&dns, section.remote_port, smarthost, routes).context("cannot set up the DNS resolver")?;
    if !section.smarthost_user.is_empty() {
        router = router.with_smarthost_credentials(wmail_delivery::Credentials {
            user: section.smarthost_user.clone(),
            password: section.smarthost_password.clone(),
        });
    }
    let mut delivery = DeliveryConfig::new(config.server.hostname.clone(), format!("node-{}", config.cluster.node_id));
    delivery.retry_schedule =
        section.retry_schedule.iter().map(|wait| parse_duration(wait)).collect::<Result<_, _>>()?;
    delivery.queue_lifetime = parse_duration(&section.queue_lifetime)?;
    delivery.delay_notice = match section.delay_notice.trim() {
        "" | "0" => None,
        text => Some(parse_duration(text)?),
    };
    delivery.concurrency = section.concurrency;
    delivery.per_destination = section.per_destination;
    delivery.bounce_size_limit = section.bounce_size_limit;
    delivery.timeouts.connect = Duration::from_secs(section.connect_timeout_seconds.max(1));
    delivery.tls_policies = section
        .tls
        .iter()
        .map(|(domain, policy)| {
            let policy = match policy.as_str() {
                "require" => TlsPolicy::Require,
                "require-verified" => TlsPolicy::RequireVerified,
                "disabled" => TlsPolicy::Disabled,
                _ => TlsPolicy::Opportunistic,
            };
            (domain.to_ascii_lowercase(), policy)
        })
        .collect();
    if !section.tls_ca_file.is_empty() {
        use rustls::pki_types::pem::PemObject;
        delivery.extra_roots = rustls::pki_types::CertificateDer::pem_file_iter(&section.tls_ca_file)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("[delivery] tls_ca_file {} is not a readable PEM file", section.tls_ca_file))?;
    }
    let metrics = wmail_delivery::DeliveryMetrics::register(registry)?;
    Ok(wmail_delivery::Worker::new(core.clone(), delivery, router, metrics))
}

/// The leader's housekeeping of the protection state: every hour it removes idle
/// greylisting triplets, lapsed blocks and quarantined messages past their retention; every
/// `quarantine_digest_hours` it sends the quarantine digests.
async fn prune_security_state(core: std::sync::Weak<Core>, settings: crate::config::AntispamSection) {
    let mut interval = tokio::time::interval(Duration::from_secs(3_600));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let digest_every = settings.quarantine_digest_hours;
    let mut hours = 0u64;
    loop {
        interval.tick().await;
        let Some(core) = core.upgrade() else { return };
        hours += 1;
        if core.raft_metrics().current_leader != Some(core.node_id()) {
            continue;
        }
        match core.prune_security_state(settings.greylist.retention()).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "pruned idle greylisting triplets and lapsed blocks"),
            Err(error) => tracing::warn!(%error, "pruning greylisting and blocks failed; retrying in an hour"),
        }
        let retention = Duration::from_secs(settings.quarantine_retention_days * 86_400);
        match core.purge_quarantine(retention).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "deleted quarantined messages past their retention"),
            Err(error) => tracing::warn!(%error, "purging the quarantine failed; retrying in an hour"),
        }
        if digest_every > 0 && hours.is_multiple_of(digest_every) {
            match core.send_quarantine_digests(settings.quarantine_retention_days).await {
                Ok(0) => {}
                Ok(sent) => tracing::info!(sent, "sent quarantine digests"),
                Err(error) => tracing::warn!(%error, "sending quarantine digests failed; retrying next time"),
            }
        }
    }
}

/// The inbound checks of the `smtp` listener, from `[antispam]`, `[antivirus]` and `[dns]`;
/// their verdict log lives in `data_dir/verdicts/`.
fn protection(
    config: &Config,
    data_dir: &Path,
    registry: &prometheus::Registry,
) -> anyhow::Result<Option<Arc<wmail_protection::Protection>>> {
    let Some(settings) = config.protection()? else { return Ok(None) };
    let dns: Vec<SocketAddr> = config.dns.servers.iter().filter_map(|server| server.parse().ok()).collect();
    let metrics = Arc::new(wmail_protection::ProtectionMetrics::register(registry)?);
    let log = wmail_protection::VerdictLog::new(data_dir.join("verdicts"), config.antispam.verdict_log_mb << 20);
    let protection = wmail_protection::Protection::new(settings, &dns, metrics, log)
        .context("cannot set up the inbound checks ([antispam], [antivirus])")?;
    Ok(Some(Arc::new(protection)))
}

/// Starts the SMTP listeners: `smtp` (MX, STARTTLS offered), `submission` (STARTTLS, then
/// AUTH) and `submissions` (implicit TLS).
async fn start_smtp(
    config: &Config,
    core: &Arc<Core>,
    tls: &wmail_net::TlsAcceptor,
    registry: &prometheus::Registry,
    protection: Option<Arc<wmail_protection::Protection>>,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<wmail_net::ListenerHandle>> {
    use wmail_smtp::{Mode, SmtpConfig, SmtpMetrics, SmtpServer};
    let metrics = Arc::new(SmtpMetrics::register(registry)?);
    // One set of per-user sending counters for both submission listeners.
    let send_limits = Arc::new(wmail_smtp::SendLimiter::new(wmail_smtp::SendPolicy {
        recipients_per_hour: config.smtp.max_recipients_per_hour,
        recipients_per_day: config.smtp.max_recipients_per_day,
        same_subject_per_day: config.smtp.max_same_subject_per_day,
    }));
    let limits = config.security.connection_limits(config.smtp.max_connections, config.smtp.max_connections_per_ip)?;
    let services = [
        ("smtp", &config.listen.smtp, false),
        ("submission", &config.listen.submission, false),
        ("submissions", &config.listen.submissions, true),
        ("lmtp", &config.listen.lmtp, false),
    ];
    open_listeners(&services, limits, &proxy_protocol(config)?, tls, shutdown, |service| {
        let mode = match service {
            "submission" => Mode::Submission,
            "submissions" => Mode::Submissions,
            "lmtp" => Mode::Lmtp,
            _ => Mode::Mx,
        };
        let mut smtp = SmtpConfig::new(config.server.hostname.clone(), mode);
        smtp.max_message_size = config.smtp.max_message_size;
        smtp.max_recipients = config.smtp.max_recipients;
        smtp.vrfy = config.smtp.vrfy;
        smtp.expn = config.smtp.expn;
        let server = SmtpServer::new(core.clone(), smtp, Some(tls.clone()), metrics.clone(), service);
        Arc::new(match &protection {
            Some(protection) if mode == Mode::Mx => server.with_protection(protection.clone()),
            _ if mode.requires_auth() => server.with_send_limits(send_limits.clone()),
            _ => server,
        })
    })
    .await
}

/// Starts the POP3 listeners: `pop3` (STLS offered) and `pop3s` (implicit TLS).
async fn start_pop3(
    config: &Config,
    core: &Arc<Core>,
    tls: &wmail_net::TlsAcceptor,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<wmail_net::ListenerHandle>> {
    let limits = config.security.connection_limits(config.pop3.max_connections, config.pop3.max_connections_per_ip)?;
    let services = [("pop3", &config.listen.pop3, false), ("pop3s", &config.listen.pop3s, true)];
    open_listeners(&services, limits, &proxy_protocol(config)?, tls, shutdown, |_| {
        let mut pop3 = wmail_pop3::Pop3Config::new(config.server.hostname.clone());
        pop3.login_delay = Duration::from_secs(config.pop3.login_delay_seconds);
        pop3.maildrop_lease = Duration::from_secs(config.pop3.maildrop_lease_seconds);
        Arc::new(wmail_pop3::Pop3Server::new(core.clone(), pop3, Some(tls.clone())))
    })
    .await
}

/// Starts the IMAP listeners: `imap` (STARTTLS offered) and `imaps` (implicit TLS).
async fn start_imap(
    config: &Config,
    core: &Arc<Core>,
    tls: &wmail_net::TlsAcceptor,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<wmail_net::ListenerHandle>> {
    let limits = config.security.connection_limits(config.imap.max_connections, config.imap.max_connections_per_ip)?;
    let services = [("imap", &config.listen.imap, false), ("imaps", &config.listen.imaps, true)];
    open_listeners(&services, limits, &proxy_protocol(config)?, tls, shutdown, |_| {
        let mut imap = wmail_imap::ImapConfig::new(config.server.hostname.clone());
        imap.append_limit = config.imap.max_append_size;
        imap.allow_plaintext_auth = config.imap.allow_plaintext_auth;
        Arc::new(wmail_imap::ImapServer::new(core.clone(), imap, Some(tls.clone())))
    })
    .await
}

/// The peers whose connections start with a PROXY v2 header (`[listen] proxy_protocol_from`).
fn proxy_protocol(config: &Config) -> anyhow::Result<wmail_net::ProxyProtocol> {
    wmail_net::ProxyProtocol::new(&config.listen.proxy_protocol_from)
        .map_err(|error| anyhow::anyhow!("[listen] proxy_protocol_from: {error}"))
}

/// An HTTP listener that accepts like the mail listeners (`wmail_net::accept_clients`: the
/// PROXY v2 header of trusted proxies read first) before axum sees the connections.
struct HttpListener {
    local: SocketAddr,
    ready: tokio::sync::mpsc::Receiver<(tokio::net::TcpStream, SocketAddr)>,
}

impl HttpListener {
    fn new(
        listener: tokio::net::TcpListener,
        proxy: wmail_net::ProxyProtocol,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (ready, _acceptor) = wmail_net::accept_clients(listener, "http", proxy, shutdown);
        Ok(Self { local, ready })
    }
}

/// The address an HTTP connection came from, as [`HttpListener`] accepted it.
#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, HttpListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, HttpListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

impl axum::serve::Listener for HttpListener {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept task ended (the listener is gone): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Binds every address of each `(service, addresses, implicit TLS)` and serves it with a
/// handler from `handler(service)`, all sharing one set of connection limits per service.
async fn open_listeners(
    services: &[(&'static str, &Vec<String>, bool)],
    limits: wmail_net::ConnectionLimits,
    proxy: &wmail_net::ProxyProtocol,
    tls: &wmail_net::TlsAcceptor,
    shutdown: &tokio::sync::watch::Receiver<bool>,
    handler: impl Fn(&'static str) -> Arc<dyn wmail_net::SessionHandler>,
) -> anyhow::Result<Vec<wmail_net::ListenerHandle>> {
    let mut handles = Vec::new();
    for &(service, addresses, implicit) in services {
        for address in addresses {
            let listener = bind(address, service).await?;
            let implicit_tls = implicit.then(|| tls.clone());
            tracing::info!(service, address = %listener.local_addr()?, "listening");
            let (proxy, handler) = (proxy.clone(), handler(service));
            handles.push(wmail_net::serve(
                listener,
                service,
                implicit_tls,
                limits.clone(),
                proxy,
                handler,
                shutdown.clone(),
            ));
        }
    }
    Ok(handles)
}

/// Loads the configured certificate, or generates a self-signed one into `data_dir/tls/`.
fn tls_acceptor(config: &Config, data_dir: &Path) -> anyhow::Result<wmail_net::TlsAcceptor> {
    let (cert, key) = match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ => {
            ensure_self_signed(config, data_dir)?;
            (data_dir.join("tls/cert.pem"), data_dir.join("tls/key.pem"))
        }
    };
    Ok(wmail_net::load_tls_acceptor(&cert, &key)?)
}

/// Generates a self-signed certificate into `data_dir/tls/` unless one is there.
fn ensure_self_signed(config: &Config, data_dir: &Path) -> anyhow::Result<()> {
    let dir = data_dir.join("tls");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert_path.exists() && key_path.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(&dir)?;
    let names = vec![config.server.hostname.clone(), "localhost".to_owned()];
    let certified = rcgen::generate_simple_self_signed(names).context("cannot generate a self-signed certificate")?;
    write_private(&key_path, certified.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, certified.cert.pem())?;
    tracing::warn!(
        cert = %cert_path.display(),
        "no [tls] certificate configured: generated a self-signed one; configure a real one for production"
    );
    Ok(())
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    Ok(())
}

/// Reads the admin token, creating it (mode 0600) on first start.
fn admin_token(data_dir: &Path) -> anyhow::Result<(PathBuf, String)> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    if let Ok(token) = std::fs::read_to_string(&path) {
        let token = token.trim().to_owned();
        if !token.is_empty() {
            return Ok((path, token));
        }
    }
    let token = format!("{:032x}{:032x}", rand::random::<u128>(), rand::random::<u128>());
    write_private(&path, format!("{token}\n").as_bytes())?;
    Ok((path, token))
}

fn blob_backend(config: &Config, data_dir: &Path) -> anyhow::Result<BlobBackend> {
    let blob = &config.blob;
    if blob.backend == "local" {
        return Ok(BlobBackend::Local { root: data_dir.to_owned() });
    }
    let from_env = |name: &str| std::env::var(name).ok();
    let access_key_id = blob.access_key_id.clone().or_else(|| from_env("AWS_ACCESS_KEY_ID"));
    let secret_access_key = blob.secret_access_key.clone().or_else(|| from_env("AWS_SECRET_ACCESS_KEY"));
    let (Some(access_key_id), Some(secret_access_key)) = (access_key_id, secret_access_key) else {
        bail!(
            "[blob] backend = \"s3\" needs access_key_id and secret_access_key (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
        );
    };
    Ok(BlobBackend::S3(S3Config {
        bucket: blob.bucket.clone(),
        endpoint: blob.endpoint.clone(),
        region: blob.region.clone(),
        access_key_id,
        secret_access_key,
    }))
}

async fn bind(address: &str, service: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let socket: SocketAddr = address.parse().with_context(|| format!("[listen] {service} = {address:?}"))?;
    // A deep accept queue: with a short one (128) a burst of connections overflows it, and
    // with SYN cookies the kernel then drops handshakes the client believes complete, so
    // those clients wait for a greeting that never comes instead of getting our 421.
    let listen = || -> std::io::Result<tokio::net::TcpListener> {
        let tcp = if socket.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        tcp.set_reuseaddr(true)?;
        tcp.bind(socket)?;
        tcp.listen(4096)
    };
    match listen() {
        Ok(listener) => Ok(listener),
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied && socket.port() < 1024 => bail!(
            "cannot listen on port {} for {service}: ports below 1024 need privileges; run with \
             CAP_NET_BIND_SERVICE (e.g. `setcap cap_net_bind_service=+ep $(which wmail)`) or set [listen] {service} to a port above 1023",
            socket.port()
        ),
        Err(error) => Err(error).with_context(|| format!("cannot listen on {address} for {service}")),
    }
}

fn warn_about_unserved_protocols(config: &Config) {
    const UNSERVED: [&str; 1] = ["managesieve"];
    for (name, addresses) in config.listen.services() {
        if UNSERVED.contains(&name) && !addresses.is_empty() {
            tracing::warn!(service = name, "this release does not serve {name} yet; the listener is not opened");
        }
    }
}

fn announce(node_id: u64, data_dir: &Path, token_path: &Path, http_urls: &[String]) {
    let api = http_urls.first().cloned().unwrap_or_else(|| "(no [listen] http)".into());
    println!("wmail {} is running as node {node_id}", env!("CARGO_PKG_VERSION"));
    println!("  data directory : {}", data_dir.display());
    println!("  admin API      : {api}/api/v1   (health: {api}/healthz, metrics: {api}/metrics)");
    println!("  admin token    : {}", token_path.display());
    println!("next: wmail domain add example.com && wmail account add alice@example.com");
    let _ = std::io::stdout().flush();
}

/// `wmail_sessions_open{listener}`: the sessions each mail listener (smtp, imaps, ...) has
/// open, read at scrape time (several addresses of one service add up).
struct OpenSessions {
    gauge: prometheus::IntGaugeVec,
    listeners: Vec<(&'static str, wmail_net::SessionCount)>,
}

impl OpenSessions {
    fn new(listeners: Vec<(&'static str, wmail_net::SessionCount)>) -> Self {
        let opts = prometheus::Opts::new("sessions_open", "Open sessions of each mail listener");
        let gauge = prometheus::IntGaugeVec::new(opts, &["listener"]).expect("valid metric");
        Self { gauge, listeners }
    }
}

impl prometheus::core::Collector for OpenSessions {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.gauge.reset();
        for (name, count) in &self.listeners {
            self.gauge.with_label_values(&[name]).add(count.open() as i64);
        }
        self.gauge.collect()
    }
}

/// Installs the SIGTERM and SIGINT handlers and returns what ends at the first of them.
fn stop_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}
