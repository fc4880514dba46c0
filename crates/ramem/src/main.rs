//! `ramem`: the command line of the ramem toolkit.
//!
//! The command line only: it parses flags, sets up logging and threads,
//! calls the library crates (`ramem-assets`, `ramem-ingest`, `ramem-index`,
//! `ramem-store`, `ramem-study`, `ramem-encode`, `ramem-serve`) and prints what they return.
//! Every command's work lives in a library, so the server and the Python
//! package call the same code.

mod assets_cmd;
mod embed_cmd;
mod memory_cmd;
mod model_cmd;
mod search_cmd;
mod serve_cmd;
mod study_cmd;

use anyhow::Result;
use clap::{Parser, Subcommand};

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
    Assets(assets_cmd::AssetsCommand),
    /// Build, import and inspect a memory of image-text embeddings.
    #[command(subcommand)]
    Memory(memory_cmd::MemoryCommand),
    /// Find the k nearest memory entries of query embeddings by cosine similarity (exact, or with the HNSW index).
    Search(search_cmd::SearchArgs),
    /// Build, evaluate and inspect a memory's approximate-search (HNSW) index.
    #[command(subcommand)]
    Index(search_cmd::IndexCommand),
    /// Encode images into an N x D float32 .npy (plus FILE.ids.txt naming each row).
    Embed(embed_cmd::EmbedArgs),
    /// Encode captions (one per line) into an N x D float32 .npy.
    EmbedText(embed_cmd::EmbedTextArgs),
    /// Print the ImageNet top-k classes of images (EfficientNet-Lite's 1000-class head).
    Classify(embed_cmd::ClassifyArgs),
    /// Convert a legacy PyTorch checkpoint (.pth) to safetensors.
    ConvertWeights(embed_cmd::ConvertArgs),
    /// Run a study (methods x memories x value kinds x k x seeds) from a TOML file and write reports.
    Study(study_cmd::StudyArgs),
    /// Train a recognizer on a labelled data set and keep it as a model bundle (resumable).
    Train(model_cmd::TrainArgs),
    /// Classify images with a model bundle, showing the retrieved entries and weights behind each decision.
    Predict(model_cmd::PredictArgs),
    /// Score a model bundle on a data set's test split (report.json, .md, .png).
    Evaluate(model_cmd::EvaluateArgs),
    /// Serve a model bundle over HTTP: predictions with their evidence, memory search, a web page.
    Serve(serve_cmd::ServeArgs),
    /// Measure image-encoder throughput on preprocessed pixels (used by benches/).
    BenchEncode(embed_cmd::BenchEncodeArgs),
}

fn main() {
    let cli = Cli::parse();
    let setup = ramem_model::configure_threads(cli.threads)
        .and_then(|()| ramem_progress::init_logging(&cli.log));
    if let Err(e) = setup {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Assets(command) => assets_cmd::run(command),
        Command::Memory(command) => memory_cmd::run(command),
        Command::Search(args) => search_cmd::search(&args),
        Command::Index(command) => search_cmd::index(command),
        Command::Embed(args) => embed_cmd::embed(&args),
        Command::EmbedText(args) => embed_cmd::embed_text(&args),
        Command::Classify(args) => embed_cmd::classify(&args),
        Command::ConvertWeights(args) => embed_cmd::convert(&args),
        Command::BenchEncode(args) => embed_cmd::bench(&args),
        Command::Study(args) => study_cmd::run(&args),
        Command::Train(args) => model_cmd::train(&args),
        Command::Predict(args) => model_cmd::predict_cmd(&args),
        Command::Evaluate(args) => model_cmd::evaluate_cmd(&args),
        Command::Serve(args) => serve_cmd::serve(&args),
    }
}
