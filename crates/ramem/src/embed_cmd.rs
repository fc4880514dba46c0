//! The encoder commands: `embed`, `embed-text`, `classify`,
//! `convert-weights` and `bench-encode`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use ramem_data::{list_images, ImageSource};
use ramem_encode::registry::{self, ImageModel};
use ramem_encode::{IMAGE_MODELS, TEXT_MODELS};
use ramem_ingest::{embed_captions, embed_images, ids_path, EmbedJob};

#[derive(Args)]
pub struct EmbedArgs {
    /// Image encoder.
    #[arg(long, default_value = "efficientnet-lite0", help = format!("Image encoder: {IMAGE_MODELS}"))]
    pub model: String,
    /// A directory of images (walked recursively, sorted by path), a list file (one path per line) or one image.
    #[arg(long)]
    pub input: PathBuf,
    /// Directory that relative paths in a list file are resolved against (default: the list file's directory).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Output .npy (N x D float32); row names go to FILE.ids.txt beside it.
    #[arg(long)]
    pub out: PathBuf,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// L2-normalise each embedding (raw by default).
    #[arg(long)]
    pub normalize: bool,
    /// Stop at the first unreadable image instead of skipping it.
    #[arg(long)]
    pub strict: bool,
    /// Images per resumable chunk.
    #[arg(long, default_value_t = 4096)]
    pub chunk_size: usize,
    /// Also write the 1000-class ImageNet logits (EfficientNet-Lite only) to this .npy.
    #[arg(long)]
    pub logits: Option<PathBuf>,
}

pub fn embed(args: &EmbedArgs) -> Result<()> {
    let report = embed_images(&EmbedJob {
        model: args.model.clone(),
        input: args.input.clone(),
        root: args.root.clone(),
        out: args.out.clone(),
        batch: args.batch,
        normalize: args.normalize,
        strict: args.strict,
        chunk_size: args.chunk_size,
        logits: args.logits.clone(),
    })?;
    tracing::info!(
        "wrote {} x {} embeddings to {} (row names in {})",
        report.embedded,
        report.dim,
        args.out.display(),
        ids_path(&args.out).display()
    );
    Ok(())
}

#[derive(Args)]
pub struct EmbedTextArgs {
    /// Text encoder.
    #[arg(long, default_value = "minilm-l6", help = format!("Text encoder: {TEXT_MODELS}"))]
    pub model: String,
    /// A UTF-8 text file with one caption per line (an empty line is an empty caption).
    #[arg(long)]
    pub input: PathBuf,
    /// Output .npy (N x D float32, L2-normalised).
    #[arg(long)]
    pub out: PathBuf,
    /// Captions per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
}

pub fn embed_text(args: &EmbedTextArgs) -> Result<()> {
    let (rows, dim) = embed_captions(&args.model, &args.input, &args.out, args.batch)?;
    tracing::info!(
        "wrote {rows} x {dim} caption embeddings to {}",
        args.out.display()
    );
    Ok(())
}

#[derive(Args)]
pub struct ClassifyArgs {
    /// An EfficientNet-Lite model (efficientnet-lite0|1|2).
    #[arg(long, default_value = "efficientnet-lite0")]
    pub model: String,
    /// A directory of images, a list file or one image.
    #[arg(long)]
    pub input: PathBuf,
    /// How many classes to show per image.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn classify(args: &ClassifyArgs) -> Result<()> {
    let (images, _) = list_images(&args.input, None)?;
    let model = registry::load_image_model(&args.model, &registry::device())?;
    if !matches!(model, ImageModel::EfficientNet(_)) {
        bail!("classify needs a model with an ImageNet head (efficientnet-lite0|1|2)");
    }
    let names = ramem_assets::Cache::from_env()?.imagenet_class_names()?;
    let sources: Vec<ImageSource> = images
        .iter()
        .map(|i| ImageSource::File(i.path.clone()))
        .collect();
    let refs: Vec<&ImageSource> = sources.iter().collect();
    for (image, result) in images.iter().zip(model.classify(&refs, args.top, 32)?) {
        let top = match result {
            Ok(top) => top,
            Err(reason) => {
                tracing::warn!("skipped {}: {reason}", image.id);
                continue;
            }
        };
        let named: Vec<(usize, &str, f32)> = top
            .iter()
            .map(|&(c, p)| (c, names.get(c).map(String::as_str).unwrap_or("?"), p))
            .collect();
        if args.json {
            let line = serde_json::json!({ "image": image.id, "top": named });
            println!("{line}");
        } else {
            let shown: Vec<String> = named
                .iter()
                .map(|(c, n, p)| format!("{n} ({c}) {:.1}%", p * 100.0))
                .collect();
            println!("{:<24} {}", image.id, shown.join(" | "));
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct ConvertArgs {
    /// Input checkpoint in PyTorch's legacy (pre-zip) format.
    #[arg(long)]
    input: PathBuf,
    /// Output safetensors file.
    #[arg(long)]
    output: PathBuf,
}

pub fn convert(args: &ConvertArgs) -> Result<()> {
    let n = ramem_encode::weights::convert_legacy_to_safetensors(&args.input, &args.output)?;
    tracing::info!("wrote {n} tensors to {}", args.output.display());
    Ok(())
}

/// Reads `(N, 3, S, S)` float32 pixels from a .npy, runs the encoder over
/// them in batches `--repeats` times after one warm-up batch, prints one
/// JSON line with per-repeat timings, and writes the embeddings of the last
/// repeat.
#[derive(Args)]
pub struct BenchEncodeArgs {
    #[arg(long, default_value = "efficientnet-lite0")]
    pub model: String,
    /// float32 .npy of shape (N, 3, S, S) holding preprocessed pixels.
    #[arg(long)]
    pub pixels: PathBuf,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Where to write the (N, D) embeddings.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn bench(args: &BenchEncodeArgs) -> Result<()> {
    if args.batch == 0 || args.repeats == 0 {
        bail!("--batch and --repeats must be at least 1");
    }
    let (shape, flat) = ramem_store::npy::read_f32_array(&args.pixels)?;
    if shape.len() != 4 || shape[1] != 3 || shape[2] != shape[3] {
        bail!(
            "{}: expected shape (N, 3, S, S), found {shape:?}",
            args.pixels.display()
        );
    }
    let (n, side) = (shape[0], shape[2]);
    let model = registry::load_image_model(&args.model, &registry::device())?;
    let timing = model.time_forward(&flat, n, side, args.batch, args.repeats)?;
    let seconds = timing.seconds;
    if let Some(out) = &args.out {
        ramem_store::npy::write_f32_matrix(out, n, model.dim(), &timing.embeddings)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    let report = serde_json::json!({
        "model": args.model,
        "batch": args.batch,
        "threads": rayon::current_num_threads(),
        "images": n,
        "seconds": seconds,
        "images_per_s": seconds.iter().map(|s| n as f64 / s).collect::<Vec<_>>(),
    });
    println!("{report}");
    Ok(())
}
