//! `ramem train` and `ramem evaluate`: a recognizer trained and kept as a
//! model bundle, and scored (the work is in `ramem-study` and
//! `ramem-recognize`).

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use clap::Args;
use ramem_index::Engine;
use ramem_model::ValueChoice;
use ramem_recognize::{evaluate, Evaluation};
use ramem_study::{train_bundle, train_options, Method, TrainRequest};

#[derive(Args)]
pub struct TrainArgs {
    /// The labelled data set (any spec a study reads: idx:DIR, list:TRAIN,TEST@ROOT,
    /// folders:DIR, openclipart:DIR, wds:SHARDS); its training split is trained on.
    #[arg(long)]
    pub data: String,
    /// The memory to retrieve from (for methods that retrieve).
    #[arg(long)]
    pub memory: Option<PathBuf>,
    /// The model bundle to write (a new directory; an interrupted run into it resumes).
    #[arg(long)]
    pub out: PathBuf,
    /// mam, uniform_mean or linear_probe.
    #[arg(long, default_value = "mam")]
    pub method: Method,
    /// Value kinds attended over: image, text or both.
    #[arg(long, default_value = "image", value_parser = parse_values)]
    pub values: ValueChoice,
    /// Neighbours per query.
    #[arg(long, default_value_t = 32)]
    pub k: usize,
    /// Seed of the split, the initialisation and the batch order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A study file whose [train], [mam], [long_tail], [noise] and [validation] tables (and
    /// encoder, cache_dir) are the options: a configuration a study chose trains the same.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// How neighbours are found: exact or hnsw (the memory's index, built where missing).
    #[arg(long, default_value = "exact")]
    pub engine: Engine,
    /// HNSW's beam width (with --engine hnsw).
    #[arg(long)]
    pub ef: Option<usize>,
}

fn parse_values(text: &str) -> Result<ValueChoice, String> {
    ValueChoice::parse(text).ok_or_else(|| {
        format!(
            "unknown values {text:?}; known: {}",
            ValueChoice::ALL.map(|v| v.name()).join(", ")
        )
    })
}

pub fn train(args: &TrainArgs) -> Result<()> {
    let bundle = train_bundle(&TrainRequest {
        data: args.data.clone(),
        memory: args.memory.clone(),
        out: args.out.clone(),
        method: args.method,
        values: args.values,
        k: args.k,
        seed: args.seed,
        config: train_options(args.config.as_deref())?,
        engine: args.engine,
        ef: args.ef,
    })?;
    let meta = &bundle.meta;
    let validation = meta
        .validation
        .get("top1_posthoc")
        .map(|v| format!("validation top-1 {v:.2}"))
        .unwrap_or_else(|| "no validation split".into());
    tracing::info!(
        "trained {} on {} images in {:.1} s ({validation}, post-hoc tau {}): {}",
        meta.model.method(),
        meta.training.train_images,
        meta.training.seconds,
        meta.posthoc_tau,
        bundle.dir.display()
    );
    Ok(())
}

#[derive(Args)]
pub struct EvaluateArgs {
    /// The model bundle (from `ramem train`).
    #[arg(long)]
    pub model: PathBuf,
    /// The labelled data set whose test split is scored.
    #[arg(long)]
    pub data: String,
    /// The report directory (report.json, report.md, report.png).
    #[arg(long)]
    pub out: PathBuf,
    /// The memory to retrieve from (default: the one the model was trained against).
    #[arg(long)]
    pub memory: Option<PathBuf>,
    /// How neighbours are found: exact or hnsw.
    #[arg(long, default_value = "exact")]
    pub engine: Engine,
    /// HNSW's beam width (with --engine hnsw).
    #[arg(long)]
    pub ef: Option<usize>,
    /// Where embeddings are cached (default: $RAMEM_HOME/embeddings).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

pub fn evaluate_cmd(args: &EvaluateArgs) -> Result<()> {
    let (report, files) = evaluate(
        &Evaluation {
            model: &args.model,
            data: &args.data,
            memory: args.memory.as_deref(),
            engine: args.engine,
            ef: args.ef,
            cache_dir: args.cache_dir.as_deref(),
        },
        &args.out,
    )
    .map_err(|e| anyhow!("evaluating {}: {e:#}", args.model.display()))?;
    println!("{}", report.to_markdown());
    tracing::info!("report in {}", files.json.display());
    Ok(())
}
