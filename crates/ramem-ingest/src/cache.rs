//! Embeddings computed once and cached: a study of twenty configurations
//! costs one encoding pass. Image embeddings of a set of examples are keyed
//! by the encoder and a fingerprint of the examples' ids and sources, and
//! written in resumable chunks (the [`ChunkDir`] of the cache file) that are
//! joined into the cache file when all are done. An image that cannot be
//! decoded is reported and gets a row of NaN, the cache's mark for "no
//! embedding"; [`drop_missing`] removes such rows (and their examples)
//! before anything uses them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ramem_data::{Example, ImageSource};
use ramem_encode::{load_image_model, load_text_model, registry, ImageModel, TextModel};
use ramem_store::npy::Matrix;
use ramem_store::Fnv1a;

use crate::chunks::{Chunk, ChunkDir, Skipped};

/// Examples per resumable chunk.
const CHUNK: usize = 4096;
/// Images per forward pass.
const BATCH: usize = 32;
/// Captions per forward pass.
const TEXT_BATCH: usize = 64;

/// The cache of a study's embeddings; loads the encoders only when a cache
/// miss needs them.
pub struct EmbeddingCache {
    image_name: String,
    text_name: String,
    image: Option<ImageModel>,
    text: Option<TextModel>,
    dir: PathBuf,
}

/// FNV-1a of `parts`, each ended by a zero byte.
fn fingerprint<'a>(parts: impl Iterator<Item = &'a str>) -> String {
    let mut h = Fnv1a::new();
    for part in parts {
        h.write_part(part);
    }
    h.hex()
}

fn slug(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl EmbeddingCache {
    /// A cache in `dir` (default: `$RAMEM_HOME/embeddings`) for the image
    /// encoder `image` and the text encoder `text` (registry names).
    pub fn new(image: &str, text: &str, dir: Option<&Path>) -> Result<EmbeddingCache> {
        let dir = match dir {
            Some(dir) => dir.to_path_buf(),
            None => ramem_assets::Cache::from_env()?.root().join("embeddings"),
        };
        Ok(EmbeddingCache {
            image_name: image.to_string(),
            text_name: text.to_string(),
            image: None,
            text: None,
            dir,
        })
    }

    fn image_model(&mut self) -> Result<&ImageModel> {
        if self.image.is_none() {
            self.image = Some(load_image_model(&self.image_name, &registry::device())?);
        }
        self.image.as_ref().context("image encoder not loaded")
    }

    fn text_model(&mut self) -> Result<&TextModel> {
        if self.text.is_none() {
            self.text = Some(load_text_model(&self.text_name, &registry::device())?);
        }
        self.text.as_ref().context("text encoder not loaded")
    }

    /// Raw (not normalised) image embeddings of `examples`, one row each
    /// (NaN where the image could not be read), from the cache when present.
    /// `what` names the set in messages; the cache file is named by content
    /// (encoder, ids and image sources), not by study: every study over the
    /// same images shares it.
    pub fn images(&mut self, what: &str, examples: &[Example]) -> Result<Matrix<f32>> {
        let key = fingerprint(
            std::iter::once(self.image_name.as_str()).chain(
                examples
                    .iter()
                    .flat_map(|e| [e.id.as_str(), ""].into_iter()),
            ),
        );
        let mut sources = Fnv1a::new();
        for e in examples {
            sources.write_part(&e.image.describe());
        }
        let sources = sources.hex();
        let path = self.dir.join(format!(
            "images-{}-{key}-{sources}.npy",
            slug(&self.image_name)
        ));
        if path.is_file() {
            let m = ramem_store::npy::read_f32_matrix(&path)?;
            if m.rows == examples.len() {
                tracing::info!(
                    "{what}: {} cached image embeddings from {}",
                    m.rows,
                    path.display()
                );
                return Ok(m);
            }
            tracing::warn!(
                "{}: {} rows, expected {}; recomputing",
                path.display(),
                m.rows,
                examples.len()
            );
        }
        if examples.is_empty() {
            bail!("{what}: no images to encode");
        }
        let plan = serde_json::json!({
            "cache": path.file_name().map(|n| n.to_string_lossy().into_owned()),
            "chunk": CHUNK,
        });
        let (chunks, _) = ChunkDir::open(&ChunkDir::path_for(&path), &plan)?;
        let groups: Vec<&[Example]> = examples.chunks(CHUNK).collect();
        let bar = ramem_progress::bar(examples.len() as u64, "images");
        bar.set_message(format!("encoding {what}"));
        for (index, group) in groups.iter().enumerate() {
            if chunks.completed(index).is_some() {
                bar.inc(group.len() as u64);
                continue;
            }
            let model = self.image_model()?;
            let chunk = embed_with_nan_rows(model, group, &bar)?;
            chunks.write(index, &chunk)?;
        }
        bar.finish();
        let parts: Vec<PathBuf> = (0..groups.len()).map(|i| chunks.rows_path(i)).collect();
        ramem_store::npy::concat_f32_files(&parts, &path)?;
        chunks.remove()?;
        Ok(ramem_store::npy::read_f32_matrix(&path)?)
    }

    /// L2-normalised text embeddings of the examples' captions (an example
    /// without a caption gets the embedding of the empty string).
    pub fn captions(&mut self, what: &str, examples: &[Example]) -> Result<Matrix<f32>> {
        let captions: Vec<&str> = examples
            .iter()
            .map(|e| e.caption.as_deref().unwrap_or(""))
            .collect();
        let key =
            fingerprint(std::iter::once(self.text_name.as_str()).chain(captions.iter().copied()));
        let path = self
            .dir
            .join(format!("captions-{}-{key}.npy", slug(&self.text_name)));
        if path.is_file() {
            let m = ramem_store::npy::read_f32_matrix(&path)?;
            if m.rows == examples.len() {
                return Ok(m);
            }
        }
        let bar = ramem_progress::bar(captions.len() as u64, "captions");
        bar.set_message(format!("encoding {what} captions"));
        let model = self.text_model()?;
        let data = model.embed_all(&captions, TEXT_BATCH, &mut |n| bar.inc(n as u64))?;
        let dim = model.dim();
        bar.finish();
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        ramem_store::npy::write_f32_matrix(&path, captions.len(), dim, &data)?;
        Ok(Matrix {
            rows: captions.len(),
            cols: dim,
            data,
        })
    }
}

/// Embeds one chunk: every example gets a row, NaN where its image could
/// not be read (reported here).
fn embed_with_nan_rows(
    model: &ImageModel,
    group: &[Example],
    bar: &ramem_progress::Progress,
) -> Result<Chunk> {
    let mut chunk = Chunk {
        dim: model.dim(),
        ..Chunk::default()
    };
    for (batch_index, batch) in group.chunks(BATCH).enumerate() {
        let sources: Vec<&ImageSource> = batch.iter().map(|e| &e.image).collect();
        let out = model.embed_images(&sources, Default::default())?;
        for (at, reason) in &out.failures {
            tracing::warn!("skipping {}: {reason}", batch[*at].image.describe());
            chunk.skipped.push(Skipped {
                index: batch_index * BATCH + at,
                id: batch[*at].id.clone(),
                reason: reason.clone(),
            });
        }
        chunk.rows.extend(out.with_nan_rows(batch.len()));
        chunk.ids.extend(batch.iter().map(|e| e.id.clone()));
        bar.inc(batch.len() as u64);
    }
    Ok(chunk)
}

/// Removes the examples whose image could not be embedded (NaN rows), with
/// their rows; returns how many were dropped.
pub fn drop_missing(examples: &mut Vec<Example>, embeddings: &mut Matrix<f32>) -> usize {
    let dim = embeddings.cols;
    let keep: Vec<bool> = embeddings
        .data
        .chunks_exact(dim.max(1))
        .map(|row| !row.first().is_some_and(|v| v.is_nan()))
        .collect();
    let dropped = keep.iter().filter(|k| !**k).count();
    if dropped == 0 {
        return 0;
    }
    let mut data = Vec::with_capacity((keep.len() - dropped) * dim);
    for (row, &k) in embeddings.data.chunks_exact(dim).zip(&keep) {
        if k {
            data.extend_from_slice(row);
        }
    }
    embeddings.data = data;
    embeddings.rows = keep.len() - dropped;
    let mut flags = keep.into_iter();
    examples.retain(|_| flags.next().unwrap_or(false));
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_of_undecodable_images_are_dropped_with_their_examples() {
        let example = |id: &str| Example {
            id: id.into(),
            image: ImageSource::File(id.into()),
            label: 0,
            caption: None,
        };
        let mut examples = vec![example("a"), example("b"), example("c")];
        let mut emb = Matrix {
            rows: 3,
            cols: 2,
            data: vec![1.0, 2.0, f32::NAN, f32::NAN, 5.0, 6.0],
        };
        assert_eq!(drop_missing(&mut examples, &mut emb), 1);
        assert_eq!((emb.rows, emb.data), (2, vec![1.0, 2.0, 5.0, 6.0]));
        let ids: Vec<&str> = examples.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["a", "c"]);
    }
}
