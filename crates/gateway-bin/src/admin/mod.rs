//! The admin API: its own listener (loopback by default), a bearer admin token, JSON.
//! Every change is validated against the whole config first (a bad one is a 422 that
//! lists every problem, and nothing is written), then written with an audit entry and a
//! version bump, then applied here at once; other replicas follow through the store
//! (see [`crate::tenancy`]).
//!
//! | route | what |
//! |---|---|
//! | `GET/POST /admin/channels`, `GET/PUT/DELETE /admin/channels/{id}`, `POST /admin/channels/{id}/test` | channels (credentials masked) |
//! | `GET/POST /admin/presets`, `GET/PUT/DELETE /admin/presets/{name}` | presets |
//! | `GET/POST /admin/keys`, `GET/PATCH/DELETE /admin/keys/{id}`, `POST /admin/keys/{id}/revoke` | API keys (the key is shown once, on create) |
//! | `GET /admin/pricing`, `PUT/DELETE /admin/pricing/{model}` | prices, USD per million tokens |
//! | `GET/POST /admin/plugins`, `DELETE /admin/plugins/{sha256}` | `.wasm` artifacts by SHA-256 (stored and listed only) |
//! | `GET /admin/usage?group_by=key|preset|channel|model&from=&to=&key=` | usage totals and cost |
//! | `GET /admin/audit`, `GET /admin/metrics` | audit log; usage writer and plugin metrics (Prometheus text) |

mod error;
pub mod ops;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use relay_core::{ChannelConfig, PresetConfig};
use relay_store::model::UsageGroup;
use relay_store::{Price, now_ms};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

pub use error::AdminError;
use ops::KeySpec;

use crate::server::Gateway;
use crate::tenancy::Tenancy;

const ACTOR: &str = "admin-api";
/// Largest plugin artifact accepted.
pub const MAX_PLUGIN_BYTES: usize = 64 * 1024 * 1024;

#[derive(Clone)]
struct AdminState {
    gateway: Arc<Gateway>,
    tenancy: Arc<Tenancy>,
    token: Arc<str>,
}

type Result<T> = std::result::Result<T, AdminError>;

/// Bind `addr` and serve the admin API in the background; returns the bound address.
pub async fn spawn(
    gateway: Arc<Gateway>,
    tenancy: Arc<Tenancy>,
    addr: SocketAddr,
    token: String,
) -> std::result::Result<SocketAddr, String> {
    if token.len() < 16 {
        return Err("the admin token must be at least 16 characters".into());
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} (admin): {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    if !local.ip().is_loopback() {
        tracing::warn!(addr = %local, "the admin API listens beyond loopback");
    }
    let app = router(AdminState {
        gateway,
        tenancy,
        token: token.into(),
    });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "admin listener failed");
        }
    });
    tracing::info!(addr = %local, "admin API on http://{local}/admin");
    Ok(local)
}

fn router(state: AdminState) -> Router {
    Router::new()
        .route("/admin/channels", get(list_channels).post(create_channel))
        .route(
            "/admin/channels/{id}",
            get(get_channel).put(put_channel).delete(delete_channel),
        )
        .route("/admin/channels/{id}/test", post(test_channel))
        .route("/admin/presets", get(list_presets).post(create_preset))
        .route(
            "/admin/presets/{name}",
            get(get_preset).put(put_preset).delete(delete_preset),
        )
        .route("/admin/keys", get(list_keys).post(create_key))
        .route(
            "/admin/keys/{id}",
            get(get_key).patch(patch_key).delete(delete_key),
        )
        .route("/admin/keys/{id}/revoke", post(revoke_key))
        .route("/admin/pricing", get(list_prices))
        .route(
            "/admin/pricing/{model}",
            put(put_price).delete(delete_price),
        )
        .route("/admin/plugins", get(list_plugins).post(upload_plugin))
        .route(
            "/admin/plugins/{sha256}",
            axum::routing::delete(delete_plugin),
        )
        .route("/admin/usage", get(usage))
        .route("/admin/audit", get(audit))
        .route("/admin/metrics", get(metrics))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_PLUGIN_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

async fn require_token(State(s): State<AdminState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(presented.as_bytes().ct_eq(s.token.as_bytes())) {
        next.run(req).await
    } else {
        AdminError::unauthorized().into_response()
    }
}

/// Apply the store's config here now (other replicas follow by themselves).
async fn apply(s: &AdminState) -> Result<()> {
    s.tenancy
        .reload(&s.gateway)
        .await
        .map_err(|e| AdminError::new(StatusCode::INTERNAL_SERVER_ERROR, "reload_failed", e))
}

fn file_settings(
    s: &AdminState,
) -> (
    relay_core::config::Defaults,
    relay_core::config::UpstreamSettings,
) {
    let relay = s.tenancy.relay_config(Vec::new(), Vec::new());
    (relay.defaults, relay.upstream)
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| AdminError::bad_request(format!("invalid JSON body: {e}")))
}

// ---- channels ----------------------------------------------------------------------------

async fn list_channels(State(s): State<AdminState>) -> Result<Json<Value>> {
    let rows = s.tenancy.store().channels().await?;
    Ok(Json(json!({"channels": rows.iter().map(|c| {
        let mut v = ops::masked_channel(&c.config);
        v["owner"] = json!(c.owner);
        v
    }).collect::<Vec<_>>()})))
}

async fn get_channel(State(s): State<AdminState>, Path(id): Path<String>) -> Result<Json<Value>> {
    let c = s
        .tenancy
        .store()
        .channel(&id)
        .await?
        .ok_or_else(|| AdminError::not_found(format!("channel {id:?}")))?;
    let mut v = ops::masked_channel(&c.config);
    v["owner"] = json!(c.owner);
    Ok(Json(v))
}

async fn create_channel(
    State(s): State<AdminState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>)> {
    let c: ChannelConfig = parse_json(&body)?;
    save_channel(&s, c).await.map(|v| (StatusCode::CREATED, v))
}

async fn put_channel(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>> {
    let c: ChannelConfig = parse_json(&body)?;
    if c.id != id {
        return Err(AdminError::bad_request(format!(
            "the body's id {:?} is not the path's {id:?}",
            c.id
        )));
    }
    save_channel(&s, c).await
}

async fn save_channel(s: &AdminState, c: ChannelConfig) -> Result<Json<Value>> {
    let (defaults, upstream) = file_settings(s);
    ops::check_channel_change(s.tenancy.store(), &c.id, Some(&c), defaults, upstream).await?;
    s.tenancy.store().put_channel(&c, ACTOR).await?;
    apply(s).await?;
    Ok(Json(ops::masked_channel(&c)))
}

async fn delete_channel(State(s): State<AdminState>, Path(id): Path<String>) -> Result<StatusCode> {
    let (defaults, upstream) = file_settings(&s);
    ops::check_channel_change(s.tenancy.store(), &id, None, defaults, upstream).await?;
    if !s.tenancy.store().delete_channel(&id, ACTOR).await? {
        return Err(AdminError::not_found(format!("channel {id:?}")));
    }
    apply(&s).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct TestQuery {
    model: Option<String>,
}

async fn test_channel(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    Query(q): Query<TestQuery>,
) -> Result<Json<ops::ChannelTest>> {
    // The live channel: its resolved base URL (built-in mocks included).
    let table = s.gateway.relay().table();
    let ch = table
        .channel(&id)
        .ok_or_else(|| AdminError::not_found(format!("channel {id:?} (in the running config)")))?;
    let mut config = ch.config.clone();
    config.base_url = Some(ch.base_url.clone());
    config.enabled = true;
    Ok(Json(ops::test_channel(config, q.model).await?))
}

// ---- presets -----------------------------------------------------------------------------

async fn list_presets(State(s): State<AdminState>) -> Result<Json<Value>> {
    let rows = s.tenancy.store().presets().await?;
    Ok(Json(json!({"presets": rows.iter().map(|p| {
        let mut v = serde_json::to_value(&p.config).unwrap_or(Value::Null);
        v["owner"] = json!(p.owner);
        v
    }).collect::<Vec<_>>()})))
}

async fn get_preset(State(s): State<AdminState>, Path(name): Path<String>) -> Result<Json<Value>> {
    let rows = s.tenancy.store().presets().await?;
    let p = rows
        .into_iter()
        .find(|p| p.config.name == name)
        .ok_or_else(|| AdminError::not_found(format!("preset {name:?}")))?;
    let mut v = serde_json::to_value(&p.config).unwrap_or(Value::Null);
    v["owner"] = json!(p.owner);
    Ok(Json(v))
}

async fn create_preset(
    State(s): State<AdminState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>)> {
    let p: PresetConfig = parse_json(&body)?;
    save_preset(&s, p).await.map(|v| (StatusCode::CREATED, v))
}

async fn put_preset(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>> {
    let p: PresetConfig = parse_json(&body)?;
    if p.name != name {
        return Err(AdminError::bad_request(format!(
            "the body's name {:?} is not the path's {name:?}",
            p.name
        )));
    }
    save_preset(&s, p).await
}

async fn save_preset(s: &AdminState, p: PresetConfig) -> Result<Json<Value>> {
    let (defaults, upstream) = file_settings(s);
    ops::check_preset_change(s.tenancy.store(), &p.name, Some(&p), defaults, upstream).await?;
    s.tenancy.store().put_preset(&p, ACTOR).await?;
    apply(s).await?;
    Ok(Json(serde_json::to_value(&p).unwrap_or(Value::Null)))
}

async fn delete_preset(
    State(s): State<AdminState>,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    if !s.tenancy.store().delete_preset(&name, ACTOR).await? {
        return Err(AdminError::not_found(format!("preset {name:?}")));
    }
    apply(&s).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- keys --------------------------------------------------------------------------------

async fn list_keys(State(s): State<AdminState>) -> Result<Json<Value>> {
    Ok(Json(json!({"keys": s.tenancy.store().keys().await?})))
}

async fn get_key(State(s): State<AdminState>, Path(id): Path<String>) -> Result<Json<Value>> {
    let k = s
        .tenancy
        .store()
        .key(&id)
        .await?
        .ok_or_else(|| AdminError::not_found(format!("key {id:?}")))?;
    Ok(Json(json!(k)))
}

async fn create_key(State(s): State<AdminState>, body: Bytes) -> Result<(StatusCode, Json<Value>)> {
    let spec: KeySpec = parse_json(&body)?;
    let created = ops::create_key(s.tenancy.store(), &spec, ACTOR).await?;
    apply(&s).await?;
    Ok((StatusCode::CREATED, Json(json!(created))))
}

async fn patch_key(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>> {
    let spec: KeySpec = parse_json(&body)?;
    if spec.name.as_deref().is_some_and(|n| n != id) {
        return Err(AdminError::bad_request("a key cannot be renamed"));
    }
    let record = ops::update_key(s.tenancy.store(), &id, &spec, ACTOR).await?;
    apply(&s).await?;
    Ok(Json(json!(record)))
}

async fn revoke_key(State(s): State<AdminState>, Path(id): Path<String>) -> Result<StatusCode> {
    if !s.tenancy.store().revoke_key(&id, ACTOR).await? {
        return Err(AdminError::not_found(format!("key {id:?}")));
    }
    apply(&s).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_key(State(s): State<AdminState>, Path(id): Path<String>) -> Result<StatusCode> {
    if !s.tenancy.store().delete_key(&id, ACTOR).await? {
        return Err(AdminError::not_found(format!("key {id:?}")));
    }
    apply(&s).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- pricing -----------------------------------------------------------------------------

async fn list_prices(State(s): State<AdminState>) -> Result<Json<Value>> {
    let prices = s.tenancy.store().prices().await?;
    Ok(Json(
        json!({"pricing": prices.into_iter().map(|(model, p)| {
        let mut v = json!(p);
        v["model"] = json!(model);
        v
    }).collect::<Vec<_>>()}),
    ))
}

async fn put_price(
    State(s): State<AdminState>,
    Path(model): Path<String>,
    body: Bytes,
) -> Result<Json<Value>> {
    let p: Price = parse_json(&body)?;
    let fields = [p.input_per_mtok, p.output_per_mtok, p.cached_input_per_mtok];
    if fields.iter().any(|v| !v.is_finite() || *v < 0.0) {
        return Err(AdminError::bad_request(
            "prices must be non-negative numbers (USD per million tokens)",
        ));
    }
    s.tenancy.store().put_price(&model, &p, ACTOR).await?;
    apply(&s).await?;
    Ok(Json(json!(p)))
}

async fn delete_price(
    State(s): State<AdminState>,
    Path(model): Path<String>,
) -> Result<StatusCode> {
    if !s.tenancy.store().delete_price(&model, ACTOR).await? {
        return Err(AdminError::not_found(format!("price of {model:?}")));
    }
    apply(&s).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- plugins -----------------------------------------------------------------------------

async fn list_plugins(State(s): State<AdminState>) -> Result<Json<Value>> {
    Ok(Json(json!({"plugins": s.tenancy.store().plugins().await?})))
}

#[derive(Deserialize)]
struct PluginQuery {
    name: String,
    version: String,
}

async fn upload_plugin(
    State(s): State<AdminState>,
    Query(q): Query<PluginQuery>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>)> {
    if !body.starts_with(b"\0asm") {
        return Err(AdminError::bad_request(
            "the body is not a WebAssembly binary (no \\0asm magic)",
        ));
    }
    if q.name.trim().is_empty() || q.version.trim().is_empty() {
        return Err(AdminError::bad_request("`name` and `version` are required"));
    }
    let info = s
        .tenancy
        .store()
        .put_plugin(&q.name, &q.version, &body, ACTOR)
        .await?;
    Ok((StatusCode::CREATED, Json(json!(info))))
}

async fn delete_plugin(State(s): State<AdminState>, Path(sha): Path<String>) -> Result<StatusCode> {
    if !s.tenancy.store().delete_plugin(&sha, ACTOR).await? {
        return Err(AdminError::not_found(format!("plugin {sha}")));
    }
    Ok(StatusCode::NO_CONTENT)
}

// ---- usage, audit, metrics ---------------------------------------------------------------

#[derive(Deserialize)]
struct UsageQuery {
    group_by: Option<String>,
    from: Option<i64>,
    to: Option<i64>,
    key: Option<String>,
}

async fn usage(State(s): State<AdminState>, Query(q): Query<UsageQuery>) -> Result<Json<Value>> {
    let group = match q.group_by.as_deref() {
        None => UsageGroup::Key,
        Some(g) => UsageGroup::parse(g).ok_or_else(|| {
            AdminError::bad_request(format!("group_by {g:?}: use key, preset, channel or model"))
        })?,
    };
    let to = q.to.unwrap_or_else(|| now_ms() + 1);
    let from = q.from.unwrap_or(to - 24 * 3600 * 1000);
    if from > to {
        return Err(AdminError::bad_request("`from` is after `to`"));
    }
    let report = s
        .tenancy
        .store()
        .usage_report(group, from, to, q.key.as_deref())
        .await?;
    Ok(Json(json!(report)))
}

async fn audit(State(s): State<AdminState>) -> Result<Json<Value>> {
    Ok(Json(
        json!({"audit": s.tenancy.store().audit_log(200).await?}),
    ))
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        format!(
            "{}{}",
            s.tenancy.writer().prometheus(),
            s.gateway.plugin_metrics()
        ),
    )
}
