//! `ramem`: the command line of the ramem toolkit.
//!
//! A thin layer: it parses flags, sets up logging and threads, and calls the
//! library crates (`ramem-assets`, `ramem-encode`, `ramem-store`, `ramem-index`,
//! `ramem-data`, `ramem-model`, `ramem-eval`).

mod assets_cmd;
mod bench_cmd;
mod classify_cmd;
mod embed_cmd;
mod embed_text_cmd;
mod index_cmd;
mod inputs;
mod memory_build;
mod memory_cmd;
mod memory_extra_cmd;
mod models;
mod progress;
mod search_cmd;
mod study;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

/// Large blocks (training batches, tensor outputs) are reused instead of
/// mapped and unmapped every step: see `ramem_model::block_cache`.
#[global_allocator]
static ALLOCATOR: ramem_model::block_cache::BlockCache =
    ramem_model::block_cache::BlockCache::new();

/// Retrieval-augmented image recognition: encode images with a frozen
/// backbone, retrieve from an image-text memory, learn which neighbours to trust.
#[derive(Parser)]
#[command(name = "ramem", version, about, long_about = None)]
struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Log level: error, warn, info, debug, trace (or RUST_LOG).
    #[arg(long, global = true, default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install or list the models and data sets ramem uses (cache: $RAMEM_HOME or ~/.cache/ramem).
    #[command(subcommand)]
    Assets(AssetsCommand),
    /// Build, import and inspect a memory of image-text embeddings.
    #[command(subcommand)]
    Memory(MemoryCommand),
    /// Find the k nearest memory entries of query embeddings by cosine similarity (exact, or with the HNSW index).
    Search(search_cmd::SearchArgs),
    /// Build, evaluate and inspect a memory's approximate-search (HNSW) index.
    #[command(subcommand)]
    Index(IndexCommand),
    /// Encode images into an N x D float32 .npy (plus FILE.ids.txt naming each row).
    Embed(embed_cmd::EmbedArgs),
    /// Encode captions (one per line) into an N x D float32 .npy.
    EmbedText(embed_text_cmd::EmbedTextArgs),
    /// Print the ImageNet top-k classes of images (EfficientNet-Lite's 1000-class head).
    Classify(classify_cmd::ClassifyArgs),
    /// Convert a legacy PyTorch checkpoint (.pth) to safetensors.
    ConvertWeights(ConvertArgs),
    /// Run a study (methods x memories x value kinds x k x seeds) from a TOML file and write reports.
    Study(study::StudyArgs),
    /// Measure image-encoder throughput on preprocessed pixels (used by benches/).
    BenchEncode(bench_cmd::BenchEncodeArgs),
}

#[derive(Subcommand)]
enum AssetsCommand {
    /// Install assets (default: the set the README's main job and the tests need).
    Install(assets_cmd::InstallArgs),
    /// Show every known asset, whether it is installed, and where.
    List,
    /// Print where an installed asset is (for scripts: `ramem embed --input "$(ramem assets path sample-photos)"`).
    Path {
        /// Asset name (see `ramem assets list`).
        name: String,
    },
}

#[derive(Subcommand)]
enum MemoryCommand {
    /// Build a memory from images (sidecar .txt captions) or webdataset .tar shards (resumable).
    Build(memory_build::BuildArgs),
    /// Import precomputed embeddings (.npy) into a memory directory (resumable).
    Import(memory_cmd::ImportArgs),
    /// Show what a memory holds.
    Info(memory_cmd::InfoArgs),
    /// Copy a memory without the entries near-duplicate to a test set (cosine >= --threshold).
    Dedup(memory_extra_cmd::DedupArgs),
}

#[derive(Subcommand)]
enum IndexCommand {
    /// Build the HNSW index of a memory (saved in MEMORY/index-hnsw/).
    Build(index_cmd::BuildArgs),
    /// Recall@k against exact search and queries/s for each --ef.
    Eval(index_cmd::EvalArgs),
    /// Show a memory's index: settings, size, whether it is up to date.
    Info(index_cmd::InfoArgs),
}

#[derive(Args)]
struct ConvertArgs {
    /// Input checkpoint in PyTorch's legacy (pre-zip) format.
    #[arg(long)]
    input: PathBuf,
    /// Output safetensors file.
    #[arg(long)]
    output: PathBuf,
}

fn main() {
    // candle's element-wise kernels run on a pool of busy-waiting workers
    // besides rayon's; on a small machine the two pools fight over the same
    // cores (training measured 2.7x slower). One element-wise worker leaves
    // the cores to the matrix products unless the user chose otherwise.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let cli = Cli::parse();
    init_logging(&cli.log);
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(progress::LogWriter::default)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn run(cli: Cli) -> Result<()> {
    if let Some(threads) = cli.threads {
        anyhow::ensure!(threads > 0, "--threads must be at least 1");
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .map_err(|e| anyhow::anyhow!("cannot start {threads} worker threads: {e}"))?;
    }
    match cli.command {
        Command::Assets(AssetsCommand::Install(args)) => assets_cmd::install(&args),
        Command::Assets(AssetsCommand::List) => assets_cmd::list(),
        Command::Assets(AssetsCommand::Path { name }) => {
            println!(
                "{}",
                ramem_assets::Cache::from_env()?.require(&name)?.display()
            );
            Ok(())
        }
        Command::Memory(MemoryCommand::Build(args)) => memory_build::run(&args),
        Command::Memory(MemoryCommand::Import(args)) => memory_cmd::import(&args),
        Command::Memory(MemoryCommand::Info(args)) => memory_cmd::info(&args),
        Command::Memory(MemoryCommand::Dedup(args)) => memory_extra_cmd::dedup(&args),
        Command::Search(args) => search_cmd::run(&args),
        Command::Index(IndexCommand::Build(args)) => index_cmd::build(&args),
        Command::Index(IndexCommand::Eval(args)) => index_cmd::eval(&args),
        Command::Index(IndexCommand::Info(args)) => index_cmd::info(&args),
        Command::Embed(args) => embed_cmd::run(&args),
        Command::EmbedText(args) => embed_text_cmd::run(&args),
        Command::Classify(args) => classify_cmd::run(&args),
        Command::ConvertWeights(args) => {
            let n =
                ramem_encode::weights::convert_legacy_to_safetensors(&args.input, &args.output)?;
            tracing::info!("wrote {n} tensors to {}", args.output.display());
            Ok(())
        }
        Command::BenchEncode(args) => bench_cmd::run(&args),
        Command::Study(args) => study::run(&args),
    }
}
