//! `ramem embed`: images -> N x D float32 .npy, in resumable chunks.
//!
//! Work is split into chunks of `--chunk-size` images, each written
//! atomically under `FILE.npy.partial/` as it completes. A rerun of the same
//! command skips the chunks already there; the final files are assembled
//! (temp file + rename) only when every chunk is done.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use clap::Args;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::inputs::{list_images, ImageInput};
use crate::models::{self, ImageModel, IMAGE_MODELS};
use crate::progress;

#[derive(Args)]
pub struct EmbedArgs {
    /// Image encoder.
    #[arg(long, default_value = "efficientnet-lite0", help = format!("Image encoder: {IMAGE_MODELS}"))]
    pub model: String,
    /// A directory of images (walked recursively, sorted by path) or a list file (one path per line).
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

/// What identifies a run, so a resume never mixes chunks of different runs.
#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Plan {
    /// `--input` and `--root`, canonicalised: the ids alone do not say which
    /// files they are (two directories can hold the same file names).
    input: PathBuf,
    root: Option<PathBuf>,
    model: String,
    normalize: bool,
    logits: bool,
    chunk_size: usize,
    images: usize,
    ids_fingerprint: String,
}

/// `emb.npy` -> `emb.ids.txt`.
pub fn ids_path(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    out.with_file_name(format!("{stem}.ids.txt"))
}

fn fingerprint(images: &[ImageInput]) -> String {
    let mut h = ramem_store::Fnv1a::new();
    for image in images {
        h.write(image.id.as_bytes()).write(b"\n");
    }
    h.hex()
}

pub fn run(args: &EmbedArgs) -> Result<()> {
    if args.batch == 0 || args.chunk_size == 0 {
        bail!("--batch and --chunk-size must be at least 1");
    }
    if args.out.extension().and_then(|e| e.to_str()) != Some("npy") {
        bail!("{}: the output must be a .npy file", args.out.display());
    }
    let (images, ignored) = list_images(&args.input, args.root.as_deref())?;
    if ignored > 0 {
        tracing::info!(
            "{ignored} files without an image extension ignored under {}",
            args.input.display()
        );
    }
    let device = models::device();
    let model = models::load_image_model(&args.model, &device)?;
    if args.logits.is_some() && !matches!(model, ImageModel::EfficientNet(_)) {
        bail!("--logits needs a model with a classification head (efficientnet-lite*)");
    }
    tracing::info!(
        "embedding {} images with {} ({}-d)",
        images.len(),
        args.model,
        model.dim()
    );

    let partial = PathBuf::from(format!("{}.partial", args.out.display()));
    let plan = Plan {
        input: canonical(&args.input),
        root: args.root.as_deref().map(canonical),
        model: args.model.clone(),
        normalize: args.normalize,
        logits: args.logits.is_some(),
        chunk_size: args.chunk_size,
        images: images.len(),
        ids_fingerprint: fingerprint(&images),
    };
    prepare_partial_dir(&partial, &plan)?;

    let chunks: Vec<&[ImageInput]> = images.chunks(args.chunk_size).collect();
    let bar = progress::bar(images.len() as u64, "images");
    let mut skipped: Vec<(String, String)> = Vec::new();
    for (index, chunk) in chunks.iter().enumerate() {
        let files = ChunkFiles::new(&partial, index);
        if files.done() {
            let previous = files.read_skipped()?;
            // A chunk that skipped images (written by a run without --strict)
            // is embedded again under --strict, so bad images still fail.
            if !args.strict || previous.is_empty() {
                skipped.extend(previous);
                bar.inc(chunk.len() as u64);
                continue;
            }
        }
        let result = embed_chunk(&model, chunk, args, &bar)?;
        files.write(&result, model.dim())?;
        skipped.extend(result.skipped);
    }
    bar.finish_and_clear();
    assemble(&partial, chunks.len(), args, model.dim())?;

    let embedded = images.len() - skipped.len();
    tracing::info!(
        "wrote {embedded} x {} embeddings to {} (row names in {})",
        model.dim(),
        args.out.display(),
        ids_path(&args.out).display()
    );
    if !skipped.is_empty() {
        tracing::warn!("skipped {} of {} images:", skipped.len(), images.len());
        for (id, why) in skipped.iter().take(20) {
            tracing::warn!("  {id}: {why}");
        }
        if skipped.len() > 20 {
            tracing::warn!("  ... and {} more", skipped.len() - 20);
        }
    }
    Ok(())
}

/// The absolute, symlink-free form of `path` (as given if that fails).
fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

fn prepare_partial_dir(partial: &Path, plan: &Plan) -> Result<()> {
    let plan_path = partial.join("plan.json");
    if partial.is_dir() {
        let previous: Option<Plan> = std::fs::read(&plan_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        if previous.as_ref() == Some(plan) {
            tracing::info!("resuming from {}", partial.display());
            return Ok(());
        }
        tracing::warn!(
            "{} belongs to a different run; starting over",
            partial.display()
        );
        std::fs::remove_dir_all(partial)
            .with_context(|| format!("removing {}", partial.display()))?;
    }
    std::fs::create_dir_all(partial).with_context(|| format!("creating {}", partial.display()))?;
    ramem_store::atomic::write_atomic(&plan_path, &serde_json::to_vec_pretty(plan)?)?;
    Ok(())
}

struct ChunkResult {
    ids: Vec<String>,
    embedding: Vec<f32>,
    logits: Option<Vec<f32>>,
    skipped: Vec<(String, String)>,
}

fn embed_chunk(
    model: &ImageModel,
    chunk: &[ImageInput],
    args: &EmbedArgs,
    bar: &indicatif::ProgressBar,
) -> Result<ChunkResult> {
    let spec = model.spec();
    let mut result = ChunkResult {
        ids: Vec::new(),
        embedding: Vec::new(),
        logits: args.logits.as_ref().map(|_| Vec::new()),
        skipped: Vec::new(),
    };
    for batch in chunk.chunks(args.batch) {
        let decoded: Vec<Result<Vec<f32>>> = batch
            .par_iter()
            .map(|image| ramem_encode::preprocess::preprocess_file(&image.path, &spec))
            .collect();
        let mut pixels = Vec::with_capacity(batch.len() * spec.len());
        let mut ok_ids = Vec::new();
        for (image, pixels_or_error) in batch.iter().zip(decoded) {
            match pixels_or_error {
                Ok(p) => {
                    pixels.extend_from_slice(&p);
                    ok_ids.push(image.id.clone());
                }
                Err(e) if args.strict => {
                    return Err(e.context(format!("image {} (--strict)", image.id)))
                }
                Err(e) => result.skipped.push((image.id.clone(), format!("{e:#}"))),
            }
        }
        if !ok_ids.is_empty() {
            let side = spec.crop as usize;
            let tensor =
                Tensor::from_vec(pixels, (ok_ids.len(), 3, side, side), &models::device())?;
            let out = model.forward(&tensor)?;
            let mut embedding = out.embedding;
            if args.normalize {
                embedding = ramem_encode::l2_normalize(&embedding)?;
            }
            result
                .embedding
                .extend(embedding.flatten_all()?.to_vec1::<f32>()?);
            if let (Some(all), Some(logits)) = (result.logits.as_mut(), out.logits) {
                all.extend(logits.flatten_all()?.to_vec1::<f32>()?);
            }
            result.ids.extend(ok_ids);
        }
        bar.inc(batch.len() as u64);
    }
    Ok(result)
}

/// The files of one completed chunk; the embedding .npy is written last and marks completion.
struct ChunkFiles {
    embedding: PathBuf,
    logits: PathBuf,
    ids: PathBuf,
    skipped: PathBuf,
}

impl ChunkFiles {
    fn new(dir: &Path, index: usize) -> Self {
        Self {
            embedding: dir.join(format!("chunk-{index:06}.npy")),
            logits: dir.join(format!("chunk-{index:06}.logits.npy")),
            ids: dir.join(format!("chunk-{index:06}.ids.txt")),
            skipped: dir.join(format!("chunk-{index:06}.skipped.json")),
        }
    }

    fn done(&self) -> bool {
        self.embedding.is_file() && self.ids.is_file() && self.skipped.is_file()
    }

    fn write(&self, r: &ChunkResult, dim: usize) -> Result<()> {
        let ids: String = r.ids.iter().map(|id| format!("{id}\n")).collect();
        ramem_store::atomic::write_atomic(&self.ids, ids.as_bytes())?;
        ramem_store::atomic::write_atomic(&self.skipped, &serde_json::to_vec(&r.skipped)?)?;
        if let Some(logits) = &r.logits {
            let classes = if r.ids.is_empty() {
                1000
            } else {
                logits.len() / r.ids.len()
            };
            ramem_store::npy::write_f32_matrix(&self.logits, r.ids.len(), classes, logits)?;
        }
        ramem_store::npy::write_f32_matrix(&self.embedding, r.ids.len(), dim, &r.embedding)?;
        Ok(())
    }

    fn read_skipped(&self) -> Result<Vec<(String, String)>> {
        let bytes = std::fs::read(&self.skipped)
            .with_context(|| format!("reading {}", self.skipped.display()))?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not valid JSON", self.skipped.display()))
    }
}

/// Joins the chunks into the final outputs and removes the partial directory.
fn assemble(partial: &Path, chunks: usize, args: &EmbedArgs, _dim: usize) -> Result<()> {
    let files: Vec<ChunkFiles> = (0..chunks).map(|i| ChunkFiles::new(partial, i)).collect();
    let mut ids = String::new();
    for f in &files {
        ids.push_str(
            &std::fs::read_to_string(&f.ids)
                .with_context(|| format!("reading {}", f.ids.display()))?,
        );
    }
    if ids.is_empty() {
        bail!(
            "no image could be embedded (every input was skipped); nothing written to {}",
            args.out.display()
        );
    }
    if let Some(out) = &args.logits {
        let parts: Vec<PathBuf> = files.iter().map(|f| f.logits.clone()).collect();
        ramem_store::npy::concat_f32_files(&parts, out)?;
    }
    let parts: Vec<PathBuf> = files.iter().map(|f| f.embedding.clone()).collect();
    ramem_store::npy::concat_f32_files(&parts, &args.out)?;
    ramem_store::atomic::write_atomic(ids_path(&args.out), ids.as_bytes())?;
    std::fs::remove_dir_all(partial).with_context(|| format!("removing {}", partial.display()))?;
    Ok(())
}
