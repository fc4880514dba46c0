//! ramem's HTTP server: a model bundle's predictions with the evidence
//! behind each (the retrieved memory entries and the attention they got),
//! searches of its memory by image or text, the memory's entries and their
//! thumbnails, and a web page that shows why a decision was made.
//!
//! The server runs the same code as `ramem predict`
//! ([`ramem_recognize::ImageRecognizer`]), so both give the same JSON for
//! the same image. Its parts:
//!
//! - [`api`]: the routes (`/v1/classify`, `/v1/search`, `/v1/memory/{id}`,
//!   `/v1/memory/{id}/image`, `/v1/info`, `/healthz`, `/readyz`,
//!   `/metrics`, `/openapi.json`, the page at `/`), the request bodies they
//!   read and the limits they enforce; every refusal is a JSON error
//!   ([`ApiError`]).
//! - [`worker`]: one thread owning the model and the encoders, answering
//!   jobs in batches from a bounded queue (a full queue answers 503 with
//!   `Retry-After`).
//! - [`memory_watch`]: the memory as committed now, so entries added while
//!   the server runs are seen without a restart, never half-written.
//! - [`metrics`]: counters for `/metrics` (Prometheus text).
//!
//! [`Server::bind`] loads the model and binds the address; [`Server::run`]
//! serves until its shutdown future resolves (SIGTERM or Ctrl-C with
//! [`shutdown_signal`]), then drains the requests in flight and returns.

pub mod api;
pub mod error;
pub mod memory_watch;
pub mod metrics;
mod page;
mod thumbnail;
pub mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use ramem_index::Engine;

pub use error::ApiError;
pub use worker::{ModelInfo, SearchAnswer};

/// What the server accepts.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body, in bytes (413 above it).
    pub max_body_bytes: usize,
    /// Largest image, in pixels (width x height, read from its header
    /// before it is decoded; 413 above it).
    pub max_pixels: u64,
    /// Largest `k` (neighbours retrieved or searched).
    pub max_k: usize,
    /// Largest `top` (classes returned).
    pub max_top: usize,
    /// Longest text searched, in characters.
    pub max_text_chars: usize,
    /// How long a request waits for the worker before it gets 503.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 16 << 20,
            max_pixels: 40_000_000,
            max_k: 256,
            max_top: 100,
            max_text_chars: 1000,
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// How requests are batched.
#[derive(Debug, Clone)]
pub struct Batching {
    /// Most jobs per batch.
    pub max_batch: usize,
    /// Longest wait for more jobs once the first has arrived.
    pub max_wait: Duration,
    /// Jobs that may wait; a request beyond them gets 503.
    pub queue: usize,
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            max_batch: 32,
            max_wait: Duration::from_millis(5),
            queue: 256,
        }
    }
}

/// Everything `ramem serve` is told.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The model bundle (from `ramem train`).
    pub model: PathBuf,
    /// The memory to retrieve from (default: the bundle's).
    pub memory: Option<PathBuf>,
    /// How neighbours are found (default: HNSW where the memory has an
    /// up-to-date index, else exact).
    pub engine: Option<Engine>,
    pub ef: Option<usize>,
    pub addr: SocketAddr,
    pub limits: Limits,
    pub batching: Batching,
}

/// A loaded model behind a bound address, not serving yet.
pub struct Server {
    listener: tokio::net::TcpListener,
    state: Arc<api::AppState>,
    worker: std::thread::JoinHandle<()>,
}

impl Server {
    /// Loads the model and its encoders (on the worker thread), then binds
    /// `options.addr` (port 0: a free port; see [`Server::local_addr`]).
    pub async fn bind(options: ServeOptions) -> Result<Server> {
        let metrics = Arc::new(metrics::Metrics::default());
        let queued = Arc::new(AtomicUsize::new(0));
        let spawn_options = options.clone();
        let spawn_metrics = metrics.clone();
        let spawn_queued = queued.clone();
        let worker::Started {
            jobs,
            watch,
            info,
            thread: worker,
        } = tokio::task::spawn_blocking(move || {
            worker::spawn(&spawn_options, spawn_metrics, spawn_queued)
        })
        .await
        .context("loading the model")??;
        if let Some(watch) = &watch {
            metrics.set_memory_entries(watch.current()?.live_count());
        }
        let listener = tokio::net::TcpListener::bind(options.addr)
            .await
            .with_context(|| format!("cannot listen on {}", options.addr))?;
        let state = Arc::new(api::AppState::new(
            jobs,
            queued,
            metrics,
            options.limits.clone(),
            info,
            watch,
        ));
        Ok(Server {
            listener,
            state,
            worker,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// What was loaded.
    pub fn info(&self) -> &ModelInfo {
        &self.state.info
    }

    /// Serves until `shutdown` resolves; then stops accepting connections,
    /// answers `/readyz` with 503, finishes the requests in flight and the
    /// worker's queue, and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let Server {
            listener,
            state,
            worker,
        } = self;
        let draining = state.clone();
        let app = api::router(state.clone());
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                draining.draining.store(true, Ordering::SeqCst);
                tracing::info!("shutting down: finishing the requests in flight");
            })
            .await
            .context("serving")?;
        // The queue closes with the last sender; the worker then finishes.
        drop(state);
        tokio::task::spawn_blocking(move || worker.join())
            .await
            .context("waiting for the worker")?
            .map_err(|_| anyhow::anyhow!("the worker thread panicked"))?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
