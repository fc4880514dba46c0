//! `ramem train`, `ramem predict` and `ramem evaluate`: a recognizer
//! trained and kept as a model bundle, put to work and scored (the work is
//! in `ramem-study` and `ramem-recognize`).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{anyhow, Result};
use clap::Args;
use ramem_data::{list_images, ImageSource};
use ramem_index::Engine;
use ramem_model::ValueChoice;
use ramem_recognize::{evaluate, ClassifyOptions, Evaluation, ImageRecognizer, Recognizer};
use ramem_study::{train_bundle, train_options, KChoice, Method, TrainRequest};

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
    /// mam, uniform_mean, linear_probe, or knn_vote (a vote of the retrieved entries' memory
    /// labels, k and temperature chosen on validation; nothing trained).
    #[arg(long, default_value = "mam")]
    pub method: Method,
    /// Value kinds attended over: image, text, both, or with the memory's labels (label,
    /// image+label, text+label).
    #[arg(long, default_value = "image", value_parser = parse_values)]
    pub values: ValueChoice,
    /// Neighbours per query: a number, or auto (chosen on validation among 8, 16, 32, 64).
    /// Default: the study file's k, else auto.
    #[arg(long, value_parser = KChoice::parse)]
    pub k: Option<KChoice>,
    /// Seed of the split, the initialisation and the batch order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A study file whose [train], [mam], [long_tail], [noise] and [validation] tables (and
    /// encoder, cache_dir) are the options: a configuration a study chose trains the same.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// How neighbours are found: exact, hnsw (the memory's index, built where missing) or int8
    /// (the memory's int8 keys, made where missing).
    #[arg(long, default_value = "exact")]
    pub engine: Engine,
    /// HNSW's beam width (with --engine hnsw), or the rows re-scored per query (with --engine
    /// int8; default 4 x k).
    #[arg(long)]
    pub ef: Option<usize>,
    /// Train on these classes only (names, comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub only_classes: Vec<String>,
    /// Leave these classes out of training (names, comma-separated): a vote over a memory
    /// that labels them can still name them.
    #[arg(long, value_delimiter = ',')]
    pub skip_classes: Vec<String>,
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
        k: args.k.clone(),
        seed: args.seed,
        config: train_options(args.config.as_deref())?,
        engine: args.engine,
        ef: args.ef,
        only_classes: args.only_classes.clone(),
        skip_classes: args.skip_classes.clone(),
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
    /// How neighbours are found in a memory directory: exact (the default), hnsw or int8. A
    /// collection (milvus://...) is searched with its own index.
    #[arg(long)]
    pub engine: Option<Engine>,
    /// HNSW's beam width (with --engine hnsw), or the rows re-scored per query (with --engine
    /// int8; default 4 x k).
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

#[derive(Args)]
pub struct PredictArgs {
    /// The model bundle (from `ramem train`).
    #[arg(long)]
    pub model: PathBuf,
    /// Images: directories (walked recursively, sorted by path), list files (one path per
    /// line) or single images; several may follow one --input.
    #[arg(long, num_args = 1.., required = true)]
    pub input: Vec<PathBuf>,
    /// Print one JSON object per image instead of a table.
    #[arg(long)]
    pub jsonl: bool,
    /// Classes shown per image.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Retrieved entries shown per image (default: all of them with --jsonl, 3 in the table).
    #[arg(long)]
    pub evidence: Option<usize>,
    /// The memory to retrieve from (default: the one the model was trained against).
    #[arg(long)]
    pub memory: Option<PathBuf>,
    /// How neighbours are found: exact, hnsw or int8 (default: hnsw where the memory has an
    /// up-to-date index, else int8 where it has up-to-date int8 keys, else exact).
    #[arg(long)]
    pub engine: Option<Engine>,
    /// HNSW's beam width (with the hnsw engine), or the rows re-scored per query (with int8;
    /// default 4 x k).
    #[arg(long)]
    pub ef: Option<usize>,
    /// Images per forward pass and search.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
}

pub fn predict_cmd(args: &PredictArgs) -> Result<()> {
    anyhow::ensure!(args.batch > 0, "--batch must be at least 1");
    let started = std::time::Instant::now();
    let mut images = Vec::new();
    for input in &args.input {
        let (found, _) = list_images(input, None)?;
        let whole_path = args.input.len() > 1;
        images.extend(found.into_iter().map(|image| {
            let id = match whole_path {
                true => image.path.display().to_string(),
                false => image.id,
            };
            (id, ImageSource::File(image.path))
        }));
    }
    let (recognizer, warning) =
        Recognizer::open(&args.model, args.memory.as_deref(), args.engine, args.ef)
            .map_err(|e| anyhow!("opening {}: {e:#}", args.model.display()))?;
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }
    let recognizer = ImageRecognizer::new(recognizer)?;
    let memory = match (
        recognizer.recognizer.memory(),
        recognizer.recognizer.retrieval(),
    ) {
        (Some(memory), Some(how)) => format!(", {} memory entries by {how}", memory.count()),
        _ => String::new(),
    };
    tracing::info!(
        "ready in {:.2} s: {} {}{memory}",
        started.elapsed().as_secs_f64(),
        recognizer.recognizer.bundle.meta.model.method(),
        args.model.display()
    );
    let evidence = args
        .evidence
        .unwrap_or(if args.jsonl { usize::MAX } else { 3 });
    let bar = ramem_progress::bar(images.len() as u64, "images");
    let mut stdout = std::io::stdout().lock();
    let (mut predicted, mut skipped) = (0usize, 0usize);
    let options = ClassifyOptions {
        top: args.top,
        batch: args.batch,
        k: None,
    };
    recognizer.classify_each(&images, &options, &mut |chunk, decisions| {
        for ((id, _), decision) in chunk.iter().zip(decisions) {
            let mut decision = match decision {
                Ok(decision) => decision,
                Err(reason) => {
                    tracing::warn!("skipped {id}: {reason}");
                    skipped += 1;
                    continue;
                }
            };
            decision.neighbours.truncate(evidence);
            predicted += 1;
            if args.jsonl {
                writeln!(stdout, "{}", serde_json::to_string(&decision)?)?;
            } else {
                write!(stdout, "{decision}")?;
            }
        }
        bar.inc(chunk.len() as u64);
        Ok(())
    })?;
    bar.finish();
    stdout.flush()?;
    tracing::info!("predicted {predicted} images, skipped {skipped}");
    anyhow::ensure!(
        predicted > 0 || images.is_empty(),
        "none of the {} images could be read",
        images.len()
    );
    Ok(())
}
