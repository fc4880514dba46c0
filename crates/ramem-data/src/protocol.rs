//! Evaluation protocols: long-tailed subsets, synthetic label noise,
//! stratified splits and shot groups.
//!
//! Every function works on plain label vectors (`labels[i]` is example `i`'s
//! class) and returns indices or new labels, so it applies to any
//! [`LabelledSet`](crate::LabelledSet) (see
//! [`LabelledSet::subset`](crate::LabelledSet::subset) and
//! [`LabelledSet::with_labels`](crate::LabelledSet::with_labels)). Random
//! choices come from [`SeededRng`]: a seed gives the same result on every
//! platform.

use crate::error::{DataError, Result};
use crate::rng::SeededRng;

/// Fashion-MNIST's class-pair flips for asymmetric noise (source, target):
/// T-shirt/top -> Shirt, Pullover -> Coat, Sandal -> Sneaker, Shirt ->
/// T-shirt/top, Coat -> Pullover.
pub const FASHION_MNIST_ASYMMETRIC_FLIPS: [(usize, usize); 5] =
    [(0, 6), (2, 4), (5, 7), (6, 0), (4, 2)];

/// The number of examples of each class. A label at or past `num_classes` is
/// an error.
pub fn class_counts(labels: &[usize], num_classes: usize) -> Result<Vec<usize>> {
    let mut counts = vec![0usize; num_classes];
    for (i, &label) in labels.iter().enumerate() {
        match counts.get_mut(label) {
            Some(c) => *c += 1,
            None => {
                return Err(DataError::Invalid(format!(
                    "example {i} has label {label}, out of range for {num_classes} classes"
                )))
            }
        }
    }
    Ok(counts)
}

/// An error naming the first class with no examples in `labels`; `what`
/// says which labels these are (e.g. `long-tailed train`).
pub fn check_no_empty_class(labels: &[usize], num_classes: usize, what: &str) -> Result<()> {
    let counts = class_counts(labels, num_classes)?;
    match counts.iter().position(|&c| c == 0) {
        Some(c) => Err(DataError::EmptyClass {
            what: what.to_string(),
            class: c.to_string(),
        }),
        None => Ok(()),
    }
}

/// Per-class sizes of a long-tailed set made from a balanced one (the
/// CIFAR-LT rule): `n_c = floor(n_max * (1/IF)^(c/(C-1)))` for class
/// `c` in `0..C`, computed in `f64` as the reference implementation does.
/// Class 0 keeps `n_max`; the last class keeps `n_max / IF`.
///
/// `imbalance_factor` must be at least 1, and every class must keep at least
/// one example.
pub fn long_tail_counts(
    num_classes: usize,
    n_max: usize,
    imbalance_factor: f64,
) -> Result<Vec<usize>> {
    if !(imbalance_factor >= 1.0 && imbalance_factor.is_finite()) {
        return Err(DataError::Invalid(format!(
            "imbalance factor {imbalance_factor} must be a finite number >= 1"
        )));
    }
    if num_classes == 0 {
        return Err(DataError::Invalid(
            "a long-tailed set needs at least one class".into(),
        ));
    }
    if num_classes == 1 {
        return Ok(vec![n_max]);
    }
    let ratio = 1.0 / imbalance_factor;
    let counts: Vec<usize> = (0..num_classes)
        .map(|c| {
            let exponent = c as f64 / (num_classes - 1) as f64;
            (n_max as f64 * ratio.powf(exponent)) as usize
        })
        .collect();
    if let Some(c) = counts.iter().position(|&n| n == 0) {
        return Err(DataError::Invalid(format!(
            "n_max {n_max} with imbalance factor {imbalance_factor} leaves class {c} of {num_classes} with no examples"
        )));
    }
    Ok(counts)
}

/// Indices (ascending) of a long-tailed subset: for each class `c`, the
/// first [`long_tail_counts`]`[c]` of its examples after a seeded shuffle.
/// A class with fewer examples than it needs is an error naming it.
pub fn long_tail_subset(
    labels: &[usize],
    num_classes: usize,
    n_max: usize,
    imbalance_factor: f64,
    seed: u64,
) -> Result<Vec<usize>> {
    let counts = long_tail_counts(num_classes, n_max, imbalance_factor)?;
    let mut by_class = indices_by_class(labels, num_classes)?;
    let mut rng = SeededRng::new(seed);
    let mut chosen = Vec::with_capacity(counts.iter().sum());
    for (c, (indices, &need)) in by_class.iter_mut().zip(&counts).enumerate() {
        if indices.len() < need {
            return Err(DataError::Invalid(format!(
                "class {c} has {} examples, but the long-tailed subset (n_max {n_max}, imbalance factor {imbalance_factor}) needs {need}",
                indices.len()
            )));
        }
        chosen.extend_from_slice(rng.choose(indices, need));
    }
    chosen.sort_unstable();
    Ok(chosen)
}

/// Labels with synthetic noise, and how many of them differ from the clean
/// ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoisyLabels {
    pub labels: Vec<usize>,
    /// The number of labels changed (`labels[i] != clean[i]`).
    pub flipped: usize,
}

impl NoisyLabels {
    /// The fraction of labels changed.
    pub fn rate(&self) -> f64 {
        if self.labels.is_empty() {
            0.0
        } else {
            self.flipped as f64 / self.labels.len() as f64
        }
    }
}

fn check_rate(rate: f64) -> Result<()> {
    if (0.0..=1.0).contains(&rate) {
        Ok(())
    } else {
        Err(DataError::Invalid(format!(
            "noise rate {rate} must be between 0 and 1"
        )))
    }
}

/// `round(rate * n)` as a count.
fn fraction_of(n: usize, rate: f64) -> usize {
    ((n as f64 * rate).round() as usize).min(n)
}

/// Symmetric label noise: exactly `round(rate * N)` examples, chosen
/// uniformly at random, get a label drawn uniformly from the `C - 1` classes
/// other than their own, so the realised noise rate is `rate` (up to
/// rounding) and `flipped` is that count.
///
/// (Some codebases draw the new label from all `C` classes, keeping the true
/// label with probability `1/C`, so their realised rate is `rate * (C-1)/C`;
/// to reproduce that, pass `rate * (C-1)/C` here.)
pub fn symmetric_noise(
    labels: &[usize],
    num_classes: usize,
    rate: f64,
    seed: u64,
) -> Result<NoisyLabels> {
    check_rate(rate)?;
    class_counts(labels, num_classes)?;
    let k = fraction_of(labels.len(), rate);
    if k > 0 && num_classes < 2 {
        return Err(DataError::Invalid(format!(
            "symmetric noise needs at least 2 classes to flip labels, found {num_classes}"
        )));
    }
    let mut rng = SeededRng::new(seed);
    let mut order: Vec<usize> = (0..labels.len()).collect();
    let mut noisy = labels.to_vec();
    for &i in rng.choose(&mut order, k) {
        // A uniform class among the other C - 1: skip over the true one.
        let r = rng.below(num_classes - 1);
        noisy[i] = if r >= labels[i] { r + 1 } else { r };
    }
    Ok(NoisyLabels {
        labels: noisy,
        flipped: k,
    })
}

/// Asymmetric (class-pair) label noise: for each `(source, target)` in
/// `flips`, exactly `round(rate * n_source)` examples of class `source`,
/// chosen uniformly at random, get label `target`. Flips apply to the clean
/// labels, so `(0, 6)` and `(6, 0)` together swap two disjoint groups. Each
/// source may appear once, and never equal its target.
pub fn asymmetric_noise(
    labels: &[usize],
    num_classes: usize,
    flips: &[(usize, usize)],
    rate: f64,
    seed: u64,
) -> Result<NoisyLabels> {
    check_rate(rate)?;
    for (k, &(source, target)) in flips.iter().enumerate() {
        if source >= num_classes || target >= num_classes {
            return Err(DataError::Invalid(format!(
                "flip {source} -> {target} names a class out of range for {num_classes} classes"
            )));
        }
        if source == target {
            return Err(DataError::Invalid(format!(
                "flip {source} -> {target} does not change the label"
            )));
        }
        if flips[..k].iter().any(|&(s, _)| s == source) {
            return Err(DataError::Invalid(format!(
                "class {source} has more than one flip target"
            )));
        }
    }
    let mut by_class = indices_by_class(labels, num_classes)?;
    let mut rng = SeededRng::new(seed);
    let mut noisy = labels.to_vec();
    let mut flipped = 0;
    for &(source, target) in flips {
        let indices = &mut by_class[source];
        let k = fraction_of(indices.len(), rate);
        for &i in rng.choose(indices, k) {
            noisy[i] = target;
        }
        flipped += k;
    }
    Ok(NoisyLabels {
        labels: noisy,
        flipped,
    })
}

/// A stratified train/test split: indices (ascending) of the training and
/// the test examples. Each class with `n` examples sends `round(n *
/// test_fraction)` of them, chosen by a seeded shuffle, to test, but never
/// all and never none when `n >= 2` (at least one stays on each side); a
/// class with one example keeps it in train.
pub fn stratified_split(
    labels: &[usize],
    test_fraction: f64,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>)> {
    if !(test_fraction > 0.0 && test_fraction < 1.0) {
        return Err(DataError::Invalid(format!(
            "test fraction {test_fraction} must be strictly between 0 and 1"
        )));
    }
    let num_classes = labels.iter().max().map_or(0, |&m| m + 1);
    let mut by_class = indices_by_class(labels, num_classes)?;
    let mut rng = SeededRng::new(seed);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for indices in &mut by_class {
        let n = indices.len();
        let k = if n >= 2 {
            fraction_of(n, test_fraction).clamp(1, n - 1)
        } else {
            0
        };
        rng.shuffle(indices);
        test.extend_from_slice(&indices[..k]);
        train.extend_from_slice(&indices[k..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    Ok((train, test))
}

/// At most `max` examples of each class: the indices (ascending) kept, a
/// seeded draw within each class larger than `max`.
pub fn at_most_per_class(labels: &[usize], max: usize, seed: u64) -> Result<Vec<usize>> {
    let num_classes = labels.iter().max().map_or(0, |&m| m + 1);
    let mut rng = SeededRng::new(seed ^ 0x6D61_785F_7065_7243);
    let mut kept = Vec::new();
    for mut rows in indices_by_class(labels, num_classes)? {
        if rows.len() > max {
            rng.shuffle(&mut rows);
            rows.truncate(max);
        }
        kept.extend(rows);
    }
    kept.sort_unstable();
    Ok(kept)
}

/// The classifier-balancing shot groups, by a class's number of training
/// examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShotGroup {
    /// More than 100 training examples.
    Many,
    /// 20 to 100 training examples.
    Medium,
    /// Fewer than 20 training examples.
    Few,
}

impl ShotGroup {
    /// The group of a class with `train_count` training examples.
    pub fn of(train_count: usize) -> ShotGroup {
        match train_count {
            n if n > 100 => ShotGroup::Many,
            n if n >= 20 => ShotGroup::Medium,
            _ => ShotGroup::Few,
        }
    }

    /// `many`, `medium` or `few`.
    pub fn name(self) -> &'static str {
        match self {
            ShotGroup::Many => "many",
            ShotGroup::Medium => "medium",
            ShotGroup::Few => "few",
        }
    }
}

/// Each class's shot group, from its number of training examples.
pub fn shot_groups(train_counts: &[usize]) -> Vec<ShotGroup> {
    train_counts.iter().map(|&n| ShotGroup::of(n)).collect()
}

/// The indices of each class's examples, in order.
fn indices_by_class(labels: &[usize], num_classes: usize) -> Result<Vec<Vec<usize>>> {
    class_counts(labels, num_classes)?;
    let mut by_class = vec![Vec::new(); num_classes];
    for (i, &label) in labels.iter().enumerate() {
        by_class[label].push(i);
    }
    Ok(by_class)
}
