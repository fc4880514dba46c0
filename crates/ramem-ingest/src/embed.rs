//! `ramem embed` and `ramem embed-text` as library calls: images to an
//! N x D float32 `.npy` (plus `OUT.ids.txt` naming each row) in resumable
//! chunks, and captions to an N x D `.npy`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ramem_data::{list_images, ImageFile, ImageSource};
use ramem_encode::{load_image_model, load_text_model, registry, EmbedOptions, ImageModel};
use ramem_store::Fnv1a;
use serde::Serialize;

use crate::chunks::{Chunk, ChunkDir, Skipped};

/// What to embed, and how.
#[derive(Debug, Clone)]
pub struct EmbedJob {
    /// Image encoder name (see [`registry`]).
    pub model: String,
    /// A directory of images, a list file or one image.
    pub input: PathBuf,
    /// What relative paths in a list file resolve against.
    pub root: Option<PathBuf>,
    /// The output `.npy`; row names go to `OUT.ids.txt` beside it.
    pub out: PathBuf,
    /// Images per forward pass.
    pub batch: usize,
    /// L2-normalise each embedding.
    pub normalize: bool,
    /// Stop at the first unreadable image instead of skipping it.
    pub strict: bool,
    /// Images per resumable chunk.
    pub chunk_size: usize,
    /// Also write the ImageNet logits (EfficientNet-Lite) here.
    pub logits: Option<PathBuf>,
}

/// What an embedding run did.
#[derive(Debug, Clone)]
pub struct EmbedReport {
    /// Images named by the input.
    pub images: usize,
    /// Rows written.
    pub embedded: usize,
    pub dim: usize,
    /// Files under the input directory that are not images.
    pub ignored: usize,
    /// Images that could not be read (skipped), with why.
    pub skipped: Vec<Skipped>,
    /// Whether chunks of an interrupted run were reused.
    pub resumed: bool,
}

/// What identifies a run, so a resume never mixes chunks of different runs.
#[derive(Serialize)]
struct Plan<'a> {
    /// `--input` and `--root`, canonicalised: the ids alone do not say which
    /// files they are (two directories can hold the same file names).
    input: PathBuf,
    root: Option<PathBuf>,
    model: &'a str,
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

/// The absolute, symlink-free form of `path` (as given if that fails).
fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Embeds the images of `job.input` into `job.out`, resuming the chunks of
/// an interrupted run of the same job.
pub fn embed_images(job: &EmbedJob) -> Result<EmbedReport> {
    if job.batch == 0 || job.chunk_size == 0 {
        bail!("--batch and --chunk-size must be at least 1");
    }
    if job.out.extension().and_then(|e| e.to_str()) != Some("npy") {
        bail!("{}: the output must be a .npy file", job.out.display());
    }
    let (images, ignored) = list_images(&job.input, job.root.as_deref())?;
    if ignored > 0 {
        tracing::info!(
            "{ignored} files without an image extension ignored under {}",
            job.input.display()
        );
    }
    let model = load_image_model(&job.model, &registry::device())?;
    if job.logits.is_some() && !matches!(model, ImageModel::EfficientNet(_)) {
        bail!("--logits needs a model with a classification head (efficientnet-lite*)");
    }
    tracing::info!(
        "embedding {} images with {} ({}-d)",
        images.len(),
        job.model,
        model.dim()
    );
    let mut ids = Fnv1a::new();
    for image in &images {
        ids.write(image.id.as_bytes()).write(b"\n");
    }
    let plan = Plan {
        input: canonical(&job.input),
        root: job.root.as_deref().map(canonical),
        model: &job.model,
        normalize: job.normalize,
        logits: job.logits.is_some(),
        chunk_size: job.chunk_size,
        images: images.len(),
        ids_fingerprint: ids.hex(),
    };
    let partial = ChunkDir::path_for(&job.out);
    let (chunks, resumed) = ChunkDir::open(&partial, &serde_json::to_value(&plan)?)?;
    if resumed {
        tracing::info!("resuming from {}", partial.display());
    }

    let groups: Vec<&[ImageFile]> = images.chunks(job.chunk_size).collect();
    let bar = ramem_progress::bar(images.len() as u64, "images");
    bar.set_message("embedding");
    let mut skipped = Vec::new();
    for (index, group) in groups.iter().enumerate() {
        if let Some((_, previous)) = chunks.completed(index) {
            // A chunk that skipped images (written by a run without --strict)
            // is embedded again under --strict, so bad images still fail.
            if !job.strict || previous.is_empty() {
                skipped.extend(previous);
                bar.inc(group.len() as u64);
                continue;
            }
        }
        let chunk = embed_chunk(&model, group, job, &bar)?;
        chunks.write(index, &chunk)?;
        skipped.extend(chunk.skipped);
    }
    bar.finish();
    crate::log_skipped(
        skipped.iter().map(|s| (s.id.as_str(), s.reason.as_str())),
        skipped.len(),
        images.len(),
    );
    if skipped.len() == images.len() {
        // Nothing to keep: a rerun after the files are fixed starts afresh.
        chunks.remove()?;
        bail!(
            "no image could be embedded (every input was skipped, for the reasons above); \
             nothing written to {}",
            job.out.display()
        );
    }
    let embedded = assemble(&chunks, groups.len(), job)?;
    chunks.remove()?;
    Ok(EmbedReport {
        images: images.len(),
        embedded,
        dim: model.dim(),
        ignored,
        skipped,
        resumed,
    })
}

fn embed_chunk(
    model: &ImageModel,
    group: &[ImageFile],
    job: &EmbedJob,
    bar: &ramem_progress::Progress,
) -> Result<Chunk> {
    let options = EmbedOptions {
        normalize: job.normalize,
        logits: job.logits.is_some(),
    };
    let mut chunk = Chunk {
        dim: model.dim(),
        logits: job.logits.as_ref().map(|_| (1000, Vec::new())),
        ..Chunk::default()
    };
    for (batch_index, batch) in group.chunks(job.batch).enumerate() {
        let sources: Vec<ImageSource> = batch
            .iter()
            .map(|image| ImageSource::File(image.path.clone()))
            .collect();
        let refs: Vec<&ImageSource> = sources.iter().collect();
        let out = model.embed_images(&refs, options)?;
        if let (true, Some((at, reason))) = (job.strict, out.failures.first()) {
            bail!("image {} (--strict): {reason}", batch[*at].id);
        }
        for (at, reason) in &out.failures {
            chunk.skipped.push(Skipped {
                index: batch_index * job.batch + at,
                id: batch[*at].id.clone(),
                reason: reason.clone(),
            });
        }
        for (i, image) in batch.iter().enumerate() {
            if out.embedded(i) {
                chunk.ids.push(image.id.clone());
            }
        }
        chunk.rows.extend_from_slice(&out.embeddings);
        let rows = out.rows();
        if let (Some((classes, all)), Some(logits)) = (chunk.logits.as_mut(), out.logits) {
            if let Some(per_row) = logits.len().checked_div(rows) {
                *classes = per_row;
            }
            all.extend(logits);
        }
        bar.inc(batch.len() as u64);
    }
    Ok(chunk)
}

/// Joins the chunks into the final outputs; returns the rows written.
fn assemble(chunks: &ChunkDir, count: usize, job: &EmbedJob) -> Result<usize> {
    let mut ids = String::new();
    let mut rows = 0;
    for index in 0..count {
        let (chunk_ids, _) = chunks
            .completed(index)
            .with_context(|| format!("chunk {index} of {} is missing", job.out.display()))?;
        rows += chunk_ids.len();
        for id in chunk_ids {
            ids.push_str(&id);
            ids.push('\n');
        }
    }
    if let Some(out) = &job.logits {
        let parts: Vec<PathBuf> = (0..count).map(|i| chunks.logits_path(i)).collect();
        ramem_store::npy::concat_f32_files(&parts, out)?;
    }
    let parts: Vec<PathBuf> = (0..count).map(|i| chunks.rows_path(i)).collect();
    ramem_store::npy::concat_f32_files(&parts, &job.out)?;
    ramem_store::write_atomic(ids_path(&job.out), ids.as_bytes())?;
    Ok(rows)
}

/// Embeds the captions of `input` (a UTF-8 text file, one caption per line;
/// an empty line is an empty caption) into `out` (N x D float32, unit rows).
/// Returns (rows, dim).
pub fn embed_captions(
    model: &str,
    input: &Path,
    out: &Path,
    batch: usize,
) -> Result<(usize, usize)> {
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    let text = std::fs::read_to_string(input).with_context(|| {
        format!(
            "{}: cannot read captions (a UTF-8 text file is expected)",
            input.display()
        )
    })?;
    let captions: Vec<&str> = text.lines().collect();
    if captions.is_empty() {
        bail!("{}: no captions (the file is empty)", input.display());
    }
    let model = load_text_model(model, &registry::device())?;
    let bar = ramem_progress::bar(captions.len() as u64, "captions");
    let rows = model.embed_all(&captions, batch, &mut |n| bar.inc(n as u64))?;
    bar.finish();
    ramem_store::npy::write_f32_matrix(out, captions.len(), model.dim(), &rows)?;
    Ok((captions.len(), model.dim()))
}
