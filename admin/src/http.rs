//! The admin API over HTTP/JSON: routes, bearer-token auth, request
//! validation, the OpenAPI document and the Prometheus metrics. Every answer
//! but `/metrics` (text), errors included, is JSON; the [`Admin`]
//! implementation only ever sees validated patches and history queries.

use crate::alerts::{AlertRuleView, AlertState, AlertView, AlertsResponse};
use crate::history::{HistoryMetric, HistoryMetrics, HistoryQuery, HistoryResponse, HistorySeries, HistoryTier};
use crate::model::{
    AccessOverview, Admin, AdminError, ErrorBody, GpuPatch, GpuView, Health, VmAccess, VmAccessUpdate, VmPatch, VmView,
    MAX_MEMORY_LIMIT_BYTES, MAX_OVERCOMMIT_RATIO, MAX_VM_NAME, MIN_MEMORY_LIMIT_BYTES, MIN_OVERCOMMIT_RATIO,
};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use protocol::control::{
    MAX_PRIORITY, MAX_QUEUED_OPS, MAX_SLICE_US, MAX_WEIGHT, MIN_PRIORITY, MIN_QUEUED_OPS, MIN_SLICE_US, MIN_WEIGHT,
};
use serde::de::DeserializeOwned;
use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Instant;
use subtle::ConstantTimeEq;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;

/// Largest request body accepted; patches are a few dozen bytes.
const MAX_BODY: usize = 64 * 1024;

/// How requests to the `/v1` routes (other than health) and `/metrics` are
/// authenticated.
#[derive(Clone)]
pub enum Auth {
    /// `Authorization: Bearer <token>` with exactly this token.
    Token(String),
    /// No authentication: only when the host admin explicitly disabled it.
    None,
}

impl std::fmt::Debug for Auth {
    // The token must never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Token(_) => f.write_str("Token(<redacted>)"),
            Auth::None => f.write_str("None"),
        }
    }
}

/// The admin API's routes over `admin`.
pub fn router(admin: Arc<dyn Admin>, auth: Auth) -> Router {
    let api = Router::new()
        .route("/v1/gpus", get(list_gpus))
        .route("/v1/gpus/{id}", get(get_gpu).patch(patch_gpu))
        .route("/v1/vms", get(list_vms))
        .route("/v1/vms/{name}", get(get_vm).patch(patch_vm))
        .route("/v1/vms/{name}/drain", post(drain_vm))
        .route("/v1/vms/{name}/resume", post(resume_vm))
        .route("/v1/vms/{name}/access", get(get_vm_access).put(put_vm_access))
        .route("/v1/access", get(access))
        .route("/metrics", get(metrics))
        .route("/v1/history", get(history))
        .route("/v1/history/metrics", get(history_metrics))
        .route("/v1/alerts", get(alerts))
        .method_not_allowed_fallback(method_not_allowed);
    let api = match auth {
        Auth::Token(token) => {
            if token.is_empty() {
                tracing::warn!("admin API token is empty: every authenticated request will be refused");
            }
            api.route_layer(middleware::from_fn_with_state(Arc::new(token), require_token))
        }
        Auth::None => {
            tracing::warn!("admin API authentication is disabled");
            api
        }
    };
    Router::new()
        .route("/v1/health", get(health))
        .route("/openapi.json", get(openapi_json))
        .method_not_allowed_fallback(method_not_allowed)
        .merge(api)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(log_request))
        .with_state(admin)
}

/// Serves the admin API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    admin: Arc<dyn Admin>,
    auth: Auth,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin API listening");
    }
    axum::serve(listener, router(admin, auth)).with_graceful_shutdown(shutdown).await
}

/// The OpenAPI document of this API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    // A patch must change something (the handlers answer 422 otherwise);
    // utoipa's derive does not carry `minProperties` on structs.
    if let Some(components) = doc.components.as_mut() {
        for name in ["VmPatch", "GpuPatch"] {
            if let Some(utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Object(o))) =
                components.schemas.get_mut(name)
            {
                o.min_properties = Some(1);
            }
        }
    }
    doc
}

/// An error answer: a status and the JSON body every error carries.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    error: String,
    field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, error: impl Into<String>, field: Option<String>) -> ApiError {
        ApiError { status, error: error.into(), field }
    }

    fn invalid(field: &str, message: impl Display) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("{field}: {message}"), Some(field.to_owned()))
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> ApiError {
        let message = e.to_string();
        match e {
            AdminError::NotFound { .. } => ApiError::new(StatusCode::NOT_FOUND, message, None),
            AdminError::InvalidField { field, .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message, Some(field))
            }
            AdminError::Internal(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message, None),
            AdminError::Unavailable(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message, None),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let unauthorized = self.status == StatusCode::UNAUTHORIZED;
        let mut resp = (self.status, Json(ErrorBody { error: self.error, field: self.field })).into_response();
        if unauthorized {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// A JSON request body whose errors name the offending field: serde's own
/// messages, with the path serde_path_to_error tracked, as a 400.
struct JsonBody<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "request body must be JSON (Content-Type: application/json)",
                None,
            ));
        }
        let body = Bytes::from_request(req, state).await.map_err(|e: BytesRejection| {
            ApiError::new(e.status(), format!("could not read the request body: {}", e.body_text()), None)
        })?;
        parse_json(&body).map(JsonBody)
    }
}

/// Query parameters whose errors name the parameter, as a 400 with the
/// JSON body every error has (axum's own `Query` answers plain text).
struct QueryParams<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de).map(QueryParams).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().to_string();
            // Unknown and missing parameters are reported while reading the
            // keys, before the path has them: the name is between backticks.
            let named = ["unknown field `", "missing field `", "duplicate field `"]
                .iter()
                .find_map(|p| message.strip_prefix(p))
                .and_then(|rest| rest.split('`').next())
                .map(str::to_owned);
            match (named, path) {
                (Some(field), _) => ApiError::new(StatusCode::BAD_REQUEST, message, Some(field)),
                (None, path) if path != "." => {
                    ApiError::new(StatusCode::BAD_REQUEST, format!("{path}: {message}"), Some(path))
                }
                _ => ApiError::new(StatusCode::BAD_REQUEST, format!("query: {message}"), None),
            }
        })
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mime = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Parses `body` as a `T`, turning serde's error into a 400 that names the field.
fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        json_error(e.into_inner(), (path != ".").then_some(path))
    })?;
    de.end().map_err(|e| json_error(e, None))?;
    Ok(value)
}

fn json_error(e: serde_json::Error, path: Option<String>) -> ApiError {
    use serde_json::error::Category;
    let full = e.to_string();
    let location = format!(" at line {} column {}", e.line(), e.column());
    let message = full.strip_suffix(&location).unwrap_or(&full);
    match e.classify() {
        Category::Data => {
            // serde reports an unknown field while reading its key, before the
            // path has it: the name is in the message, between backticks.
            let named = ["unknown field `", "missing field `"]
                .iter()
                .find_map(|p| message.strip_prefix(p))
                .and_then(|rest| rest.split('`').next());
            if let Some(name) = named {
                return ApiError::new(StatusCode::BAD_REQUEST, message, Some(name.to_owned()));
            }
            match path {
                Some(field) => ApiError::new(StatusCode::BAD_REQUEST, format!("{field}: {message}"), Some(field)),
                None => ApiError::new(StatusCode::BAD_REQUEST, format!("request body: {message}"), None),
            }
        }
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {full}"), path)
        }
    }
}

fn check_range<T: PartialOrd + Display>(field: &str, value: T, min: T, max: T) -> Result<(), ApiError> {
    if value < min || value > max {
        return Err(ApiError::invalid(field, format_args!("must be between {min} and {max}, got {value}")));
    }
    Ok(())
}

fn nothing_to_change(fields: &str) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("nothing to change: give at least one of {fields}"), None)
}

fn validate_vm_patch(p: &VmPatch) -> Result<(), ApiError> {
    if p.class.is_none() && p.weight.is_none() && p.priority.is_none() && p.slice_us.is_none() {
        return Err(nothing_to_change("class, weight, priority, slice_us"));
    }
    if let Some(w) = p.weight {
        check_range("weight", w, MIN_WEIGHT, MAX_WEIGHT)?;
    }
    if let Some(prio) = p.priority {
        check_range("priority", prio, MIN_PRIORITY, MAX_PRIORITY)?;
    }
    if let Some(Some(slice)) = p.slice_us {
        check_range("slice_us", slice, MIN_SLICE_US, MAX_SLICE_US)?;
    }
    Ok(())
}

fn validate_gpu_patch(p: &GpuPatch) -> Result<(), ApiError> {
    if p.slice_us.is_none()
        && p.max_queued_ops.is_none()
        && p.overcommit_ratio.is_none()
        && p.memory_limit_bytes.is_none()
    {
        return Err(nothing_to_change("slice_us, max_queued_ops, overcommit_ratio, memory_limit_bytes"));
    }
    if let Some(slice) = p.slice_us {
        check_range("slice_us", slice, MIN_SLICE_US, MAX_SLICE_US)?;
    }
    if let Some(ops) = p.max_queued_ops {
        check_range("max_queued_ops", ops, MIN_QUEUED_OPS, MAX_QUEUED_OPS)?;
    }
    if let Some(ratio) = p.overcommit_ratio {
        check_range("overcommit_ratio", ratio, MIN_OVERCOMMIT_RATIO, MAX_OVERCOMMIT_RATIO)?;
    }
    if let Some(Some(limit)) = p.memory_limit_bytes {
        check_range("memory_limit_bytes", limit, MIN_MEMORY_LIMIT_BYTES, MAX_MEMORY_LIMIT_BYTES)?;
    }
    Ok(())
}

/// A VM name in a path: the access routes take names of VMs that have not
/// registered yet, so a name no VM could have is refused rather than not found.
fn validate_vm_name(name: &str) -> Result<(), ApiError> {
    if !crate::model::valid_vm_name(name) {
        return Err(ApiError::invalid(
            "name",
            format_args!("{name:?} is not a VM name (1 to {MAX_VM_NAME} characters of A-Z a-z 0-9 . _ -)"),
        ));
    }
    Ok(())
}

fn validate_access(u: &VmAccessUpdate) -> Result<(), ApiError> {
    match &u.allowed_gpus {
        Some(list) => crate::model::check_allowed_gpus(list).map_err(|e| ApiError::invalid("allowed_gpus", e)),
        None => Ok(()),
    }
}

/// Runs one `Admin` call off the async workers: the daemon's implementation
/// may take locks or write its database.
async fn call<T: Send + 'static>(
    admin: Arc<dyn Admin>,
    f: impl FnOnce(&dyn Admin) -> Result<T, AdminError> + Send + 'static,
) -> Result<Json<T>, ApiError> {
    match tokio::task::spawn_blocking(move || f(admin.as_ref())).await {
        Ok(result) => Ok(Json(result?)),
        Err(e) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("admin call failed: {e}"), None)),
    }
}

async fn require_token(State(token): State<Arc<String>>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    match presented {
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing bearer token: send Authorization: Bearer <admin token>",
            None,
        )
        .into_response(),
        Some(t) if !t.is_empty() && bool::from(t.as_bytes().ct_eq(token.as_bytes())) => next.run(req).await,
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "invalid bearer token", None).into_response(),
    }
}

async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let start = Instant::now();
    let resp = next.run(req).await;
    tracing::debug!(
        %method,
        %path,
        status = resp.status().as_u16(),
        elapsed_us = start.elapsed().as_micros() as u64,
        "admin request"
    );
    resp
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no route {} {}", req.method(), req.uri().path()), None)
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {} not allowed on {}", req.method(), req.uri().path()),
        None,
    )
}

/// Whether the daemon answers; needs no token.
#[utoipa::path(get, path = "/v1/health", tag = "health", security(()),
    responses((status = 200, description = "The daemon is up", body = Health)))]
async fn health() -> Json<Health> {
    Json(Health { status: "ok".to_owned(), version: env!("CARGO_PKG_VERSION").to_owned() })
}

static OPENAPI_JSON: LazyLock<String> =
    LazyLock::new(|| openapi().to_pretty_json().unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")));

/// This document; needs no token.
#[utoipa::path(get, path = "/openapi.json", tag = "health", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document of the admin API", content_type = "application/json")))]
async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON.as_str()).into_response()
}

/// All GPUs the daemon schedules, with their defaults and how busy they are.
#[utoipa::path(get, path = "/v1/gpus", tag = "gpus", security(("bearer" = [])),
    responses(
        (status = 200, description = "The GPUs", body = Vec<GpuView>),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    ))]
async fn list_gpus(State(admin): State<Arc<dyn Admin>>) -> Result<Json<Vec<GpuView>>, ApiError> {
    call(admin, |a| Ok(a.gpus())).await
}

/// One GPU.
#[utoipa::path(get, path = "/v1/gpus/{id}", tag = "gpus", security(("bearer" = [])),
    params(("id" = String, Path, description = "The GPU's UUID (`GPU-...`), or `sim`")),
    responses(
        (status = 200, description = "The GPU", body = GpuView),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such GPU", body = ErrorBody),
    ))]
async fn get_gpu(State(admin): State<Arc<dyn Admin>>, Path(id): Path<String>) -> Result<Json<GpuView>, ApiError> {
    call(admin, move |a| a.gpu(&id)).await
}

/// Changes a GPU's scheduling defaults (for VMs without their own), which
/// take effect within one slice, or its memory settings: the overcommit
/// ratio applies to VMs that register from then on, a memory limit at once.
#[utoipa::path(patch, path = "/v1/gpus/{id}", tag = "gpus", security(("bearer" = [])),
    params(("id" = String, Path, description = "The GPU's UUID (`GPU-...`), or `sim`")),
    request_body = GpuPatch,
    responses(
        (status = 200, description = "The GPU with the change applied", body = GpuView),
        (status = 400, description = "Malformed JSON, an unknown field or a value of the wrong type; `field` names it", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such GPU", body = ErrorBody),
        (status = 415, description = "The body is not JSON", body = ErrorBody),
        (status = 422, description = "A value out of range (`field` names it), or nothing to change", body = ErrorBody),
        (status = 500, description = "The daemon could not apply the change", body = ErrorBody),
    ))]
async fn patch_gpu(
    State(admin): State<Arc<dyn Admin>>,
    Path(id): Path<String>,
    JsonBody(patch): JsonBody<GpuPatch>,
) -> Result<Json<GpuView>, ApiError> {
    validate_gpu_patch(&patch)?;
    call(admin, move |a| a.update_gpu(&id, patch)).await
}

/// All VMs registered with the daemon, connected or not.
#[utoipa::path(get, path = "/v1/vms", tag = "vms", security(("bearer" = [])),
    responses(
        (status = 200, description = "The VMs", body = Vec<VmView>),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    ))]
async fn list_vms(State(admin): State<Arc<dyn Admin>>) -> Result<Json<Vec<VmView>>, ApiError> {
    call(admin, |a| Ok(a.vms())).await
}

/// One VM: its settings, state and measured figures.
#[utoipa::path(get, path = "/v1/vms/{name}", tag = "vms", security(("bearer" = [])),
    params(("name" = String, Path, description = "The VM's name")),
    responses(
        (status = 200, description = "The VM", body = VmView),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such VM", body = ErrorBody),
    ))]
async fn get_vm(State(admin): State<Arc<dyn Admin>>, Path(name): Path<String>) -> Result<Json<VmView>, ApiError> {
    call(admin, move |a| a.vm(&name)).await
}

/// Changes a VM's QoS settings; they take effect within one slice.
#[utoipa::path(patch, path = "/v1/vms/{name}", tag = "vms", security(("bearer" = [])),
    params(("name" = String, Path, description = "The VM's name")),
    request_body = VmPatch,
    responses(
        (status = 200, description = "The VM with the change applied", body = VmView),
        (status = 400, description = "Malformed JSON, an unknown field, an unknown class or a value of the wrong type; `field` names it", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such VM", body = ErrorBody),
        (status = 415, description = "The body is not JSON", body = ErrorBody),
        (status = 422, description = "A value out of range (`field` names it), or nothing to change", body = ErrorBody),
        (status = 500, description = "The daemon could not apply the change", body = ErrorBody),
    ))]
async fn patch_vm(
    State(admin): State<Arc<dyn Admin>>,
    Path(name): Path<String>,
    JsonBody(patch): JsonBody<VmPatch>,
) -> Result<Json<VmView>, ApiError> {
    validate_vm_patch(&patch)?;
    call(admin, move |a| a.update_vm(&name, patch)).await
}

/// Drains a VM: it gets no more grants and its guest's GPU work waits (no
/// error) until it is resumed.
#[utoipa::path(post, path = "/v1/vms/{name}/drain", tag = "vms", security(("bearer" = [])),
    params(("name" = String, Path, description = "The VM's name")),
    responses(
        (status = 200, description = "The drained VM", body = VmView),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such VM", body = ErrorBody),
        (status = 500, description = "The daemon could not apply the change", body = ErrorBody),
    ))]
async fn drain_vm(State(admin): State<Arc<dyn Admin>>, Path(name): Path<String>) -> Result<Json<VmView>, ApiError> {
    call(admin, move |a| a.set_drained(&name, true)).await
}

/// Resumes a drained VM: it gets grants again.
#[utoipa::path(post, path = "/v1/vms/{name}/resume", tag = "vms", security(("bearer" = [])),
    params(("name" = String, Path, description = "The VM's name")),
    responses(
        (status = 200, description = "The resumed VM", body = VmView),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such VM", body = ErrorBody),
        (status = 500, description = "The daemon could not apply the change", body = ErrorBody),
    ))]
async fn resume_vm(State(admin): State<Arc<dyn Admin>>, Path(name): Path<String>) -> Result<Json<VmView>, ApiError> {
    call(admin, move |a| a.set_drained(&name, false)).await
}

/// gpuvisord's default for VMs without a GPU access list (`--gpu-access`)
/// and every VM it knows or holds a list for.
#[utoipa::path(get, path = "/v1/access", tag = "access", security(("bearer" = [])),
    responses(
        (status = 200, description = "The mode and the VMs' access", body = AccessOverview),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    ))]
async fn access(State(admin): State<Arc<dyn Admin>>) -> Result<Json<AccessOverview>, ApiError> {
    call(admin, |a| a.access()).await
}

/// Which GPUs a VM may use; the VM need not have registered yet.
#[utoipa::path(get, path = "/v1/vms/{name}/access", tag = "access", security(("bearer" = [])),
    params(("name" = String, Path, description = "The VM's name", pattern = "^[A-Za-z0-9._-]{1,64}$")),
    responses(
        (status = 200, description = "The VM's access", body = VmAccess),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 422, description = "Not a VM name; `field` is `name`", body = ErrorBody),
    ))]
async fn get_vm_access(
    State(admin): State<Arc<dyn Admin>>,
    Path(name): Path<String>,
) -> Result<Json<VmAccess>, ApiError> {
    validate_vm_name(&name)?;
    call(admin, move |a| a.vm_access(&name)).await
}

/// Sets which GPUs (or MIG instances) a VM may use, replacing its list; the
/// VM need not have registered yet (with `--gpu-access closed`, it must be
/// allowed a GPU before its first registration). A backend whose GPU the
/// VM may not use is refused when it registers. A registered VM whose GPU
/// the new list leaves out gets no more grants from now on (its GPU work
/// waits, as when drained) and is refused at its next registration; listing
/// the GPU again lets it run at once.
#[utoipa::path(put, path = "/v1/vms/{name}/access", tag = "access", security(("bearer" = [])),
    params(("name" = String, Path, description = "The VM's name", pattern = "^[A-Za-z0-9._-]{1,64}$")),
    request_body = VmAccessUpdate,
    responses(
        (status = 200, description = "The VM's access with the change applied", body = VmAccess),
        (status = 400, description = "Malformed JSON, an unknown or missing field or a value of the wrong type; `field` names it", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 415, description = "The body is not JSON", body = ErrorBody),
        (status = 422, description = "Not a VM name (`field`: `name`), or a list that is not distinct GPU ids or [\"*\"] alone (`field`: `allowed_gpus`)", body = ErrorBody),
        (status = 500, description = "The daemon could not store the change", body = ErrorBody),
    ))]
async fn put_vm_access(
    State(admin): State<Arc<dyn Admin>>,
    Path(name): Path<String>,
    JsonBody(update): JsonBody<VmAccessUpdate>,
) -> Result<Json<VmAccess>, ApiError> {
    validate_vm_name(&name)?;
    validate_access(&update)?;
    call(admin, move |a| a.set_vm_access(&name, update.allowed_gpus)).await
}

/// The daemon's figures per VM and per GPU, and NVML's readings, in
/// Prometheus' text exposition format 0.0.4 (docs/metrics.md lists them).
/// Prometheus scrapes it with `authorization: { credentials_file: <state-dir>/admin.token }`.
#[utoipa::path(get, path = "/metrics", tag = "metrics", security(("bearer" = [])),
    responses(
        (status = 200, description = "The metrics, as Prometheus text", body = String,
            content_type = "text/plain; version=0.0.4; charset=utf-8"),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 500, description = "The daemon could not take its figures", body = ErrorBody),
    ))]
async fn metrics(State(admin): State<Arc<dyn Admin>>) -> Result<Response, ApiError> {
    // Off the async workers: the daemon asks each GPU's scheduler and NVML.
    match tokio::task::spawn_blocking(move || crate::metrics::render(&crate::metrics::families(&admin.metrics()))).await
    {
        Ok(text) => Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()),
        Err(e) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("metrics failed: {e}"), None)),
    }
}

/// One metric's stored history, one series per label set, aggregated into
/// steps: gauges and summary quantiles as the mean of each step, counters as
/// their per-second rate over each step (a drop counts as a counter reset).
/// Reads the finest stored level that reaches back to `from` (every sample,
/// or the minute or hour downsampling; `resolution` says which).
#[utoipa::path(get, path = "/v1/history", tag = "telemetry", security(("bearer" = [])),
    params(HistoryQuery),
    responses(
        (status = 200, description = "The metric's series over the range", body = HistoryResponse),
        (status = 400, description = "A parameter of the wrong type, unknown or missing; `from` after `to`; \
            a step that would give more than 11000 points per series. `field` names it", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No stored metric of that name", body = ErrorBody),
        (status = 500, description = "The history could not be read", body = ErrorBody),
        (status = 503, description = "History is off (gpuvisord --telemetry-interval-ms 0)", body = ErrorBody),
    ))]
async fn history(
    State(admin): State<Arc<dyn Admin>>,
    QueryParams(q): QueryParams<HistoryQuery>,
) -> Result<Json<HistoryResponse>, ApiError> {
    let r = q
        .resolve(crate::time::now_unix())
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string(), Some(e.field.to_owned())))?;
    // The daemon answers for exactly the range checked here.
    let q = HistoryQuery { from: Some(r.from), to: Some(r.to), ..q };
    call(admin, move |a| a.history(&q)).await
}

/// The metrics the history holds, with their kind and number of series, and
/// how long each level of it is kept.
#[utoipa::path(get, path = "/v1/history/metrics", tag = "telemetry", security(("bearer" = [])),
    responses(
        (status = 200, description = "The stored metrics", body = HistoryMetrics),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 500, description = "The history could not be read", body = ErrorBody),
        (status = 503, description = "History is off (gpuvisord --telemetry-interval-ms 0)", body = ErrorBody),
    ))]
async fn history_metrics(State(admin): State<Arc<dyn Admin>>) -> Result<Json<HistoryMetrics>, ApiError> {
    call(admin, |a| a.history_metrics()).await
}

/// The alert rules gpuvisord evaluates and their alerts: pending, firing,
/// and resolved in the last day, with when each started, fired and resolved.
#[utoipa::path(get, path = "/v1/alerts", tag = "telemetry", security(("bearer" = [])),
    responses(
        (status = 200, description = "The rules and alerts", body = AlertsResponse),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 500, description = "The alerts could not be read", body = ErrorBody),
    ))]
async fn alerts(State(admin): State<Arc<dyn Admin>>) -> Result<Json<AlertsResponse>, ApiError> {
    call(admin, |a| a.alerts()).await
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "gpuvisord admin API",
        description = "Live tuning of gpuvisord's GPU scheduler: list GPUs and VMs, change a VM's QoS \
                       class, weight, priority and time slice or a GPU's defaults and memory overcommit, drain and \
                       resume VMs, set which GPUs or MIG instances each VM may use, see where each VM's device memory \
                       is (on the GPU or evicted to host RAM), read the history of every metric and the alerts \
                       gpuvisord raised. \
                       Every route but /v1/health and /openapi.json needs `Authorization: Bearer <token>`. \
                       /metrics answers Prometheus text; everything else is JSON. Errors are JSON `{\"error\": \"...\", \"field\": \"...\" | null}`."
    ),
    paths(
        health,
        openapi_json,
        list_gpus,
        get_gpu,
        patch_gpu,
        list_vms,
        get_vm,
        patch_vm,
        drain_vm,
        resume_vm,
        access,
        get_vm_access,
        put_vm_access,
        metrics,
        history,
        history_metrics,
        alerts
    ),
    components(schemas(
        GpuView,
        crate::model::SwapPoolView,
        VmView,
        crate::model::VmState,
        VmPatch,
        GpuPatch,
        VmAccess,
        VmAccessUpdate,
        AccessOverview,
        crate::model::GpuAccessMode,
        ErrorBody,
        Health,
        crate::model::QosClassSchema,
        HistoryResponse,
        HistorySeries,
        HistoryMetrics,
        HistoryMetric,
        HistoryTier,
        AlertsResponse,
        AlertRuleView,
        AlertView,
        AlertState
    )),
    modifiers(&BearerScheme),
    tags(
        (name = "health", description = "Liveness and this document; no token needed"),
        (name = "gpus", description = "GPUs and their scheduling defaults"),
        (name = "vms", description = "VMs, their QoS settings and measured shares"),
        (name = "access", description = "Which GPUs and MIG instances each VM may use"),
        (name = "metrics", description = "Prometheus metrics (text, not JSON)"),
        (name = "telemetry", description = "The history gpuvisord keeps of its metrics, and the alerts its rules raise"),
    )
)]
struct ApiDoc;

struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The admin token gpuvisord was started with (by default in /var/lib/gpuvisor/admin.token)",
                    ))
                    .build(),
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema_limits(schema: &str, field: &str) -> (f64, f64) {
        let doc = serde_json::to_value(openapi()).unwrap();
        let prop = &doc["components"]["schemas"][schema]["properties"][field];
        (prop["minimum"].as_f64().unwrap(), prop["maximum"].as_f64().unwrap())
    }

    #[test]
    fn documented_limits_match_the_protocol() {
        assert_eq!(schema_limits("VmPatch", "weight"), (MIN_WEIGHT as f64, MAX_WEIGHT as f64));
        assert_eq!(schema_limits("VmPatch", "priority"), (MIN_PRIORITY as f64, MAX_PRIORITY as f64));
        assert_eq!(schema_limits("VmPatch", "slice_us"), (MIN_SLICE_US as f64, MAX_SLICE_US as f64));
        assert_eq!(schema_limits("GpuPatch", "slice_us"), (MIN_SLICE_US as f64, MAX_SLICE_US as f64));
        assert_eq!(schema_limits("GpuPatch", "max_queued_ops"), (MIN_QUEUED_OPS as f64, MAX_QUEUED_OPS as f64));
        assert_eq!(schema_limits("GpuPatch", "overcommit_ratio"), (MIN_OVERCOMMIT_RATIO, MAX_OVERCOMMIT_RATIO));
        assert_eq!(
            schema_limits("GpuPatch", "memory_limit_bytes"),
            (MIN_MEMORY_LIMIT_BYTES as f64, MAX_MEMORY_LIMIT_BYTES as f64)
        );
    }

    #[test]
    fn json_errors_name_the_field() {
        let e = parse_json::<VmPatch>(br#"{"weight": "heavy"}"#).unwrap_err();
        assert_eq!((e.status, e.field.as_deref()), (StatusCode::BAD_REQUEST, Some("weight")));
        assert!(e.error.starts_with("weight: invalid type"), "{}", e.error);
        let e = parse_json::<VmPatch>(br#"{"wieght": 3}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("wieght"));
        let e = parse_json::<VmPatch>(br#"{"class": "gold"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("class"));
        let e = parse_json::<VmPatch>(br#"{"weight": 3"#).unwrap_err();
        assert!(e.error.starts_with("malformed JSON"), "{}", e.error);
        let e = parse_json::<VmPatch>(br#"{"weight": 3} x"#).unwrap_err();
        assert!(e.error.starts_with("malformed JSON"), "{}", e.error);
        let p = parse_json::<VmPatch>(br#"{"slice_us": null}"#).unwrap();
        assert_eq!(p.slice_us, Some(None));
    }
}
