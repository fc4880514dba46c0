//! The memory attention module's vote fusion: the module's class
//! distribution mixed with a similarity-weighted vote of its retrieved
//! neighbours' labels,
//! `p = (1 - w) p_module + w p_vote`, `p_vote` the vote of the first `k`
//! neighbours weighted by `exp((s - 1) / T)` ([`crate::knn::vote_with_labels`]).
//!
//! On data where matching a query to its nearest labelled instances is what
//! works (few images per class, a classifier that cannot learn every class
//! from them), a classifier trained on the module's output falls below a
//! plain kNN vote although its neighbours are exactly those instances. The
//! fusion lets the module express that vote: `w = 1` is the vote itself,
//! `w = 0` the module alone, and the validation split chooses between them
//! (`vote = "auto"`: [`choose_on_validation`]). The vote reads the memory's
//! labels as they are at prediction time, so a relabelled or added entry
//! moves the vote without retraining.

use ramem_index::Neighbours;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use crate::classifier::Prediction;
use crate::knn::{vote_with_labels, KnnVote, K_GRID, TEMPERATURE_GRID};

/// Candidate weights of the vote, in order of preference on ties (the
/// module alone first).
pub const WEIGHT_GRID: [f64; 11] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

/// A fixed vote fusion: the weight of the vote in the mixture, and the vote.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoteFusion {
    /// In [0, 1]: 0 is the module alone, 1 the vote alone.
    pub weight: f64,
    /// The first `k` neighbours vote (at most the module's k).
    pub k: usize,
    /// Vote weights `exp((s - 1) / temperature)`.
    pub temperature: f64,
}

impl VoteFusion {
    pub fn vote(&self) -> KnnVote {
        KnnVote {
            k: self.k,
            temperature: self.temperature,
        }
    }

    /// Checks the numbers, naming the one that is wrong.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(0.0..=1.0).contains(&self.weight) {
            return Err(format!("vote weight {} is not in [0, 1]", self.weight));
        }
        if self.k == 0 {
            return Err("vote k must be at least 1".into());
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(format!(
                "vote temperature {} must be a finite number > 0",
                self.temperature
            ));
        }
        Ok(())
    }
}

/// The `vote` option of the module: off, chosen on validation, or fixed.
/// In a config file: absent or `"off"`, `"auto"`, or
/// `{ weight = 0.5, k = 10, temperature = 0.1 }`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum VoteSetting {
    #[default]
    Off,
    /// Weight, k and temperature chosen on the validation split after
    /// training (the module trains alone).
    Auto,
    Fixed(VoteFusion),
}

impl VoteSetting {
    pub fn is_off(&self) -> bool {
        *self == VoteSetting::Off
    }

    /// The fusion to predict with: none when off, the fixed one, or for
    /// `auto` the one [`choose_on_validation`] picks for the module's
    /// validation predictions `val` (their neighbours `found`, labelled by
    /// `label_of`; true labels `val_labels`).
    pub fn resolve(
        &self,
        val: &Prediction,
        found: &Neighbours,
        label_of: &dyn Fn(i64) -> Option<usize>,
        val_labels: &[usize],
    ) -> Option<VoteFusion> {
        match self {
            VoteSetting::Off => None,
            VoteSetting::Fixed(fusion) => Some(*fusion),
            VoteSetting::Auto => {
                let (fusion, top1) = choose_on_validation(val, found, label_of, val_labels);
                tracing::info!(
                    "vote fusion chosen on validation: weight {}, k {}, temperature {} \
                     (validation top-1 {top1:.2})",
                    fusion.weight,
                    fusion.k,
                    fusion.temperature
                );
                Some(fusion)
            }
        }
    }

    /// The fixed fusion, if one is set and mixes anything in.
    pub fn fusion(&self) -> Option<VoteFusion> {
        match self {
            VoteSetting::Fixed(f) if f.weight > 0.0 => Some(*f),
            _ => None,
        }
    }
}

impl Serialize for VoteSetting {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            VoteSetting::Off => s.serialize_str("off"),
            VoteSetting::Auto => s.serialize_str("auto"),
            VoteSetting::Fixed(f) => f.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for VoteSetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Word(String),
            Fixed(VoteFusion),
        }
        match Form::deserialize(d).map_err(|_| {
            de::Error::custom(
                "vote: expected \"off\", \"auto\" or { weight = W, k = K, temperature = T }",
            )
        })? {
            Form::Word(w) if w == "off" => Ok(VoteSetting::Off),
            Form::Word(w) if w == "auto" => Ok(VoteSetting::Auto),
            Form::Word(w) => Err(de::Error::custom(format!(
                "vote = \"{w}\": expected \"off\", \"auto\" or a table"
            ))),
            Form::Fixed(f) => {
                f.validate().map_err(de::Error::custom)?;
                Ok(VoteSetting::Fixed(f))
            }
        }
    }
}

/// `module` (log-probabilities) mixed with the vote of `found` (the same
/// queries' neighbours, best first, their labels from `label_of`) under
/// `fusion`. Classes: the module's; the attention stays the module's.
pub fn fuse(
    module: &Prediction,
    found: &Neighbours,
    label_of: &dyn Fn(i64) -> Option<usize>,
    fusion: VoteFusion,
) -> Prediction {
    fuse_with_shares(module, found, label_of, fusion).0
}

/// [`fuse`], and each neighbour's share of the fused probabilities: the
/// fusion's weight times its share of its query's vote (0 for one that
/// does not vote), `queries x found.k`. A query's shares sum to the weight
/// where any neighbour votes.
pub fn fuse_with_shares(
    module: &Prediction,
    found: &Neighbours,
    label_of: &dyn Fn(i64) -> Option<usize>,
    fusion: VoteFusion,
) -> (Prediction, Vec<f32>) {
    let vote = vote_with_labels(found, label_of, module.classes, fusion.vote());
    let weight = fusion.weight as f32;
    let shares = vote
        .attention
        .unwrap_or_default()
        .into_iter()
        .map(|share| share * weight)
        .collect();
    let fused = Prediction {
        log_probs: mix(&module.log_probs, &vote.log_probs, fusion.weight),
        ..module.clone()
    };
    (fused, shares)
}

/// `ln((1 - w) exp(a) + w exp(b))` element by element.
fn mix(a: &[f32], b: &[f32], weight: f64) -> Vec<f32> {
    if weight <= 0.0 {
        return a.to_vec();
    }
    if weight >= 1.0 {
        return b.to_vec();
    }
    let (wa, wb) = ((1.0 - weight).ln(), weight.ln());
    a.iter()
        .zip(b)
        .map(|(&a, &b)| {
            let (x, y) = (a as f64 + wa, b as f64 + wb);
            let top = x.max(y);
            if top == f64::NEG_INFINITY {
                return f32::NEG_INFINITY;
            }
            (top + ((x - top).exp() + (y - top).exp()).ln()) as f32
        })
        .collect()
}

/// The fusion of the grid (weights [`WEIGHT_GRID`], k of [`K_GRID`] up to
/// `found.k`, temperatures [`TEMPERATURE_GRID`]) with the best top-1 of
/// `module` mixed with the vote of `found` on `labels` (the validation
/// split), and that top-1. Ties go to the smaller weight, so the module
/// alone wins unless the vote adds something.
pub fn choose_on_validation(
    module: &Prediction,
    found: &Neighbours,
    label_of: &dyn Fn(i64) -> Option<usize>,
    labels: &[usize],
) -> (VoteFusion, f64) {
    let k_top = found.k.max(1);
    let mut ks: Vec<usize> = K_GRID.iter().copied().filter(|&k| k < k_top).collect();
    ks.push(k_top);
    let alone = VoteFusion {
        weight: 0.0,
        k: k_top,
        temperature: TEMPERATURE_GRID[0],
    };
    let mut best = (alone, module.top1(labels));
    for &weight in WEIGHT_GRID.iter().skip(1) {
        for &k in &ks {
            for &temperature in &TEMPERATURE_GRID {
                let fusion = VoteFusion {
                    weight,
                    k,
                    temperature,
                };
                let top1 = fuse(module, found, label_of, fusion).top1(labels);
                if top1 > best.1 {
                    best = (fusion, top1);
                }
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neighbours(ids: Vec<i64>, scores: Vec<f32>, k: usize) -> Neighbours {
        Neighbours { ids, scores, k }
    }

    #[test]
    fn the_mixture_is_the_module_at_weight_zero_and_the_vote_at_one() {
        let module = Prediction::without_attention(vec![0.7f32.ln(), 0.3f32.ln()], 2);
        // Two neighbours of class 1.
        let found = neighbours(vec![0, 1], vec![0.9, 0.8], 2);
        let label_of = |_: i64| Some(1);
        let at = |weight| {
            let f = VoteFusion {
                weight,
                k: 2,
                temperature: 0.1,
            };
            fuse(&module, &found, &label_of, f).log_probs
        };
        assert_eq!(at(0.0), module.log_probs);
        let vote = at(1.0);
        assert!(vote[1].exp() > 0.999 && vote[0].exp() < 1e-5, "{vote:?}");
        let half = at(0.5);
        assert!((half[0].exp() - (0.35 + 0.5 * vote[0].exp())).abs() < 1e-5);
        assert!((half[1].exp() - (0.15 + 0.5 * vote[1].exp())).abs() < 1e-5);

        // Each neighbour's share: the weight times its share of the vote,
        // the nearer one more; one without a label none.
        let f = VoteFusion {
            weight: 0.5,
            k: 2,
            temperature: 0.1,
        };
        let shares = |label_of: &dyn Fn(i64) -> Option<usize>| {
            fuse_with_shares(&module, &found, label_of, f).1
        };
        let s = shares(&label_of);
        assert!((s[0] + s[1] - 0.5).abs() < 1e-6 && s[0] > s[1], "{s:?}");
        let first_only = |id: i64| (id == 0).then_some(1);
        assert_eq!(shares(&first_only), [0.5, 0.0]);
    }

    #[test]
    fn validation_chooses_the_vote_where_it_is_right_and_the_module_where_it_is() {
        // Four queries of classes 0, 1, 0, 1; each retrieves two neighbours
        // labelled with its own class, and the module always says class 0.
        let module = Prediction::without_attention([0.9f32.ln(), 0.1f32.ln()].repeat(4), 2);
        let found = neighbours(vec![0, 0, 1, 1, 0, 0, 1, 1], vec![0.9; 8], 2);
        let label_of = |id: i64| Some(id as usize);
        let labels = [0, 1, 0, 1];
        let (fusion, top1) = choose_on_validation(&module, &found, &label_of, &labels);
        assert_eq!(top1, 100.0);
        assert!(fusion.weight >= 0.5, "{fusion:?}");
        // Neighbours that mislead: the module alone (weight 0) is kept.
        let wrong = |id: i64| Some(1 - id as usize);
        let right = Prediction::without_attention(
            [0.9f32, 0.1, 0.1, 0.9]
                .iter()
                .map(|p| p.ln())
                .collect::<Vec<_>>()
                .repeat(2),
            2,
        );
        let (fusion, top1) = choose_on_validation(&right, &found, &wrong, &labels);
        assert_eq!((fusion.weight, top1), (0.0, 100.0));
    }

    #[test]
    fn the_setting_reads_off_auto_and_a_table_and_refuses_the_rest() {
        #[derive(Deserialize)]
        struct T {
            vote: VoteSetting,
        }
        let read = |s: &str| serde_json::from_str::<T>(s).map(|t| t.vote);
        assert_eq!(read(r#"{"vote": "auto"}"#).unwrap(), VoteSetting::Auto);
        assert_eq!(read(r#"{"vote": "off"}"#).unwrap(), VoteSetting::Off);
        let fixed = read(r#"{"vote": {"weight": 0.4, "k": 5, "temperature": 0.1}}"#).unwrap();
        assert_eq!(
            fixed.fusion(),
            Some(VoteFusion {
                weight: 0.4,
                k: 5,
                temperature: 0.1
            })
        );
        for bad in [
            r#"{"vote": "sometimes"}"#,
            r#"{"vote": {"weight": 1.5, "k": 5, "temperature": 0.1}}"#,
            r#"{"vote": {"weight": 0.5, "k": 0, "temperature": 0.1}}"#,
            r#"{"vote": 3}"#,
        ] {
            let err = read(bad).unwrap_err().to_string();
            assert!(err.contains("vote"), "{bad}: {err}");
        }
        let json = serde_json::to_value(fixed).unwrap();
        assert_eq!(serde_json::from_value::<VoteSetting>(json).unwrap(), fixed);
    }
}
