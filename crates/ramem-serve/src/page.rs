//! The web page at `/`: plain HTML, CSS and JavaScript served from the
//! binary (no build step). It classifies an image dropped or chosen (or a
//! memory entry's, by id or URL) and shows the classes with their
//! probabilities next to the retrieved entries as a grid of thumbnails with
//! caption, similarity and an attention bar, sorted by weight, the ones the
//! model ignored faded; a text box searches the memory.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const STYLE_CSS: &str = include_str!("page/style.css");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}
