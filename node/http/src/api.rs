//! The admin REST API under `/api/v1`: JSON in and out, bearer-token authentication, one
//! closed error shape `{"error": {"code": ..., "message": ...}}`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use wmail_core::{
    Account, AccountChanges, AccountState, Core, CoreError, DeliveryResult, ErrorCode, MembershipChange, NewAccount,
    Service,
};

use crate::AppState;

/// Largest message accepted by the delivery endpoint.
const MAX_MESSAGE_BYTES: u64 = 64 * 1024 * 1024;

/// An API error: status plus the JSON body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// A `WWW-Authenticate` challenge for a 401 (RFC 7235 §4.1).
    challenge: Option<&'static str>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), challenge: None }
    }

    /// Adds the `WWW-Authenticate` challenge a 401 must carry.
    pub(crate) fn with_challenge(mut self, challenge: &'static str) -> Self {
        self.challenge = Some(challenge);
        self
    }
}

impl From<CoreError> for ApiError {
    fn from(error: CoreError) -> Self {
        let (status, code) = match error.code {
            ErrorCode::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ErrorCode::AlreadyExists => (StatusCode::CONFLICT, "already_exists"),
            ErrorCode::Conflict => (StatusCode::CONFLICT, "conflict"),
            ErrorCode::InvalidInput => (StatusCode::BAD_REQUEST, "invalid_input"),
            ErrorCode::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ErrorCode::OverQuota => (StatusCode::INSUFFICIENT_STORAGE, "over_quota"),
            ErrorCode::InsufficientStorage => (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage"),
            ErrorCode::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ErrorCode::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        Self::new(status, code, error.message)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        // Every malformed body is a 400, with serde's reason (it names unknown fields).
        Self::new(StatusCode::BAD_REQUEST, "invalid_json", rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(challenge) = self.challenge {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static(challenge));
        }
        response
    }
}

/// A JSON body whose rejections become [`ApiError`]s.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct JsonBody<T>(pub T);

type ApiResult<T> = Result<T, ApiError>;

/// Routes of `/api/v1`, behind the token check.
pub fn routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/domains", get(list_domains).post(create_domain))
        .route("/domains/{name}", get(show_domain).patch(update_domain).delete(remove_domain))
        .route("/accounts", get(list_accounts).post(create_account))
        .route("/accounts/{address}", get(show_account).patch(update_account).delete(remove_account))
        .route("/accounts/{address}/messages", get(list_messages).post(deliver_message))
        .route("/accounts/{address}/messages/{uid}/raw", get(read_message))
        .route("/accounts/{address}/search", get(search_messages))
        .route("/aliases", get(list_aliases).post(create_alias))
        .route("/aliases/{alias}", axum::routing::delete(remove_alias))
        .route("/cluster/status", get(cluster_status))
        .route("/cluster/tokens", axum::routing::post(issue_join_token))
        .route("/node/drain", axum::routing::post(drain_node))
        .route("/cluster/nodes/{id}", axum::routing::delete(remove_node))
        .route("/cluster/nodes/{id}/promote", axum::routing::post(promote_node))
        .route("/cluster/nodes/{id}/demote", axum::routing::post(demote_node))
        .route("/domains/{name}/dkim", get(list_dkim_keys).post(generate_dkim_key))
        .route("/domains/{name}/dkim/{selector}", axum::routing::delete(remove_dkim_key))
        .route("/domains/{name}/dkim/{selector}/activate", axum::routing::post(activate_dkim_key))
        .route("/search/status", get(search_status))
        .route("/security/verdicts", get(list_verdicts))
        .route("/security/blocks", get(list_blocks))
        .route("/quarantine", get(list_all_quarantined))
        .route("/quarantine/digests", axum::routing::post(send_quarantine_digests))
        .route("/accounts/{address}/quarantine", get(list_quarantined))
        .route("/accounts/{address}/quarantine/{id}", axum::routing::delete(drop_quarantined))
        .route("/accounts/{address}/quarantine/{id}/release", axum::routing::post(release_quarantined))
        .route("/accounts/{address}/allowed-senders", get(list_allowed_senders).post(allow_sender))
        .route("/accounts/{address}/allowed-senders/{sender}", axum::routing::delete(disallow_sender))
        .route("/security/blocks/{kind}/{key}", axum::routing::delete(lift_block))
        .route("/search/reindex", get(reindex_progress).post(start_reindex))
        .route("/queue", get(list_queue))
        .route("/queue/{id}", get(show_queue_entry).delete(remove_queue_entry))
        .route("/queue/{id}/retry", axum::routing::post(retry_queue_entry))
        .route("/queue/flush", axum::routing::post(flush_queue))
        .layer(axum::middleware::from_fn_with_state(state.clone(), current_reads))
        .layer(axum::middleware::from_fn_with_state(state, require_token))
}

/// Admin reads see every write acknowledged anywhere in the cluster before them: a GET
/// waits for a read barrier first (on a learner cut off from the cluster it reads what it
/// has). `/cluster/...` reads do not, so the cluster's state can be inspected while it has
/// no leader.
async fn current_reads(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if request.method() == axum::http::Method::GET
        && !request.uri().path().contains("/cluster/")
        && let Err(error) = state.core.read_barrier().await
    {
        return ApiError::from(error).into_response();
    }
    next.run(request).await
}

async fn require_token(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(token) if constant_time_eq(token.as_bytes(), state.admin_token.as_bytes()) => next.run(request).await,
        // Another node's token: valid on every node of the cluster.
        Some(token) if state.core.is_admin_token(token) => next.run(request).await,
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "the admin token is wrong").into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing admin token: send 'Authorization: Bearer <token>' (the token is in the data directory's admin-token file)",
        )
        .into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// ----- domains -----

#[derive(Serialize)]
struct DomainView {
    name: String,
    created_at_ms: u64,
    alias_of: Option<String>,
    catch_all: Option<String>,
    disabled_services: Vec<Service>,
    /// `host:port` that gets mail for unknown local parts (when there is no catch-all).
    forward_unknown: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateDomain {
    name: String,
    /// Makes the new domain an alias of this one.
    alias_of: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateDomain {
    /// Catch-all address for unknown local parts; `null` removes it.
    #[serde(default, deserialize_with = "present_or_null_text")]
    catch_all: Option<Option<String>>,
    /// Services no account of the domain may use.
    disabled_services: Option<Vec<Service>>,
    /// `host:port` for unknown local parts; `null` removes it.
    #[serde(default, deserialize_with = "present_or_null_text")]
    forward_unknown: Option<Option<String>>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present_or_null_text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

fn domain_view(core: &Core, domain: wmail_core::Domain) -> DomainView {
    DomainView {
        forward_unknown: core.unknown_forward(&domain.name).ok().flatten(),
        name: domain.name,
        created_at_ms: domain.created_at_ms,
        alias_of: domain.alias_of,
        catch_all: domain.catch_all,
        disabled_services: domain.disabled_services,
    }
}

async fn list_domains(State(state): State<Arc<AppState>>) -> ApiResult<Json<Vec<DomainView>>> {
    Ok(Json(state.core.domains()?.into_iter().map(|domain| domain_view(&state.core, domain)).collect()))
}

async fn create_domain(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody<CreateDomain>,
) -> ApiResult<(StatusCode, Json<DomainView>)> {
    let domain = match &body.alias_of {
        Some(target) => state.core.create_domain_alias(&body.name, target).await?,
        None => state.core.create_domain(&body.name).await?,
    };
    Ok((StatusCode::CREATED, Json(domain_view(&state.core, domain))))
}

async fn update_domain(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<UpdateDomain>,
) -> ApiResult<Json<DomainView>> {
    if let Some(catch_all) = body.catch_all {
        state.core.set_catch_all(&name, catch_all.as_deref()).await?;
    }
    if let Some(disabled_services) = body.disabled_services {
        state.core.set_domain_services(&name, disabled_services).await?;
    }
    if let Some(target) = body.forward_unknown {
        state.core.set_unknown_forward(&name, target.as_deref()).await?;
    }
    let domain = state.core.domain(&name)?.ok_or_else(|| not_found("domain", &name))?;
    Ok(Json(domain_view(&state.core, domain)))
}

async fn show_domain(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> ApiResult<Json<DomainView>> {
    let domain = state.core.domain(&name)?;
    domain.map(|domain| Json(domain_view(&state.core, domain))).ok_or_else(|| not_found("domain", &name))
}

async fn remove_domain(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    state.core.remove_domain(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn not_found(what: &str, name: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("{what} {name} does not exist"))
}

// ----- accounts -----

#[derive(Serialize)]
struct AccountView {
    id: u64,
    address: String,
    name: String,
    state: AccountState,
    quota_bytes: Option<u64>,
    used_bytes: u64,
    message_count: u64,
    created_at_ms: u64,
    disabled_services: Vec<Service>,
    send_as: Vec<String>,
}

impl From<Account> for AccountView {
    fn from(account: Account) -> Self {
        Self {
            id: account.id,
            address: account.address,
            name: account.display_name,
            state: account.state,
            quota_bytes: account.quota_bytes,
            used_bytes: account.used_bytes,
            message_count: account.message_count,
            created_at_ms: account.created_at_ms,
            disabled_services: account.disabled_services,
            send_as: account.send_as,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateAccount {
    address: String,
    password: String,
    #[serde(default)]
    name: String,
    quota_bytes: Option<u64>,
    state: Option<AccountState>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateAccount {
    password: Option<String>,
    name: Option<String>,
    /// `null` removes the quota; absent leaves it.
    #[serde(default, deserialize_with = "present_or_null")]
    quota_bytes: Option<Option<u64>>,
    state: Option<AccountState>,
    /// Services the account may not use.
    disabled_services: Option<Vec<Service>>,
    /// Extra sender addresses (`someone@domain` or `@domain`).
    send_as: Option<Vec<String>>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present_or_null<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Option<u64>>, D::Error> {
    Option::<u64>::deserialize(deserializer).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainFilter {
    domain: Option<String>,
}

async fn list_accounts(
    State(state): State<Arc<AppState>>,
    Query(filter): Query<DomainFilter>,
) -> ApiResult<Json<Vec<AccountView>>> {
    if let Some(domain) = &filter.domain
        && state.core.domain(domain)?.is_none()
    {
        return Err(not_found("domain", domain));
    }
    Ok(Json(state.core.accounts(filter.domain.as_deref())?.into_iter().map(AccountView::from).collect()))
}

async fn create_account(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody<CreateAccount>,
) -> ApiResult<(StatusCode, Json<AccountView>)> {
    let account = state
        .core
        .create_account(NewAccount {
            address: body.address,
            password: body.password,
            display_name: body.name,
            quota_bytes: body.quota_bytes,
            state: body.state.unwrap_or(AccountState::Active),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(account.into())))
}

async fn show_account(State(state): State<Arc<AppState>>, Path(address): Path<String>) -> ApiResult<Json<AccountView>> {
    let account = state.core.account(&address)?;
    account.map(|account| Json(account.into())).ok_or_else(|| not_found("account", &address))
}

async fn update_account(
    State(state): State<Arc<AppState>>,
    Path(address): Path<String>,
    JsonBody(body): JsonBody<UpdateAccount>,
) -> ApiResult<Json<AccountView>> {
    if body.disabled_services.is_some() || body.send_as.is_some() {
        state.core.set_account_access(&address, body.disabled_services, body.send_as).await?;
    }
    let changes = AccountChanges {
        password: body.password,
        display_name: body.name,
        quota_bytes: body.quota_bytes,
        state: body.state,
    };
    Ok(Json(state.core.update_account(&address, changes).await?.into()))
}

async fn remove_account(State(state): State<Arc<AppState>>, Path(address): Path<String>) -> ApiResult<StatusCode> {
    state.core.remove_account(&address).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ----- messages -----

#[derive(Serialize)]
struct MessageView {
    uid: u32,
    size: u64,
    flags: Vec<String>,
    modseq: u64,
    internal_date_ms: u64,
    blob: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MailboxQuery {
    mailbox: Option<String>,
}

/// `GET /accounts/{address}/search?q=...&limit=20` (and the user API's `/search`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SearchQuery {
    /// The query (`wmail_search::parse_query` syntax).
    pub(crate) q: String,
    /// Most hits wanted (default 20, at most 1,000).
    pub(crate) limit: Option<usize>,
}

async fn search_messages(
    State(state): State<Arc<AppState>>,
    Path(address): Path<String>,
    Query(query): Query<SearchQuery>,
) -> ApiResult<Json<Vec<wmail_core::SearchHit>>> {
    let account = state.core.account(&address)?.ok_or_else(|| not_found("account", &address))?;
    Ok(Json(state.core.search_messages(account.id, &query.q, query.limit.unwrap_or(20)).await?))
}

async fn list_messages(
    State(state): State<Arc<AppState>>,
    Path(address): Path<String>,
    Query(query): Query<MailboxQuery>,
) -> ApiResult<Json<Vec<MessageView>>> {
    let messages = state.core.messages(&address, query.mailbox.as_deref())?;
    Ok(Json(
        messages
            .into_iter()
            .map(|message| MessageView {
                uid: message.uid,
                size: message.size,
                flags: message.flags,
                modseq: message.modseq,
                internal_date_ms: message.internal_date_ms,
                blob: message.blob.to_hex(),
            })
            .collect(),
    ))
}

#[derive(Serialize)]
struct DeliveryView {
    recipient: String,
    uid: u32,
    modseq: u64,
}

/// Delivers the raw RFC 5322 request body to the account's INBOX (import and tests). The
/// body is streamed into the blob store; the reply comes after the commit.
async fn deliver_message(
    State(state): State<Arc<AppState>>,
    Path(address): Path<String>,
    body: Body,
) -> ApiResult<(StatusCode, Json<DeliveryView>)> {
    let mut received = 0u64;
    let too_large = std::sync::atomic::AtomicBool::new(false);
    let stream = body.into_data_stream().map_err(std::io::Error::other).and_then(|chunk| {
        received += chunk.len() as u64;
        let result = if received > MAX_MESSAGE_BYTES {
            too_large.store(true, std::sync::atomic::Ordering::Relaxed);
            Err(std::io::Error::other(format!("the message is larger than {MAX_MESSAGE_BYTES} bytes")))
        } else {
            Ok(chunk)
        };
        std::future::ready(result)
    });
    let delivered = state.core.deliver(std::slice::from_ref(&address), stream).await;
    if too_large.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the message is larger than the {MAX_MESSAGE_BYTES}-byte limit"),
        ));
    }
    let mut results = delivered?;
    let result = results.pop().expect("one recipient, one result");
    match result.result? {
        DeliveryResult::Stored { uid, modseq, .. } => {
            Ok((StatusCode::CREATED, Json(DeliveryView { recipient: result.recipient, uid, modseq })))
        }
        DeliveryResult::OverQuota => {
            Err(ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "over_quota", format!("{address} is over quota")))
        }
        DeliveryResult::NotReceiving => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_receiving",
            format!("{address} does not receive mail in its current state"),
        )),
        DeliveryResult::NoSuchMailbox => Err(not_found("mailbox of", &address)),
        DeliveryResult::Forwarded => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("{address} forwards to other domains; deliver to an account's address"),
        )),
    }
}

async fn read_message(
    State(state): State<Arc<AppState>>,
    Path((address, uid)): Path<(String, u32)>,
) -> ApiResult<Response> {
    let message = state
        .core
        .messages(&address, None)?
        .into_iter()
        .find(|message| message.uid == uid)
        .ok_or_else(|| not_found("message", &uid.to_string()))?;
    let bytes = state.core.read_blob(&message.blob).await?;
    Ok(([(header::CONTENT_TYPE, "message/rfc822")], bytes).into_response())
}

// ----- aliases -----

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AliasView {
    alias: String,
    targets: Vec<String>,
}

async fn list_aliases(
    State(state): State<Arc<AppState>>,
    Query(filter): Query<DomainFilter>,
) -> ApiResult<Json<Vec<AliasView>>> {
    let aliases = state.core.aliases(filter.domain.as_deref())?;
    Ok(Json(aliases.into_iter().map(|(alias, targets)| AliasView { alias, targets }).collect()))
}

async fn create_alias(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody<AliasView>,
) -> ApiResult<(StatusCode, Json<AliasView>)> {
    state.core.create_alias(&body.alias, &body.targets).await?;
    let alias = wmail_core::normalize_address(&body.alias)?;
    let targets = state.core.aliases(None)?.into_iter().find(|(name, _)| *name == alias).map(|(_, t)| t);
    Ok((StatusCode::CREATED, Json(AliasView { alias, targets: targets.unwrap_or_default() })))
}

async fn remove_alias(State(state): State<Arc<AppState>>, Path(alias): Path<String>) -> ApiResult<StatusCode> {
    state.core.remove_alias(&alias).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ----- DKIM keys -----

#[derive(Debug, Serialize)]
struct DkimKeyView {
    selector: String,
    algorithm: &'static str,
    active: bool,
    created_ms: u64,
    /// The TXT record's name and value, and the record as a zone-file line.
    dns_name: String,
    dns_value: String,
    zone_line: String,
}

fn dkim_key_view(domain: &str, key: &wmail_core::DkimKey) -> DkimKeyView {
    let (dns_name, dns_value) = wmail_core::dkim::dns_record(domain, key);
    DkimKeyView {
        selector: key.selector.clone(),
        algorithm: match key.algorithm {
            wmail_core::DkimAlgorithm::Rsa => "rsa",
            wmail_core::DkimAlgorithm::Ed25519 => "ed25519",
        },
        active: key.active,
        created_ms: key.created_ms,
        dns_name,
        dns_value,
        zone_line: wmail_core::dkim::zone_line(domain, key),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDkimKey {
    selector: Option<String>,
    /// `rsa` (default) or `ed25519`.
    algorithm: Option<String>,
    #[serde(default)]
    activate: bool,
}

async fn list_dkim_keys(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<DkimKeyView>>> {
    if state.core.domain(&name)?.is_none() {
        return Err(not_found("domain", &name));
    }
    let keys = state.core.dkim_keys(&name)?;
    Ok(Json(keys.iter().map(|key| dkim_key_view(&name, key)).collect()))
}

async fn generate_dkim_key(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<NewDkimKey>,
) -> ApiResult<(StatusCode, Json<DkimKeyView>)> {
    let algorithm = match body.algorithm.as_deref().unwrap_or("rsa") {
        "rsa" => wmail_core::DkimAlgorithm::Rsa,
        "ed25519" => wmail_core::DkimAlgorithm::Ed25519,
        other => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_input",
                format!("unknown DKIM algorithm {other:?}; use rsa or ed25519"),
            ));
        }
    };
    let key = state.core.generate_dkim_key(&name, body.selector.as_deref(), algorithm, body.activate).await?;
    Ok((StatusCode::CREATED, Json(dkim_key_view(&name, &key))))
}

async fn activate_dkim_key(
    State(state): State<Arc<AppState>>,
    Path((name, selector)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    state.core.activate_dkim_key(&name, &selector).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn remove_dkim_key(
    State(state): State<Arc<AppState>>,
    Path((name, selector)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    state.core.remove_dkim_key(&name, &selector).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ----- outbound queue -----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueuePage {
    /// List entries with ids above this one.
    #[serde(default)]
    after: u64,
    /// At most this many (default 100, at most 1,000).
    limit: Option<usize>,
}

#[derive(Debug, Serialize)]
struct QueueRecipientView {
    address: String,
    /// `pending`, `delivered` or `failed`.
    status: &'static str,
    /// The last reply for it, if any.
    reply: Option<String>,
}

#[derive(Debug, Serialize)]
struct QueueEntryView {
    id: u64,
    return_path: String,
    size: u64,
    created_ms: u64,
    attempts: u32,
    next_attempt_ms: u64,
    /// The node delivering it now, if any.
    leased_to: Option<String>,
    recipients: Vec<QueueRecipientView>,
}

fn queue_entry_view(entry: wmail_core::QueueEntry) -> QueueEntryView {
    use wmail_core::RecipientStatus;
    QueueEntryView {
        id: entry.id,
        return_path: entry.return_path,
        size: entry.size,
        created_ms: entry.created_ms,
        attempts: entry.attempts,
        next_attempt_ms: entry.next_attempt_ms,
        leased_to: entry.lease.map(|lease| lease.holder),
        recipients: entry
            .recipients
            .into_iter()
            .map(|r| {
                let (status, reply) = match r.status {
                    RecipientStatus::Pending { last_reply } => ("pending", last_reply),
                    RecipientStatus::Delivered { reply } => ("delivered", Some(reply)),
                    RecipientStatus::Failed { reply } => ("failed", Some(reply)),
                };
                QueueRecipientView { address: r.recipient.address, status, reply }
            })
            .collect(),
    }
}

async fn list_queue(
    State(state): State<Arc<AppState>>,
    Query(page): Query<QueuePage>,
) -> ApiResult<Json<serde_json::Value>> {
    let limit = page.limit.unwrap_or(100).clamp(1, 1_000);
    let entries = state.core.outbound_queue(page.after, limit)?;
    let views: Vec<QueueEntryView> = entries.into_iter().map(queue_entry_view).collect();
    Ok(Json(serde_json::json!({ "total": state.core.queue_length()?, "entries": views })))
}

async fn show_queue_entry(State(state): State<Arc<AppState>>, Path(id): Path<u64>) -> ApiResult<Json<QueueEntryView>> {
    Ok(Json(queue_entry_view(state.core.require_queue_entry(id)?)))
}

async fn retry_queue_entry(State(state): State<Arc<AppState>>, Path(id): Path<u64>) -> ApiResult<StatusCode> {
    state.core.retry_outbound(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn flush_queue(State(state): State<Arc<AppState>>) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(serde_json::json!({ "retrying": state.core.flush_outbound().await? })))
}

async fn remove_queue_entry(State(state): State<Arc<AppState>>, Path(id): Path<u64>) -> ApiResult<StatusCode> {
    state.core.remove_outbound(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ----- cluster -----

async fn cluster_status(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(cluster_view(&state.core).await)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct TokenRequest {
    /// The node it admits stays a learner.
    learner: bool,
    /// How long the token is valid (default one day).
    ttl_seconds: Option<u64>,
}

async fn issue_join_token(
    State(state): State<Arc<AppState>>,
    JsonBody(request): JsonBody<TokenRequest>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let lifetime =
        request.ttl_seconds.map(std::time::Duration::from_secs).unwrap_or(wmail_core::DEFAULT_TOKEN_LIFETIME);
    let token = state.core.issue_join_token(request.learner, lifetime).await?;
    let body =
        serde_json::json!({ "token": token, "learner": request.learner, "expires_in_seconds": lifetime.as_secs() });
    Ok((StatusCode::CREATED, Json(body)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct DrainRequest {
    /// How long open sessions may take to end (default 60 s).
    grace_seconds: Option<u64>,
}

async fn drain_node(
    State(state): State<Arc<AppState>>,
    JsonBody(request): JsonBody<DrainRequest>,
) -> ApiResult<Json<wmail_core::DrainReport>> {
    let grace = std::time::Duration::from_secs(request.grace_seconds.unwrap_or(60));
    Ok(Json(state.core.drain(grace).await?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct LimitQuery {
    limit: Option<usize>,
}

/// Quarantined messages of every account (default at most 1,000).
async fn list_all_quarantined(
    State(state): State<Arc<AppState>>,
    Query(query): Query<LimitQuery>,
) -> ApiResult<Json<Vec<wmail_core::QuarantineEntry>>> {
    Ok(Json(state.core.all_quarantined(query.limit.unwrap_or(1_000))?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct DigestRequest {
    /// The retention the digest states (default 30 days).
    retention_days: Option<u64>,
}

/// Sends the quarantine digests now (they also go out periodically).
async fn send_quarantine_digests(
    State(state): State<Arc<AppState>>,
    JsonBody(request): JsonBody<DigestRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    let configured = state.protection.as_ref().map_or(30, |protection| protection.config().quarantine_retention_days);
    let sent = state.core.send_quarantine_digests(request.retention_days.unwrap_or(configured)).await?;
    Ok(Json(serde_json::json!({ "sent": sent })))
}

/// An account's quarantined messages, oldest first.
async fn list_quarantined(
    State(state): State<Arc<AppState>>,
    Path(address): Path<String>,
) -> ApiResult<Json<Vec<wmail_core::QuarantineEntry>>> {
    Ok(Json(state.core.quarantined(&address)?))
}

/// Delivers a quarantined message to the account's INBOX.
async fn release_quarantined(
    State(state): State<Arc<AppState>>,
    Path((address, id)): Path<(String, u64)>,
) -> ApiResult<StatusCode> {
    state.core.release_quarantined(&address, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes a quarantined message without delivering it.
async fn drop_quarantined(
    State(state): State<Arc<AppState>>,
    Path((address, id)): Path<(String, u64)>,
) -> ApiResult<StatusCode> {
    if !state.core.quarantined(&address)?.iter().any(|entry| entry.id == id) {
        return Err(not_found("quarantined message", &id.to_string()));
    }
    state.core.drop_quarantined(&address, vec![id]).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The senders an account always accepts.
async fn list_allowed_senders(
    State(state): State<Arc<AppState>>,
    Path(address): Path<String>,
) -> ApiResult<Json<Vec<String>>> {
    Ok(Json(state.core.allowed_senders(&address)?))
}

/// A sender to allow (admin and user API alike).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SenderBody {
    pub(crate) sender: String,
}

/// Makes an account always accept a sender (its mail skips the spam thresholds).
async fn allow_sender(
    State(state): State<Arc<AppState>>,
    Path(address): Path<String>,
    JsonBody(body): JsonBody<SenderBody>,
) -> ApiResult<StatusCode> {
    state.core.set_allowed_sender(&address, &body.sender, true).await?;
    Ok(StatusCode::CREATED)
}

/// Removes an allowed sender.
async fn disallow_sender(
    State(state): State<Arc<AppState>>,
    Path((address, sender)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    state.core.set_allowed_sender(&address, &sender, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The login blocks in force on every node.
async fn list_blocks(State(state): State<Arc<AppState>>) -> ApiResult<Json<Vec<wmail_core::LoginBlock>>> {
    Ok(Json(state.core.login_blocks()?))
}

/// Lifts a login block (`kind` is `address` or `account`) on every node.
async fn lift_block(
    State(state): State<Arc<AppState>>,
    Path((kind, key)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    state.core.lift_login_block(&kind, &key).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The inbound verdicts every node logged (each keeps the log of the mail it received),
/// newest first, by `message_id` and/or `sender`; nodes that did not answer are listed.
async fn list_verdicts(
    State(state): State<Arc<AppState>>,
    Query(query): Query<wmail_protection::VerdictQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let limit = query.limit.unwrap_or(100).min(1_000);
    let query = serde_json::to_string(&query).map_err(|error| CoreError::internal("encoding a query", error))?;
    let mut verdicts = Vec::new();
    let mut unanswered = Vec::new();
    for (node_id, answer) in state.core.ask_every_node(wmail_core::NodeQuery::Verdicts(query)).await {
        match answer {
            Ok(serde_json::Value::Array(records)) => verdicts.extend(records.into_iter().filter_map(|mut record| {
                record.as_object_mut()?.insert("node_id".into(), serde_json::json!(node_id));
                Some(record)
            })),
            Ok(other) => unanswered.push(serde_json::json!({ "node_id": node_id, "error": other.to_string() })),
            Err(error) => unanswered.push(serde_json::json!({ "node_id": node_id, "error": error })),
        }
    }
    verdicts.sort_by_key(|record| std::cmp::Reverse(record["time_ms"].as_u64().unwrap_or(0)));
    verdicts.truncate(limit);
    Ok(Json(serde_json::json!({ "verdicts": verdicts, "unanswered": unanswered })))
}

async fn search_status(State(state): State<Arc<AppState>>) -> Json<wmail_core::SearchStatus> {
    Json(state.core.search_status())
}

async fn reindex_progress(State(state): State<Arc<AppState>>) -> Json<wmail_core::ReindexProgress> {
    Json(state.core.reindex_progress())
}

/// `POST /search/reindex`: rebuild this node's full-text index of one account (by
/// address), or of all.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ReindexRequest {
    account: Option<String>,
}

async fn start_reindex(
    State(state): State<Arc<AppState>>,
    JsonBody(request): JsonBody<ReindexRequest>,
) -> ApiResult<(StatusCode, Json<wmail_core::ReindexProgress>)> {
    let account = match &request.account {
        Some(address) => Some(state.core.account(address)?.ok_or_else(|| not_found("account", address))?.id),
        None => None,
    };
    Ok((StatusCode::ACCEPTED, Json(state.core.start_reindex(account).await?)))
}

async fn remove_node(State(state): State<Arc<AppState>>, Path(id): Path<u64>) -> ApiResult<StatusCode> {
    state.core.change_membership(MembershipChange::Remove { id }).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn promote_node(State(state): State<Arc<AppState>>, Path(id): Path<u64>) -> ApiResult<StatusCode> {
    state.core.change_membership(MembershipChange::Promote { id }).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn demote_node(State(state): State<Arc<AppState>>, Path(id): Path<u64>) -> ApiResult<StatusCode> {
    state.core.change_membership(MembershipChange::Demote { id }).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The cluster status as JSON (also used by `wmail cluster status`): this node's Raft
/// view, and every member's role, status and lag as the members report them.
pub async fn cluster_view(core: &Core) -> serde_json::Value {
    let metrics = core.raft_metrics();
    let members = core.cluster_view().await.members;
    serde_json::json!({
        "node_id": metrics.id,
        "state": format!("{:?}", metrics.state),
        "term": metrics.current_term,
        "leader": metrics.current_leader,
        "last_log_index": metrics.last_log_index,
        "applied_index": metrics.last_applied.map(|id| id.index),
        "committed_index": core.raft_committed_index(),
        "snapshot_index": metrics.snapshot.map(|id| id.index),
        "purged_index": metrics.purged.map(|id| id.index),
        "members": members,
        "ready": core.is_ready(),
        "version": env!("CARGO_PKG_VERSION"),
    })
}
