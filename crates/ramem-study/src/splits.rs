//! Per-seed splits of a data set's training images: the (long-tailed,
//! possibly noisy) training subset and the validation subset. The test split
//! is the data set's own and stays untouched and clean.

use anyhow::{Context, Result};
use ramem_data::protocol::{
    asymmetric_noise, long_tail_subset, stratified_split, symmetric_noise,
    FASHION_MNIST_ASYMMETRIC_FLIPS,
};
use ramem_data::SeededRng;

use crate::config::{NoiseKind, StudyConfig};

/// Indices into the training split, with the labels to train on.
#[derive(Debug, Clone)]
pub struct SeedSplit {
    pub train: Vec<usize>,
    /// Training labels (with noise where the study asks for it).
    pub train_labels: Vec<usize>,
    pub val: Vec<usize>,
    pub val_labels: Vec<usize>,
    /// Labels changed by the noise.
    pub flipped: usize,
}

/// The split for `seed` of a training split whose clean labels are `labels`.
pub fn split_for_seed(
    config: &StudyConfig,
    labels: &[usize],
    classes: usize,
    seed: u64,
) -> Result<SeedSplit> {
    let (train, val) = match &config.long_tail {
        Some(lt) => {
            let train = long_tail_subset(labels, classes, lt.n_max, lt.imbalance_factor, seed)
                .context("building the long-tailed training subset")?;
            // A balanced validation set from the images the subset left out.
            let mut in_train = vec![false; labels.len()];
            for &i in &train {
                in_train[i] = true;
            }
            let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
            for (i, &l) in labels.iter().enumerate() {
                if !in_train[i] {
                    by_class[l].push(i);
                }
            }
            let mut rng = SeededRng::new(seed ^ 0x005E_ED0F_7A11);
            let mut val = Vec::new();
            for pool in by_class.iter_mut() {
                let take = config.validation.per_class.min(pool.len());
                val.extend_from_slice(rng.choose(pool, take));
            }
            val.sort_unstable();
            (train, val)
        }
        None => {
            let (train, val) = stratified_split(labels, config.validation.fraction, seed)
                .context("splitting off the validation set")?;
            (train, val)
        }
    };
    let clean: Vec<usize> = train.iter().map(|&i| labels[i]).collect();
    let (train_labels, flipped) = match &config.noise {
        None => (clean, 0),
        Some(noise) => {
            let noisy = match noise.kind {
                NoiseKind::Symmetric => symmetric_noise(&clean, classes, noise.rate, seed)?,
                NoiseKind::Asymmetric => {
                    let flips: Vec<(usize, usize)> = match &noise.flips {
                        Some(pairs) => pairs.iter().map(|p| (p[0], p[1])).collect(),
                        None => FASHION_MNIST_ASYMMETRIC_FLIPS.to_vec(),
                    };
                    asymmetric_noise(&clean, classes, &flips, noise.rate, seed)?
                }
            };
            (noisy.labels, noisy.flipped)
        }
    };
    let val_labels = val.iter().map(|&i| labels[i]).collect();
    Ok(SeedSplit {
        train,
        train_labels,
        val,
        val_labels,
        flipped,
    })
}
