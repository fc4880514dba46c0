//! The one batch embedder: decodes and preprocesses a batch of images in
//! parallel, runs the encoder once over every image that could be read, and
//! says why each other one could not; and the one caption loop. `ramem
//! embed`, `ramem memory build` and the study's embedding cache all embed
//! through it.

use anyhow::{Context, Result};
use candle_core::Tensor;
use ramem_data::ImageSource;
use rayon::prelude::*;

use crate::registry::{device, ImageModel, TextModel};

/// What to compute besides the embeddings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmbedOptions {
    /// Scale each embedding to unit length (raw by default).
    pub normalize: bool,
    /// Also return the 1000-class ImageNet logits (models with that head).
    pub logits: bool,
}

/// What a batch of images gave.
#[derive(Debug, Clone, Default)]
pub struct EmbeddedImages {
    pub dim: usize,
    /// One row per image that could be read, in input order.
    pub embeddings: Vec<f32>,
    /// The ImageNet logits of the same rows, when asked for.
    pub logits: Option<Vec<f32>>,
    /// Why each other image could not be read: (position in the batch, reason).
    pub failures: Vec<(usize, String)>,
}

impl EmbeddedImages {
    /// Rows embedded.
    pub fn rows(&self) -> usize {
        self.embeddings.len().checked_div(self.dim).unwrap_or(0)
    }

    /// Whether image `i` of the batch was embedded.
    pub fn embedded(&self, i: usize) -> bool {
        !self.failures.iter().any(|(at, _)| *at == i)
    }

    /// The rows in input order with a row of NaN for each image that could
    /// not be read (how the study's embedding cache marks them).
    pub fn with_nan_rows(&self, images: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(images * self.dim);
        let mut rows = self.embeddings.chunks_exact(self.dim.max(1));
        for i in 0..images {
            match self.embedded(i).then(|| rows.next()).flatten() {
                Some(row) => out.extend_from_slice(row),
                None => out.extend(std::iter::repeat_n(f32::NAN, self.dim)),
            }
        }
        out
    }
}

impl ImageModel {
    /// Decodes and preprocesses `images` in parallel, then embeds every one
    /// that could be read in one forward pass. Errors of the model stop the
    /// batch; an unreadable image is only reported (see
    /// [`EmbeddedImages::failures`]).
    pub fn embed_images(
        &self,
        images: &[&ImageSource],
        options: EmbedOptions,
    ) -> Result<EmbeddedImages> {
        let spec = self.spec();
        if let Self::EfficientNet(model) = self {
            // The CPU engine takes one image at a time, decoded and
            // preprocessed just before it runs (no batch-wide buffer).
            let side = spec.crop as usize;
            let each = model.embed_each(images.len(), side, |i, pixels| {
                let decoded = images[i].load().map_err(|e| format!("{e:#}"))?;
                crate::preprocess::preprocess_into(&decoded, &spec, pixels)
                    .map_err(|e| format!("{e:#}"))
            });
            if let Some(each) = each {
                let mut out = EmbeddedImages {
                    dim: self.dim(),
                    ..EmbeddedImages::default()
                };
                for (i, result) in each.into_iter().enumerate() {
                    match result {
                        Ok(row) => out.embeddings.extend_from_slice(&row),
                        Err(reason) => out.failures.push((i, reason)),
                    }
                }
                let good = images.len() - out.failures.len();
                if options.logits {
                    out.logits = model.logits_of(&out.embeddings, good);
                }
                if options.normalize && good > 0 {
                    let rows = Tensor::from_vec(out.embeddings, (good, out.dim), &device())?;
                    out.embeddings = crate::l2_normalize(&rows)?.flatten_all()?.to_vec1()?;
                }
                return Ok(out);
            }
        }
        let pixels: Vec<std::result::Result<Vec<f32>, String>> = images
            .par_iter()
            .map(|image| {
                image
                    .load()
                    .map_err(anyhow::Error::from)
                    .and_then(|decoded| crate::preprocess::preprocess(&decoded, &spec))
                    .map_err(|e| format!("{e:#}"))
            })
            .collect();
        let mut out = EmbeddedImages {
            dim: self.dim(),
            logits: options.logits.then(Vec::new),
            ..EmbeddedImages::default()
        };
        let mut flat = Vec::with_capacity(images.len() * spec.len());
        for (i, result) in pixels.into_iter().enumerate() {
            match result {
                Ok(p) => flat.extend_from_slice(&p),
                Err(reason) => out.failures.push((i, reason)),
            }
        }
        let good = images.len() - out.failures.len();
        if good == 0 {
            return Ok(out);
        }
        let side = spec.crop as usize;
        let tensor = Tensor::from_vec(flat, (good, 3, side, side), &device())?;
        let forward = self.forward(&tensor)?;
        let mut embedding = forward.embedding;
        if options.normalize {
            embedding = crate::l2_normalize(&embedding)?;
        }
        out.embeddings = embedding.flatten_all()?.to_vec1::<f32>()?;
        if let Some(all) = out.logits.as_mut() {
            let logits = forward
                .logits
                .context("this model has no classification head for --logits")?;
            all.extend(logits.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    }
}

impl TextModel {
    /// L2-normalised embeddings of `texts`, `batch` at a time, row-major
    /// (`texts.len() x dim`); `done(n)` after each batch of `n`.
    pub fn embed_all(
        &self,
        texts: &[&str],
        batch: usize,
        done: &mut dyn FnMut(usize),
    ) -> Result<Vec<f32>> {
        let mut rows = Vec::with_capacity(texts.len() * self.dim());
        for chunk in texts.chunks(batch.max(1)) {
            rows.extend(self.embed(chunk)?.flatten_all()?.to_vec1::<f32>()?);
            done(chunk.len());
        }
        Ok(rows)
    }
}

/// One image's classes: (class index, probability) best first, or why the
/// image could not be read.
pub type Classified = std::result::Result<Vec<(usize, f32)>, String>;

impl ImageModel {
    /// The `top` ImageNet classes (index, probability) of each image, by
    /// the model's own 1000-class head (EfficientNet-Lite), in batches of
    /// `batch`; an image that cannot be read gets its reason instead.
    pub fn classify(
        &self,
        images: &[&ImageSource],
        top: usize,
        batch: usize,
    ) -> Result<Vec<Classified>> {
        let options = EmbedOptions {
            normalize: false,
            logits: true,
        };
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(batch.max(1)) {
            let embedded = self.embed_images(chunk, options)?;
            let logits = embedded.logits.as_deref().unwrap_or_default();
            let classes = logits.len().checked_div(embedded.rows()).unwrap_or(0);
            let mut rows = logits.chunks_exact(classes.max(1));
            for (i, _) in chunk.iter().enumerate() {
                if let Some((_, reason)) = embedded.failures.iter().find(|(at, _)| *at == i) {
                    out.push(Err(reason.clone()));
                    continue;
                }
                let row = rows.next().context("logit rows missing")?;
                out.push(Ok(top_classes(row, top)));
            }
        }
        Ok(out)
    }
}

/// The `top` classes of a logit row by softmax probability, best first.
fn top_classes(logits: &[f32], top: usize) -> Vec<(usize, f32)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| exps[b].total_cmp(&exps[a]));
    order
        .into_iter()
        .take(top)
        .map(|c| (c, exps[c] / sum))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_classes_are_softmax_probabilities_best_first() {
        let top = top_classes(&[0.0, 2.0, 1.0], 2);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2]);
        let total: f32 = top_classes(&[0.0, 2.0, 1.0], 3).iter().map(|t| t.1).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }
}

/// What [`ImageModel::time_forward`] measured.
#[derive(Debug, Clone)]
pub struct ForwardTiming {
    /// Wall seconds of each pass over every image.
    pub seconds: Vec<f64>,
    /// The last pass's embeddings, `images x dim`, row-major.
    pub embeddings: Vec<f32>,
}

impl ImageModel {
    /// Runs the network alone over `n` preprocessed images (`pixels`:
    /// `(n, 3, side, side)`), `batch` at a time, `repeats` times after one
    /// warm-up batch: the encoder's throughput without decoding
    /// (`ramem bench-encode`, benches/encode_vs_onnxruntime.py).
    pub fn time_forward(
        &self,
        pixels: &[f32],
        n: usize,
        side: usize,
        batch: usize,
        repeats: usize,
    ) -> Result<ForwardTiming> {
        anyhow::ensure!(
            batch > 0 && repeats > 0,
            "batch and repeats must be at least 1"
        );
        let all = Tensor::from_slice(pixels, (n, 3, side, side), &device())?;
        let run_all = || -> Result<Vec<f32>> {
            let mut out = Vec::with_capacity(n * self.dim());
            for start in (0..n).step_by(batch) {
                let x = all.narrow(0, start, batch.min(n - start))?;
                out.extend(
                    self.forward(&x)?
                        .embedding
                        .flatten_all()?
                        .to_vec1::<f32>()?,
                );
            }
            Ok(out)
        };
        self.forward(&all.narrow(0, 0, batch.min(n))?)?;
        let mut timing = ForwardTiming {
            seconds: Vec::with_capacity(repeats),
            embeddings: Vec::new(),
        };
        for _ in 0..repeats {
            let start = std::time::Instant::now();
            timing.embeddings = run_all()?;
            timing.seconds.push(start.elapsed().as_secs_f64());
        }
        Ok(timing)
    }
}
