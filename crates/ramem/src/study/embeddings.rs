//! Embeddings computed once and cached: a study of twenty configurations
//! costs one encoding pass. Image embeddings of a set of examples are keyed
//! by the encoder and a fingerprint of the examples' ids and sources, and
//! written in resumable chunks (`NAME.partial/chunk-NNNNNN.npy`, each
//! atomic) that are joined into `NAME.npy` when all are done.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use ramem_data::Example;
use rayon::prelude::*;

use crate::models::{self, ImageModel, TextModel};
use crate::progress;

const CHUNK: usize = 4096;
const BATCH: usize = 32;

/// Loads the encoders only when a cache miss needs them.
pub struct Encoders {
    pub image_name: String,
    pub text_name: String,
    image: Option<ImageModel>,
    text: Option<TextModel>,
    cache_dir: PathBuf,
}

/// Row-major embeddings.
#[derive(Debug, Clone)]
pub struct Embeddings {
    pub data: Vec<f32>,
    pub dim: usize,
}

impl Embeddings {
    pub fn rows(&self) -> usize {
        self.data.len().checked_div(self.dim).unwrap_or(0)
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// The rows at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Embeddings {
        let mut data = Vec::with_capacity(indices.len() * self.dim);
        for &i in indices {
            data.extend_from_slice(self.row(i));
        }
        Embeddings {
            data,
            dim: self.dim,
        }
    }
}

fn fingerprint<'a>(parts: impl Iterator<Item = &'a str>) -> String {
    // Each part ends with a 0 byte, so ["ab", "c"] and ["a", "bc"] differ.
    let mut h = ramem_store::Fnv1a::new();
    for part in parts {
        h.write(part.as_bytes()).write(&[0]);
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

impl Encoders {
    pub fn new(image_name: &str, text_name: &str, cache_dir: Option<&Path>) -> Result<Encoders> {
        let cache_dir = match cache_dir {
            Some(dir) => dir.to_path_buf(),
            None => ramem_assets::Cache::from_env()?.root().join("embeddings"),
        };
        Ok(Encoders {
            image_name: image_name.to_string(),
            text_name: text_name.to_string(),
            image: None,
            text: None,
            cache_dir,
        })
    }

    fn image_model(&mut self) -> Result<&ImageModel> {
        if self.image.is_none() {
            self.image = Some(models::load_image_model(
                &self.image_name,
                &models::device(),
            )?);
        }
        self.image.as_ref().context("image encoder not loaded")
    }

    fn text_model(&mut self) -> Result<&TextModel> {
        if self.text.is_none() {
            self.text = Some(models::load_text_model(&self.text_name, &models::device())?);
        }
        self.text.as_ref().context("text encoder not loaded")
    }

    /// Raw (not normalised) image embeddings of `examples`, from the cache
    /// when present. `what` names the set in messages; the cache file is named
    /// by content (encoder, ids and image sources).
    pub fn images(&mut self, what: &str, examples: &[Example]) -> Result<Embeddings> {
        let key = fingerprint(
            std::iter::once(self.image_name.as_str()).chain(
                examples
                    .iter()
                    .flat_map(|e| [e.id.as_str(), ""].into_iter()),
            ),
        );
        let mut sources = ramem_store::Fnv1a::new();
        for e in examples {
            sources.write(e.image.describe().as_bytes()).write(&[0]);
        }
        let sources = sources.hex();
        // Named by content, not by study: every study over the same images shares it.
        let path = self.cache_dir.join(format!(
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
                return Ok(Embeddings {
                    data: m.data,
                    dim: m.cols,
                });
            }
            tracing::warn!(
                "{}: {} rows, expected {}; recomputing",
                path.display(),
                m.rows,
                examples.len()
            );
        }
        let partial = PathBuf::from(format!("{}.partial", path.display()));
        std::fs::create_dir_all(&partial)
            .with_context(|| format!("creating {}", partial.display()))?;
        let chunks: Vec<&[Example]> = examples.chunks(CHUNK).collect();
        let bar = progress::bar(examples.len() as u64, "images");
        bar.set_message(format!("encoding {what}"));
        let mut parts = Vec::new();
        for (index, chunk) in chunks.iter().enumerate() {
            let part = partial.join(format!("chunk-{index:06}.npy"));
            if !part.is_file() {
                let model = self.image_model()?;
                let (data, dim) = encode_chunk(model, chunk, &bar)?;
                ramem_store::npy::write_f32_matrix(&part, chunk.len(), dim, &data)?;
            } else {
                bar.inc(chunk.len() as u64);
            }
            parts.push(part);
        }
        bar.finish_and_clear();
        if parts.is_empty() {
            bail!("{what}: no images to encode");
        }
        ramem_store::npy::concat_f32_files(&parts, &path)?;
        std::fs::remove_dir_all(&partial)
            .with_context(|| format!("removing {}", partial.display()))?;
        let m = ramem_store::npy::read_f32_matrix(&path)?;
        Ok(Embeddings {
            data: m.data,
            dim: m.cols,
        })
    }

    /// L2-normalised text embeddings of the examples' captions (an example
    /// without a caption gets the embedding of the empty string).
    pub fn captions(&mut self, what: &str, examples: &[Example]) -> Result<Embeddings> {
        let captions: Vec<&str> = examples
            .iter()
            .map(|e| e.caption.as_deref().unwrap_or(""))
            .collect();
        let key =
            fingerprint(std::iter::once(self.text_name.as_str()).chain(captions.iter().copied()));
        let path = self
            .cache_dir
            .join(format!("captions-{}-{key}.npy", slug(&self.text_name)));
        if path.is_file() {
            let m = ramem_store::npy::read_f32_matrix(&path)?;
            if m.rows == examples.len() {
                return Ok(Embeddings {
                    data: m.data,
                    dim: m.cols,
                });
            }
        }
        let bar = progress::bar(captions.len() as u64, "captions");
        bar.set_message(format!("encoding {what} captions"));
        let model = self.text_model()?;
        let mut data = Vec::new();
        let mut dim = model.dim();
        for batch in captions.chunks(64) {
            let t = model.embed(batch)?;
            dim = t.dim(1)?;
            data.extend(t.flatten_all()?.to_vec1::<f32>()?);
            bar.inc(batch.len() as u64);
        }
        bar.finish_and_clear();
        std::fs::create_dir_all(&self.cache_dir)
            .with_context(|| format!("creating {}", self.cache_dir.display()))?;
        ramem_store::npy::write_f32_matrix(&path, captions.len(), dim, &data)?;
        Ok(Embeddings { data, dim })
    }
}

/// Embeds one chunk. An image that cannot be decoded is reported and gets a
/// row of NaN, the cache's mark for "no embedding"; [`drop_missing`] removes
/// such rows (and their examples) before anything uses them.
fn encode_chunk(
    model: &ImageModel,
    chunk: &[Example],
    bar: &indicatif::ProgressBar,
) -> Result<(Vec<f32>, usize)> {
    let spec = model.spec();
    let side = spec.crop as usize;
    let dim = model.dim();
    let mut out = Vec::with_capacity(chunk.len() * dim);
    for batch in chunk.chunks(BATCH) {
        let pixels: Vec<Option<Vec<f32>>> = batch
            .par_iter()
            .map(|e| {
                let result = e
                    .image
                    .load()
                    .with_context(|| format!("decoding {}", e.image.describe()))
                    .and_then(|image| ramem_encode::preprocess::preprocess(&image, &spec));
                match result {
                    Ok(p) => Some(p),
                    Err(err) => {
                        tracing::warn!("skipping {}: {err:#}", e.image.describe());
                        None
                    }
                }
            })
            .collect();
        let ok: Vec<&Vec<f32>> = pixels.iter().flatten().collect();
        let mut embedded = Vec::new();
        if !ok.is_empty() {
            let flat: Vec<f32> = ok.iter().flat_map(|p| p.iter().copied()).collect();
            let tensor = Tensor::from_vec(flat, (ok.len(), 3, side, side), &models::device())?;
            embedded = model
                .forward(&tensor)?
                .embedding
                .flatten_all()?
                .to_vec1::<f32>()?;
        }
        let mut rows = embedded.chunks_exact(dim);
        for p in &pixels {
            match p {
                Some(_) => out.extend_from_slice(rows.next().context("embedding rows missing")?),
                None => out.extend(std::iter::repeat_n(f32::NAN, dim)),
            }
        }
        bar.inc(batch.len() as u64);
    }
    Ok((out, dim))
}

/// Removes the examples whose image could not be embedded (NaN rows), with
/// their rows; returns how many were dropped.
pub fn drop_missing(examples: &mut Vec<Example>, embeddings: &mut Embeddings) -> usize {
    let dim = embeddings.dim;
    let keep: Vec<bool> = embeddings
        .data
        .chunks_exact(dim)
        .map(|row| !row[0].is_nan())
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
    let mut flags = keep.into_iter();
    examples.retain(|_| flags.next().unwrap_or(false));
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;
    use ramem_data::ImageSource;

    #[test]
    fn rows_of_undecodable_images_are_dropped_with_their_examples() {
        let example = |id: &str| Example {
            id: id.into(),
            image: ImageSource::File(id.into()),
            label: 0,
            caption: None,
        };
        let mut examples = vec![example("a"), example("b"), example("c")];
        let mut emb = Embeddings {
            data: vec![1.0, 2.0, f32::NAN, f32::NAN, 5.0, 6.0],
            dim: 2,
        };
        assert_eq!(drop_missing(&mut examples, &mut emb), 1);
        assert_eq!(emb.data, vec![1.0, 2.0, 5.0, 6.0]);
        let ids: Vec<&str> = examples.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["a", "c"]);
    }
}
