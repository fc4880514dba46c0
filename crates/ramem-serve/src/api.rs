//! The routes, the request bodies they read and the limits they enforce.
//!
//! An image comes as a multipart form (its `image` field), as raw bytes
//! (`image/*`, `application/octet-stream`, or no content type), or as JSON
//! (`{"image_base64": ...}`, a data URL taken too, or `{"memory_id": N}` for
//! a memory entry's own image); a text to search as JSON (`{"text": ...}`)
//! or a form's `text` field. Every refusal is a JSON [`ApiError`] with a 4xx
//! status; responses that the framework itself makes (an unknown route, a
//! method a route does not take, a panic) are turned into the same shape.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use ramem_data::{image_dimensions, ImageSource};
use ramem_recognize::ImageDecision;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::oneshot;
use tower_http::catch_panic::CatchPanicLayer;

use crate::error::ApiError;
use crate::memory_watch::MemoryWatch;
use crate::metrics::Metrics;
use crate::worker::{Answer, Job, ModelInfo, Query, SearchAnswer};
use crate::{page, thumbnail, Limits};

/// A body above the limit is still read (and thrown away) up to this many
/// bytes, so that a client that sends its whole body before reading the
/// answer sees the 413 instead of a reset connection.
const DRAIN_LIMIT: u64 = 128 << 20;
/// Classes returned when `top` is not given.
const DEFAULT_TOP: usize = 5;
/// Entries returned by a search when `k` is not given.
const DEFAULT_SEARCH_K: usize = 10;
/// Thumbnail sizes (the longer side, in pixels).
const DEFAULT_THUMBNAIL: u32 = 160;
const MAX_THUMBNAIL: u32 = 512;

/// What every handler shares.
pub struct AppState {
    jobs: SyncSender<Job>,
    /// Jobs sent and not yet taken by the worker.
    queued: Arc<AtomicUsize>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub info: ModelInfo,
    pub watch: Option<Arc<MemoryWatch>>,
    /// Set once shutdown began: `/readyz` answers 503.
    pub draining: AtomicBool,
    thumbnails: thumbnail::Cache,
}

impl AppState {
    pub(crate) fn new(
        jobs: SyncSender<Job>,
        queued: Arc<AtomicUsize>,
        metrics: Arc<Metrics>,
        limits: Limits,
        info: ModelInfo,
        watch: Option<Arc<MemoryWatch>>,
    ) -> AppState {
        AppState {
            jobs,
            queued,
            metrics,
            limits,
            info,
            watch,
            draining: AtomicBool::new(false),
            thumbnails: thumbnail::Cache::default(),
        }
    }

    /// Puts `query` on the worker's queue and waits for its answer.
    async fn submit(&self, query: Query) -> Result<Answer, ApiError> {
        let (reply, answer) = oneshot::channel();
        // Counted before it is sent: the worker subtracts what it takes.
        let depth = self.queued.fetch_add(1, Ordering::SeqCst) + 1;
        match self.jobs.try_send(Job { query, reply }) {
            Ok(()) => self.metrics.set_queue_depth(depth),
            Err(e) => {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                return Err(ApiError::unavailable(match e {
                    TrySendError::Full(_) => format!(
                        "the server is busy: {} requests are waiting; retry shortly",
                        self.limits_queue()
                    ),
                    TrySendError::Disconnected(_) => "the server is shutting down".to_string(),
                }));
            }
        }
        match tokio::time::timeout(self.limits.request_timeout, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(ApiError::internal("the worker dropped the request")),
            Err(_) => Err(ApiError::unavailable(format!(
                "no answer within {:.0} s: the server is overloaded; retry later",
                self.limits.request_timeout.as_secs_f64()
            ))),
        }
    }

    fn limits_queue(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// The memory as committed now.
    fn memory(&self) -> Result<Arc<dyn ramem_index::SearchableMemory>, ApiError> {
        let watch = self.watch.as_ref().ok_or_else(|| {
            ApiError::not_found("this server's model retrieves nothing: it has no memory")
        })?;
        let memory = watch.current().map_err(|e| ApiError::failed(&e))?;
        self.metrics.set_memory_entries(memory.live_count());
        Ok(memory)
    }
}

/// Every route of the server over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(page::index))
        .route("/app.js", get(page::script))
        .route("/style.css", get(page::style))
        .route("/v1/classify", post(classify))
        .route("/v1/search", post(search))
        .route("/v1/memory/{id}", get(memory_entry))
        .route("/v1/memory/{id}/image", get(memory_image))
        .route("/v1/info", get(info))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .layer(CatchPanicLayer::custom(panicked))
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// The route a path belongs to, for the metrics (a bounded set of names).
fn route_of(path: &str) -> &'static str {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    match parts.as_slice() {
        [""] => "/",
        ["", "app.js"] => "/app.js",
        ["", "style.css"] => "/style.css",
        ["", "v1", "classify"] => "/v1/classify",
        ["", "v1", "search"] => "/v1/search",
        ["", "v1", "info"] => "/v1/info",
        ["", "v1", "memory", _] => "/v1/memory/{id}",
        ["", "v1", "memory", _, "image"] => "/v1/memory/{id}/image",
        ["", "healthz"] => "/healthz",
        ["", "readyz"] => "/readyz",
        ["", "metrics"] => "/metrics",
        ["", "openapi.json"] => "/openapi.json",
        _ => "unmatched",
    }
}

/// Counts every request and gives every error response the JSON shape.
async fn observe(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let route = route_of(request.uri().path());
    let started = Instant::now();
    let response = as_json_error(next.run(request).await).await;
    state.metrics.request(
        route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// An error response the framework made (plain text) as a JSON error.
async fn as_json_error(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match Limited::new(body, 64 << 10).collect().await {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        Err(_) => String::new(),
    };
    let allowed = parts
        .headers
        .get(header::ALLOW)
        .and_then(|v| v.to_str().ok());
    let message = match (text.trim(), allowed) {
        ("", Some(allowed)) if status == StatusCode::METHOD_NOT_ALLOWED => {
            format!("this route does not take that method; it takes {allowed}")
        }
        ("", _) => status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_string(),
        (text, _) => text.to_string(),
    };
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let mut fixed = (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response();
    for name in [header::RETRY_AFTER, header::ALLOW] {
        if let Some(value) = parts.headers.get(&name) {
            fixed.headers_mut().insert(name, value.clone());
        }
    }
    fixed
}

fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::internal("the server failed on this request").into_response()
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route {} {}: see /openapi.json",
        request.method(),
        request.uri().path()
    ))
}

/// A request's query parameters, each known to the route.
struct Params(HashMap<String, String>);

impl Params {
    fn parse(query: Option<&str>, known: &[&str]) -> Result<Params, ApiError> {
        let mut params = HashMap::new();
        for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if !known.contains(&name.as_ref()) {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {name:?}; this route takes {}",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )));
            }
            if params.insert(name.to_string(), value.to_string()).is_some() {
                return Err(ApiError::bad_request(format!(
                    "query parameter {name:?} is given twice"
                )));
            }
        }
        Ok(Params(params))
    }

    /// Parameter `name` as a count in `min..=max`, if given.
    fn count(&self, name: &str, min: usize, max: usize) -> Result<Option<usize>, ApiError> {
        let Some(text) = self.0.get(name) else {
            return Ok(None);
        };
        let value: usize = text.trim().parse().map_err(|_| {
            ApiError::bad_request(format!(
                "{name} must be a whole number from {min} to {max}, not {text:?}"
            ))
        })?;
        if value < min || value > max {
            return Err(ApiError::bad_request(format!(
                "{name} = {value} is out of range: it must be from {min} to {max}"
            )));
        }
        Ok(Some(value))
    }
}

/// The largest `k` the memory can answer now (the limit, or its entries).
fn k_limit(state: &AppState) -> Result<usize, ApiError> {
    let live = state.memory()?.live_count() as usize;
    Ok(state.limits.max_k.min(live).max(1))
}

/// What a request body holds.
enum Input {
    /// Encoded image bytes, with the name the decision will carry.
    Image { name: String, bytes: Bytes },
    /// A memory entry, whose own image is meant.
    MemoryEntry(i64),
    /// A text to search.
    Text(String),
}

/// The JSON body of `/v1/classify` and `/v1/search`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonInput {
    image_base64: Option<String>,
    memory_id: Option<i64>,
    text: Option<String>,
    name: Option<String>,
}

/// The body, read up to the limit (413 above it, however it is sent).
async fn read_body(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let max = state.limits.max_body_bytes;
    let too_large = || {
        ApiError::too_large(format!(
            "the request body is larger than the server takes ({max} bytes)"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        drain(body).await;
        return Err(too_large());
    }
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_large()),
        Err(e) => Err(ApiError::bad_request(format!(
            "the request body could not be read: {e}"
        ))),
    }
}

/// Reads and drops up to [`DRAIN_LIMIT`] bytes of `body`.
async fn drain(body: Body) {
    let mut body = body;
    let mut read = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            read += data.len() as u64;
        }
        if read > DRAIN_LIMIT {
            break;
        }
    }
}

/// The request's input, by its content type.
async fn read_input(state: &AppState, request: Request) -> Result<Input, ApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("").to_ascii_lowercase())
        .unwrap_or_default();
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let (parts, body) = request.into_parts();
    let bytes = read_body(state, &parts.headers, body).await?;
    match media.as_str() {
        "" | "application/octet-stream" => Ok(Input::Image {
            name: "upload".into(),
            bytes,
        }),
        m if m.starts_with("image/") => Ok(Input::Image {
            name: "upload".into(),
            bytes,
        }),
        "application/json" => json_input(&bytes),
        "multipart/form-data" => {
            let request = Request::from_parts(parts, Body::from(bytes));
            let multipart = Multipart::from_request(request, &())
                .await
                .map_err(|e| ApiError::bad_request(format!("not a multipart form: {e}")))?;
            form_input(multipart).await
        }
        other => Err(ApiError::unsupported_media_type(format!(
            "content type {other:?} is not read here: send multipart/form-data (an \"image\" \
             field), application/json, or the image's bytes (image/*, \
             application/octet-stream)"
        ))),
    }
}

fn json_input(bytes: &[u8]) -> Result<Input, ApiError> {
    let input: JsonInput = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "the JSON body must be an object with one of image_base64, memory_id or text \
             (and an optional name): {e}"
        ))
    })?;
    match (input.image_base64, input.memory_id, input.text) {
        (Some(encoded), None, None) => {
            // A data URL (`data:image/png;base64,...`) is taken as it is.
            let data = match encoded.split_once(";base64,") {
                Some((head, data)) if head.starts_with("data:") => data,
                _ => encoded.as_str(),
            };
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|e| ApiError::bad_request(format!("image_base64 is not base64: {e}")))?;
            Ok(Input::Image {
                name: input.name.unwrap_or_else(|| "upload".into()),
                bytes: Bytes::from(bytes),
            })
        }
        (None, Some(id), None) => Ok(Input::MemoryEntry(id)),
        (None, None, Some(text)) => Ok(Input::Text(text)),
        _ => Err(ApiError::bad_request(
            "the JSON body must hold exactly one of image_base64, memory_id or text",
        )),
    }
}

async fn form_input(mut form: Multipart) -> Result<Input, ApiError> {
    let bad = |e: axum::extract::multipart::MultipartError| {
        ApiError::bad_request(format!("the multipart form cannot be read: {e}"))
    };
    let mut found = None;
    while let Some(field) = form.next_field().await.map_err(bad)? {
        let input = match field.name() {
            Some("image") => {
                let name = field
                    .file_name()
                    .filter(|n| !n.is_empty())
                    .unwrap_or("upload")
                    .to_string();
                let bytes = field.bytes().await.map_err(bad)?;
                Input::Image { name, bytes }
            }
            Some("text") => Input::Text(field.text().await.map_err(bad)?),
            other => {
                return Err(ApiError::bad_request(format!(
                "unknown form field {:?}: the form takes one \"image\" (a file) or one \"text\"",
                other.unwrap_or("")
            )))
            }
        };
        if found.replace(input).is_some() {
            return Err(ApiError::bad_request(
                "the form must hold one \"image\" or one \"text\", not several",
            ));
        }
    }
    found.ok_or_else(|| {
        ApiError::bad_request(
            "the multipart form has no \"image\" field (nor a \"text\" field to search)",
        )
    })
}

/// Encoded bytes as an image to classify: its header must name a format
/// and a size within the pixel limit (decoding happens on the worker).
fn checked_image(state: &AppState, name: String, bytes: Bytes) -> Result<ImageSource, ApiError> {
    let (width, height) =
        image_dimensions(&bytes, &name).map_err(|e| ApiError::unprocessable(e.to_string()))?;
    let pixels = width as u64 * height as u64;
    if pixels > state.limits.max_pixels {
        return Err(ApiError::too_large(format!(
            "{name}: {width} x {height} = {pixels} pixels is more than the server decodes ({})",
            state.limits.max_pixels
        )));
    }
    if pixels == 0 {
        return Err(ApiError::unprocessable(format!(
            "{name}: the image is empty"
        )));
    }
    Ok(ImageSource::Encoded {
        name,
        bytes: bytes.to_vec(),
    })
}

/// The image of memory entry `id`, where the server can read it.
async fn entry_image(state: &AppState, id: i64) -> Result<ImageSource, ApiError> {
    let memory = state.memory()?;
    let source = tokio::task::spawn_blocking(move || thumbnail::source_of(memory.as_ref(), id))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(source)
}

/// An image or a memory entry's image, with the name its decision carries.
async fn image_of(state: &AppState, input: Input) -> Result<(ImageSource, String), ApiError> {
    match input {
        Input::Image { name, bytes } => Ok((checked_image(state, name.clone(), bytes)?, name)),
        Input::MemoryEntry(id) => Ok((entry_image(state, id).await?, format!("memory:{id}"))),
        Input::Text(_) => Err(ApiError::bad_request(
            "/v1/classify classifies an image, not a text: send an image (or search the text \
             with /v1/search)",
        )),
    }
}

/// `POST /v1/classify?k=&top=&evidence=`: classes and evidence for an image.
async fn classify(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Json<ImageDecision>, ApiError> {
    let params = Params::parse(query.as_deref(), &["k", "top", "evidence"])?;
    let top = params
        .count("top", 1, state.limits.max_top)?
        .unwrap_or(DEFAULT_TOP);
    let retrieves = state.info.k > 0;
    let k = match (params.0.contains_key("k"), retrieves) {
        (false, _) => state.info.k,
        (true, false) => {
            return Err(ApiError::bad_request(
                "k: this server's model retrieves nothing (a linear probe)",
            ))
        }
        (true, true) => params
            .count("k", 1, k_limit(&state)?)?
            .unwrap_or(state.info.k),
    };
    let evidence = params
        .count("evidence", 0, state.limits.max_k)?
        .unwrap_or(k);
    let input = read_input(&state, request).await?;
    let (image, name) = image_of(&state, input).await?;
    match state
        .submit(Query::Classify {
            image,
            name,
            k,
            top,
            evidence,
        })
        .await?
    {
        Answer::Decision(decision) => Ok(Json(decision)),
        Answer::Search(_) => Err(ApiError::internal("a search answer to a classification")),
    }
}

/// `POST /v1/search?k=`: the memory entries nearest an image or a text.
async fn search(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Json<SearchAnswer>, ApiError> {
    let params = Params::parse(query.as_deref(), &["k"])?;
    let k = params
        .count("k", 1, k_limit(&state)?)?
        .unwrap_or(DEFAULT_SEARCH_K.min(k_limit(&state)?));
    let input = read_input(&state, request).await?;
    let query = match input {
        Input::Text(text) => {
            let chars = text.chars().count();
            if text.trim().is_empty() {
                return Err(ApiError::bad_request(
                    "text: empty; give something to search",
                ));
            }
            if chars > state.limits.max_text_chars {
                return Err(ApiError::bad_request(format!(
                    "text: {chars} characters is more than the server searches ({})",
                    state.limits.max_text_chars
                )));
            }
            if state.info.text_search.is_none() {
                return Err(ApiError::bad_request(
                    "this server cannot search by text: its memory has no text encoder",
                ));
            }
            Query::SearchText { text, k }
        }
        input => {
            let (image, _) = image_of(&state, input).await?;
            Query::SearchImage { image, k }
        }
    };
    match state.submit(query).await? {
        Answer::Search(found) => Ok(Json(found)),
        Answer::Decision(_) => Err(ApiError::internal("a decision answer to a search")),
    }
}

fn parse_id(text: &str) -> Result<i64, ApiError> {
    text.parse::<i64>()
        .ok()
        .filter(|&id| id >= 0)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "memory entry ids are whole numbers from 0, not {text:?}"
            ))
        })
}

/// `GET /v1/memory/{id}`: an entry's metadata.
async fn memory_entry(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<serde_json::Value>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let id = parse_id(&id)?;
    let memory = state.memory()?;
    let entry = tokio::task::spawn_blocking(move || thumbnail::entry_json(memory.as_ref(), id))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(entry))
}

/// `GET /v1/memory/{id}/image?size=`: a PNG thumbnail of an entry's image.
async fn memory_image(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(query.as_deref(), &["size"])?;
    let size = params
        .count("size", 16, MAX_THUMBNAIL as usize)?
        .map_or(DEFAULT_THUMBNAIL, |s| s as u32);
    let id = parse_id(&id)?;
    if let Some(png) = state.thumbnails.get(id, size) {
        return Ok(png_response(png));
    }
    let memory = state.memory()?;
    let png = tokio::task::spawn_blocking(move || thumbnail::thumbnail(memory.as_ref(), id, size))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    state.thumbnails.put(id, size, png.clone());
    Ok(png_response(png))
}

fn png_response(png: Bytes) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("image/png")),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
        ],
        png,
    )
        .into_response()
}

/// `GET /v1/info`: the model, the memory now, the limits.
async fn info(State(state): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    let entries = match &state.watch {
        Some(_) => Some(state.memory()?.live_count()),
        None => None,
    };
    let limits = &state.limits;
    Ok(Json(json!({
        "model": state.info,
        "memory_entries": entries,
        "limits": {
            "max_body_bytes": limits.max_body_bytes,
            "max_pixels": limits.max_pixels,
            "max_k": limits.max_k,
            "max_top": limits.max_top,
            "max_text_chars": limits.max_text_chars,
        },
        "version": env!("CARGO_PKG_VERSION"),
    })))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.draining.load(Ordering::SeqCst) {
        true => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        )
            .into_response(),
        false => Json(json!({"status": "ready"})).into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    if let Some(watch) = &state.watch {
        if let Ok(memory) = watch.current() {
            state.metrics.set_memory_entries(memory.live_count());
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// The OpenAPI 3 description of every route, with the default limits.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The description with this server's limits as they are now (the largest
/// `k` follows the memory's size), so that what it allows is accepted.
fn openapi_document(state: &AppState) -> Result<serde_json::Value, ApiError> {
    let mut doc: serde_json::Value =
        serde_json::from_str(OPENAPI).map_err(|e| ApiError::internal(e.to_string()))?;
    let k_max = match state.watch {
        Some(_) => Some(k_limit(state)?),
        None => None,
    };
    let limits = &state.limits;
    for route in ["/v1/classify", "/v1/search"] {
        let operation = &mut doc["paths"][route]["post"];
        if let Some(parameters) = operation["parameters"].as_array_mut() {
            parameters.retain(|p| p["name"] != "k" || k_max.is_some());
            for parameter in parameters.iter_mut() {
                let maximum = match parameter["name"].as_str() {
                    Some("k") => k_max,
                    Some("top") => Some(limits.max_top),
                    Some("evidence") => Some(limits.max_k),
                    _ => None,
                };
                if let Some(maximum) = maximum {
                    parameter["schema"]["maximum"] = json!(maximum);
                }
            }
        }
        for media in ["application/json", "multipart/form-data"] {
            let shapes = operation
                .pointer_mut(&format!(
                    "/requestBody/content/{}/schema/oneOf",
                    media.replace('/', "~1")
                ))
                .and_then(|shapes| shapes.as_array_mut());
            for shape in shapes.into_iter().flatten() {
                if let Some(text) = shape.pointer_mut("/properties/text") {
                    text["maxLength"] = json!(limits.max_text_chars);
                }
            }
        }
    }
    Ok(doc)
}

async fn openapi(State(state): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(openapi_document(&state)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_named_by_their_pattern() {
        assert_eq!(route_of("/"), "/");
        assert_eq!(route_of("/v1/memory/12"), "/v1/memory/{id}");
        assert_eq!(route_of("/v1/memory/12/image"), "/v1/memory/{id}/image");
        assert_eq!(route_of("/v1/classify"), "/v1/classify");
        assert_eq!(route_of("/nope/x"), "unmatched");
    }

    #[test]
    fn parameters_are_known_single_and_in_range() {
        let p = Params::parse(Some("k=5&top=3"), &["k", "top"]).unwrap();
        assert_eq!(p.count("k", 1, 10).unwrap(), Some(5));
        assert_eq!(p.count("evidence", 0, 10).unwrap(), None);
        let e = p.count("k", 6, 10).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("out of range"), "{e}");
        let e = Params::parse(Some("topk=3"), &["k", "top"]).err().unwrap();
        assert!(
            e.message.contains("unknown query parameter \"topk\""),
            "{e}"
        );
        let e = Params::parse(Some("k=1&k=2"), &["k"]).err().unwrap();
        assert!(e.message.contains("twice"), "{e}");
        let p = Params::parse(Some("k=abc"), &["k"]).unwrap();
        assert!(p
            .count("k", 1, 10)
            .unwrap_err()
            .message
            .contains("whole number"));
    }

    #[test]
    fn json_bodies_hold_exactly_one_input() {
        let png_b64 = base64::engine::general_purpose::STANDARD.encode(b"\x89PNG");
        match json_input(format!("{{\"image_base64\": \"{png_b64}\"}}").as_bytes()).unwrap() {
            Input::Image { name, bytes } => {
                assert_eq!((name.as_str(), &bytes[..]), ("upload", &b"\x89PNG"[..]))
            }
            _ => panic!("an image"),
        }
        let data_url = format!(
            "{{\"image_base64\": \"data:image/png;base64,{png_b64}\", \"name\": \"x.png\"}}"
        );
        match json_input(data_url.as_bytes()).unwrap() {
            Input::Image { name, bytes } => {
                assert_eq!((name.as_str(), &bytes[..]), ("x.png", &b"\x89PNG"[..]))
            }
            _ => panic!("an image"),
        }
        assert!(matches!(
            json_input(b"{\"memory_id\": 4}").unwrap(),
            Input::MemoryEntry(4)
        ));
        assert!(matches!(
            json_input(b"{\"text\": \"a shoe\"}").unwrap(),
            Input::Text(_)
        ));
        for bad in [
            &b"{}"[..],
            b"{\"text\": \"a\", \"memory_id\": 1}",
            b"[1]",
            b"{\"image\": 1}",
            b"{\"image_base64\": \"***\"}",
        ] {
            let e = json_input(bad).err().unwrap();
            assert_eq!(
                e.status,
                StatusCode::BAD_REQUEST,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
