//! Accuracy metrics from per-class scores or hard predictions.
//!
//! All accuracies are **percentages** in `0..=100`.

use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};

/// A class with more than this many training images is many-shot.
pub const MANY_SHOT_ABOVE: usize = 100;
/// A class with fewer than this many training images is few-shot.
pub const FEW_SHOT_BELOW: usize = 20;

/// The top-k of the `top5` metric, capped at the number of classes.
pub const TOP_K: usize = 5;

/// The long-tail shot group of a class, decided by its number of training
/// images (the classifier-balancing convention).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShotGroup {
    /// More than 100 training images.
    Many,
    /// 20 to 100 training images, both included.
    Medium,
    /// Fewer than 20 training images.
    Few,
}

impl ShotGroup {
    /// The group of a class with `train_count` training images.
    pub fn of(train_count: usize) -> ShotGroup {
        if train_count > MANY_SHOT_ABOVE {
            ShotGroup::Many
        } else if train_count >= FEW_SHOT_BELOW {
            ShotGroup::Medium
        } else {
            ShotGroup::Few
        }
    }

    fn index(self) -> usize {
        match self {
            ShotGroup::Many => 0,
            ShotGroup::Medium => 1,
            ShotGroup::Few => 2,
        }
    }
}

/// The metrics of one evaluation. Accuracies are percentages (`0..=100`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Top-1 accuracy over all test images.
    pub top1: f64,
    /// Top-k accuracy with k = min(5, number of classes); `None` for hard
    /// predictions, which rank a single class.
    pub top5: Option<f64>,
    /// Top-1 over the test images of many-shot classes (> 100 training
    /// images); `None` when no test image belongs to such a class.
    pub many: Option<f64>,
    /// Top-1 over the test images of medium-shot classes (20..=100 training
    /// images); `None` when no test image belongs to such a class.
    pub medium: Option<f64>,
    /// Top-1 over the test images of few-shot classes (< 20 training
    /// images); `None` when no test image belongs to such a class.
    pub few: Option<f64>,
    /// Top-1 of each class over its test images; `None` for a class without
    /// test images.
    pub per_class: Vec<Option<f64>>,
    /// Number of test images.
    pub n: usize,
}

/// Evaluates scores (logits or probabilities; any monotone score works),
/// row-major `n x num_classes`, against the true `labels` (one per row).
///
/// `train_counts[c]` is the number of training images of class `c`; it
/// decides the many/medium/few-shot groups. The predicted class of a row is
/// its highest score, ties going to the lowest class index; a row is correct
/// at top-k when fewer than k classes rank before its true class (a class
/// ranks before it with a higher score, or an equal score and a lower index).
/// Infinite scores are allowed; NaN is an error.
pub fn evaluate(
    scores: &[f32],
    num_classes: usize,
    labels: &[usize],
    train_counts: &[usize],
) -> Result<Metrics> {
    check_shapes(num_classes, labels, train_counts)?;
    let expected = labels.len().checked_mul(num_classes);
    if expected != Some(scores.len()) {
        return Err(EvalError::LengthMismatch {
            what: "scores",
            expected: expected.unwrap_or(usize::MAX),
            actual: scores.len(),
            detail: format!("{} test images x {num_classes} classes", labels.len()),
        });
    }
    let k = TOP_K.min(num_classes);
    let mut ranks = Vec::with_capacity(labels.len());
    for (row, (s, &label)) in scores.chunks_exact(num_classes).zip(labels).enumerate() {
        if let Some(class) = s.iter().position(|v| v.is_nan()) {
            return Err(EvalError::NanScore { row, class });
        }
        ranks.push(rank_of(s, label));
    }
    let top_k = ranks.iter().filter(|&&r| r < k).count();
    let correct: Vec<bool> = ranks.iter().map(|&r| r == 0).collect();
    let mut m = tally(&correct, num_classes, labels, train_counts);
    m.top5 = Some(percent(top_k, labels.len()));
    Ok(m)
}

/// Like [`evaluate`], with errors naming `method`.
pub fn evaluate_method(
    method: &str,
    scores: &[f32],
    num_classes: usize,
    labels: &[usize],
    train_counts: &[usize],
) -> Result<Metrics> {
    evaluate(scores, num_classes, labels, train_counts).map_err(|e| e.for_method(method))
}

/// Evaluates hard predictions (one class per test image), for methods that
/// output a label rather than scores. `top5` is `None`.
pub fn evaluate_predictions(
    predictions: &[usize],
    num_classes: usize,
    labels: &[usize],
    train_counts: &[usize],
) -> Result<Metrics> {
    check_shapes(num_classes, labels, train_counts)?;
    if predictions.len() != labels.len() {
        return Err(EvalError::LengthMismatch {
            what: "predictions",
            expected: labels.len(),
            actual: predictions.len(),
            detail: "one per test image".into(),
        });
    }
    if let Some((row, &prediction)) = predictions
        .iter()
        .enumerate()
        .find(|(_, &p)| p >= num_classes)
    {
        return Err(EvalError::PredictionOutOfRange {
            row,
            prediction,
            num_classes,
        });
    }
    let correct: Vec<bool> = predictions
        .iter()
        .zip(labels)
        .map(|(p, l)| p == l)
        .collect();
    Ok(tally(&correct, num_classes, labels, train_counts))
}

/// The 0-based rank of `label` in `scores` under (score descending, index
/// ascending). `scores` holds no NaN.
fn rank_of(scores: &[f32], label: usize) -> usize {
    let target = scores[label];
    scores
        .iter()
        .enumerate()
        .filter(|&(j, &v)| v > target || (v == target && j < label))
        .count()
}

fn check_shapes(num_classes: usize, labels: &[usize], train_counts: &[usize]) -> Result<()> {
    if num_classes == 0 {
        return Err(EvalError::NoClasses);
    }
    if labels.is_empty() {
        return Err(EvalError::Empty);
    }
    if train_counts.len() != num_classes {
        return Err(EvalError::LengthMismatch {
            what: "train_counts",
            expected: num_classes,
            actual: train_counts.len(),
            detail: "one training-image count per class".into(),
        });
    }
    if let Some((row, &label)) = labels.iter().enumerate().find(|(_, &l)| l >= num_classes) {
        return Err(EvalError::LabelOutOfRange {
            row,
            label,
            num_classes,
        });
    }
    Ok(())
}

/// Top-1, shot-group and per-class accuracy from per-row correctness.
/// Shapes are checked by the caller.
fn tally(
    correct: &[bool],
    num_classes: usize,
    labels: &[usize],
    train_counts: &[usize],
) -> Metrics {
    let mut class_total = vec![0usize; num_classes];
    let mut class_hits = vec![0usize; num_classes];
    for (&ok, &label) in correct.iter().zip(labels) {
        class_total[label] += 1;
        class_hits[label] += usize::from(ok);
    }
    let mut group_total = [0usize; 3];
    let mut group_hits = [0usize; 3];
    for c in 0..num_classes {
        let g = ShotGroup::of(train_counts[c]).index();
        group_total[g] += class_total[c];
        group_hits[g] += class_hits[c];
    }
    let group = |g: ShotGroup| {
        let i = g.index();
        (group_total[i] > 0).then(|| percent(group_hits[i], group_total[i]))
    };
    Metrics {
        top1: percent(class_hits.iter().sum(), correct.len()),
        top5: None,
        many: group(ShotGroup::Many),
        medium: group(ShotGroup::Medium),
        few: group(ShotGroup::Few),
        per_class: class_total
            .iter()
            .zip(&class_hits)
            .map(|(&t, &h)| (t > 0).then(|| percent(h, t)))
            .collect(),
        n: correct.len(),
    }
}

fn percent(hits: usize, total: usize) -> f64 {
    100.0 * hits as f64 / total as f64
}
