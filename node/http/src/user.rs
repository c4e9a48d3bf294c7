//! The user API under `/user/v1`: what an account may do for itself, authenticated with
//! its own address and password (HTTP Basic, RFC 7617, so over TLS in production; the
//! login lockout applies as for every protocol). Today: ranked search of its own mail, its
//! quarantine and allowed senders (the webmail's search box and quarantine page, and the
//! digest's instructions, use it).

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine;
use wmail_core::{Account, ErrorCode, Service};

use crate::AppState;
use crate::api::{ApiError, JsonBody, SearchQuery, SenderBody};

/// The account a request authenticated as.
pub struct User(Account);

impl FromRequestParts<Arc<AppState>> for User {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let unauthorized = |message: &str| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!("{message}: send your address and password with HTTP Basic authentication"),
            )
            .with_challenge("Basic realm=\"wmail\", charset=\"UTF-8\"")
        };
        // RFC 7617 §2: the scheme name is case-insensitive.
        let encoded = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
            .map(|(_, credentials)| credentials)
            .ok_or_else(|| unauthorized("not logged in"))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| unauthorized("malformed credentials"))?;
        let (address, password) = decoded.split_once(':').ok_or_else(|| unauthorized("malformed credentials"))?;
        // The per-address lockout needs the client's address (set by the server, after any
        // PROXY header); without it only the per-account lockout applies.
        let client = parts.extensions.get::<crate::ClientAddr>().map(|client| client.0.ip().to_canonical());
        let account = state.core.authenticate(address, password, client).await.map_err(|error| match error.code {
            ErrorCode::Unavailable => ApiError::from(error),
            _ => unauthorized(&error.message),
        })?;
        if !state.core.may_use(&account, Service::Web).unwrap_or(false) {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "web access is disabled for this account"));
        }
        Ok(User(account))
    }
}

/// Routes of `/user/v1`.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/search", get(search))
        .route("/quarantine", get(list_quarantined))
        .route("/quarantine/{id}", delete(drop_quarantined))
        .route("/quarantine/{id}/release", post(release_quarantined))
        .route("/allowed-senders", get(list_allowed_senders).post(allow_sender))
        .route("/allowed-senders/{sender}", delete(disallow_sender))
}

/// Ranked search of the account's own mail: `?q=` in the query language of the webmail's
/// search box (words, "phrases", from: to: subject: body: filename: in: has:attachment
/// before: after:, -exclusion), `&limit=` (default 20); hits with highlighted snippets.
async fn search(
    State(state): State<Arc<AppState>>,
    User(account): User,
    Query(query): Query<SearchQuery>,
) -> Result<Json<Vec<wmail_core::SearchHit>>, ApiError> {
    Ok(Json(state.core.search_messages(account.id, &query.q, query.limit.unwrap_or(20)).await?))
}

async fn list_quarantined(
    State(state): State<Arc<AppState>>,
    User(account): User,
) -> Result<Json<Vec<wmail_core::QuarantineEntry>>, ApiError> {
    state.core.read_barrier().await?;
    Ok(Json(state.core.quarantined(&account.address)?))
}

/// One of the account's own held messages.
fn own(state: &AppState, account: &Account, id: u64) -> Result<wmail_core::QuarantineEntry, ApiError> {
    state
        .core
        .quarantined(&account.address)?
        .into_iter()
        .find(|entry| entry.id == id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no quarantined message {id}")))
}

async fn release_quarantined(
    State(state): State<Arc<AppState>>,
    User(account): User,
    Path(id): Path<u64>,
) -> Result<StatusCode, ApiError> {
    // Only an administrator may let a virus through.
    if own(&state, &account, id)?.reason.starts_with("virus") {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this message was held for a virus; only an administrator can release it",
        ));
    }
    state.core.release_quarantined(&account.address, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn drop_quarantined(
    State(state): State<Arc<AppState>>,
    User(account): User,
    Path(id): Path<u64>,
) -> Result<StatusCode, ApiError> {
    own(&state, &account, id)?;
    state.core.drop_quarantined(&account.address, vec![id]).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_allowed_senders(
    State(state): State<Arc<AppState>>,
    User(account): User,
) -> Result<Json<Vec<String>>, ApiError> {
    Ok(Json(state.core.allowed_senders(&account.address)?))
}

async fn allow_sender(
    State(state): State<Arc<AppState>>,
    User(account): User,
    JsonBody(body): JsonBody<SenderBody>,
) -> Result<StatusCode, ApiError> {
    state.core.set_allowed_sender(&account.address, &body.sender, true).await?;
    Ok(StatusCode::CREATED)
}

async fn disallow_sender(
    State(state): State<Arc<AppState>>,
    User(account): User,
    Path(sender): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.core.set_allowed_sender(&account.address, &sender, false).await?;
    Ok(StatusCode::NO_CONTENT)
}
