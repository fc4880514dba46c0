//! `ramem serve`: a model bundle behind HTTP; the work is in `ramem-serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use ramem_index::Engine;
use ramem_serve::{Batching, Limits, ServeOptions, Server};

#[derive(Args)]
pub struct ServeArgs {
    /// The model bundle (from `ramem train`).
    #[arg(long)]
    pub model: PathBuf,
    /// The memory to retrieve from (default: the one the model was trained against); entries
    /// added to it while the server runs are seen without a restart.
    #[arg(long)]
    pub memory: Option<PathBuf>,
    /// The address to listen on (loopback by default; port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// How neighbours are found: exact, hnsw or int8 (default: hnsw where the memory has an
    /// up-to-date index, else int8 where it has up-to-date int8 keys, else exact).
    #[arg(long)]
    pub engine: Option<Engine>,
    /// HNSW's beam width (with the hnsw engine), or the rows re-scored per query (with int8;
    /// default 4 x k).
    #[arg(long)]
    pub ef: Option<usize>,
    /// Most requests answered together (one encoder pass and one search per batch).
    #[arg(long, default_value_t = 32)]
    pub max_batch: usize,
    /// Longest wait, in milliseconds, for more requests once one has arrived.
    #[arg(long, default_value_t = 5)]
    pub max_wait_ms: u64,
    /// Requests that may wait for the worker; beyond them a request gets 503 with Retry-After.
    #[arg(long, default_value_t = 256)]
    pub queue: usize,
    /// Largest request body, in MiB (413 above it).
    #[arg(long, default_value_t = 16)]
    pub max_body_mb: usize,
    /// Largest image, in megapixels, read from its header before decoding (413 above it).
    #[arg(long, default_value_t = 40.0)]
    pub max_megapixels: f64,
    /// Largest k (neighbours retrieved or searched) a request may ask for.
    #[arg(long, default_value_t = 256)]
    pub max_k: usize,
    /// Seconds a request waits for the worker before it gets 503.
    #[arg(long, default_value_t = 60)]
    pub timeout_s: u64,
}

pub fn serve(args: &ServeArgs) -> Result<()> {
    anyhow::ensure!(args.max_batch > 0, "--max-batch must be at least 1");
    anyhow::ensure!(args.queue > 0, "--queue must be at least 1");
    anyhow::ensure!(args.max_k > 0, "--max-k must be at least 1");
    anyhow::ensure!(
        args.max_megapixels > 0.0,
        "--max-megapixels must be above 0"
    );
    let options = ServeOptions {
        model: args.model.clone(),
        memory: args.memory.clone(),
        engine: args.engine,
        ef: args.ef,
        addr: args.addr,
        limits: Limits {
            max_body_bytes: args.max_body_mb << 20,
            max_pixels: (args.max_megapixels * 1e6) as u64,
            max_k: args.max_k,
            request_timeout: Duration::from_secs(args.timeout_s.max(1)),
            ..Limits::default()
        },
        batching: Batching {
            max_batch: args.max_batch,
            max_wait: Duration::from_millis(args.max_wait_ms),
            queue: args.queue,
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the server's runtime")?;
    runtime.block_on(async {
        let started = std::time::Instant::now();
        let server = Server::bind(options).await?;
        let addr = server.local_addr()?;
        let info = server.info();
        tracing::info!(
            "ready in {:.2} s: {} {}{}",
            started.elapsed().as_secs_f64(),
            info.method,
            args.model.display(),
            info.retrieval
                .as_ref()
                .map(|r| format!(", retrieving by {r}"))
                .unwrap_or_default()
        );
        // The one line on stdout: scripts read the address from it.
        println!("listening on http://{addr}");
        use std::io::Write;
        std::io::stdout().flush()?;
        server.run(ramem_serve::shutdown_signal()).await
    })
}
