//! `auto` training settings: where a study file (or `ramem train`'s
//! options) says `auto` for a setting of the `[train]` table, each trained
//! method chooses it on the validation split by successive halving.
//!
//! The search draws up to `[auto] candidates` settings (seeded) from the
//! grids below, trains every candidate at a fraction of its length, keeps
//! the best `1/eta` by validation top-1, trains those longer, and so on
//! until one candidate is left, which then trains at its full length: that
//! run is the method's result. Every method that trains (linear probe, uniform averaging,
//! Tip-Adapter-F, the attention module) searches the same way over the
//! same grids, so the baselines get the same care as the module. With
//! `candidates` settings and `eta` 3, the search costs about three full
//! trainings of the average candidate.

use std::collections::BTreeSet;
use std::fmt;

use anyhow::{bail, Result};
use ramem_data::SeededRng;
use ramem_model::TrainConfig;
use serde::Deserialize;
use serde_json::{json, Value};

/// Learning rates tried for the attention module and Tip-Adapter-F.
pub const LEARNING_RATES: [f64; 3] = [3e-4, 1e-3, 3e-3];
/// Learning rates tried for the linear heads (linear probe, uniform mean).
pub const HEAD_LEARNING_RATES: [f64; 3] = [3e-3, 1e-2, 3e-2];
/// AdamW weight decays tried.
pub const WEIGHT_DECAYS: [f64; 3] = [1e-4, 1e-2, 1e-1];
/// Logit adjustment strengths tried (0: plain cross-entropy).
pub const LOGIT_ADJUSTMENTS: [f64; 3] = [0.0, 0.5, 1.0];
/// Training lengths tried, in optimiser steps (each rounded up to whole
/// epochs); every length is at least [`MIN_STEPS`].
pub const LENGTHS_IN_STEPS: [usize; 3] = [300, 1000, 3000];
/// The floor of an `auto` training length: a small data set of a few
/// batches per epoch still gets this many optimiser steps.
pub const MIN_STEPS: usize = 300;

/// A `[train]` setting that may be `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AutoSetting {
    Epochs,
    LearningRate,
    HeadLearningRate,
    WeightDecay,
    LogitAdjustment,
}

impl AutoSetting {
    pub const ALL: [AutoSetting; 5] = [
        AutoSetting::Epochs,
        AutoSetting::LearningRate,
        AutoSetting::HeadLearningRate,
        AutoSetting::WeightDecay,
        AutoSetting::LogitAdjustment,
    ];

    /// Its field name in `[train]`.
    pub fn field(self) -> &'static str {
        match self {
            AutoSetting::Epochs => "epochs",
            AutoSetting::LearningRate => "learning_rate",
            AutoSetting::HeadLearningRate => "head_learning_rate",
            AutoSetting::WeightDecay => "weight_decay",
            AutoSetting::LogitAdjustment => "logit_adjustment",
        }
    }
}

impl fmt::Display for AutoSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.field())
    }
}

/// The `[auto]` table: the search's budget.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoTable {
    /// Settings drawn from the grids (all of them where the grids hold fewer).
    pub candidates: usize,
    /// Each round keeps the best `1/eta` and trains them `eta` times longer.
    pub eta: usize,
    /// Seeds the draw of the candidates.
    pub seed: u64,
}

impl Default for AutoTable {
    fn default() -> Self {
        AutoTable {
            candidates: 9,
            eta: 3,
            seed: 0,
        }
    }
}

impl AutoTable {
    pub fn check(&self) -> Result<()> {
        if self.candidates == 0 || self.eta < 2 {
            bail!("auto.candidates must be at least 1 and auto.eta at least 2");
        }
        Ok(())
    }
}

/// Which learning rate a method trains at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateKind {
    /// `learning_rate` (the attention module, Tip-Adapter-F).
    Base,
    /// `head_learning_rate` (linear probe, uniform mean).
    Heads,
}

/// What a method searches over: its fixed settings and the `auto` ones.
#[derive(Debug, Clone)]
pub struct SearchSpace<'a> {
    /// The settings as given (an `auto` setting's value here is unused).
    pub base: TrainConfig,
    pub auto: &'a BTreeSet<AutoSetting>,
    pub rate: RateKind,
    pub budget: &'a AutoTable,
    /// Training images: an `auto` length is counted in optimiser steps.
    pub train_images: usize,
}

impl SearchSpace<'_> {
    /// Whether any setting this method trains with is `auto`.
    pub fn searches(&self) -> bool {
        self.auto.iter().any(|s| self.applies(*s))
    }

    /// Whether `setting` is one this method's training reads.
    fn applies(&self, setting: AutoSetting) -> bool {
        match setting {
            AutoSetting::LearningRate => self.rate == RateKind::Base,
            AutoSetting::HeadLearningRate => self.rate == RateKind::Heads,
            _ => true,
        }
    }

    /// The candidate settings: the grids of the `auto` settings crossed,
    /// then a seeded draw of `budget.candidates` of them.
    pub fn candidates(&self) -> Vec<TrainConfig> {
        let steps_per_epoch = self
            .train_images
            .div_ceil(self.base.batch_size.max(1))
            .max(1);
        let mut all = vec![self.base.clone()];
        for setting in self.auto.iter().copied().filter(|s| self.applies(*s)) {
            let grid: Vec<f64> = match setting {
                AutoSetting::Epochs => LENGTHS_IN_STEPS
                    .iter()
                    .map(|&s| s.max(MIN_STEPS).div_ceil(steps_per_epoch) as f64)
                    .collect(),
                AutoSetting::LearningRate => LEARNING_RATES.to_vec(),
                AutoSetting::HeadLearningRate => HEAD_LEARNING_RATES.to_vec(),
                AutoSetting::WeightDecay => WEIGHT_DECAYS.to_vec(),
                AutoSetting::LogitAdjustment => LOGIT_ADJUSTMENTS.to_vec(),
            };
            all = all
                .iter()
                .flat_map(|c| {
                    grid.iter().map(move |&v| {
                        let mut c = c.clone();
                        match setting {
                            AutoSetting::Epochs => c.epochs = v as usize,
                            AutoSetting::LearningRate | AutoSetting::HeadLearningRate => {
                                c.learning_rate = v
                            }
                            AutoSetting::WeightDecay => c.weight_decay = v,
                            AutoSetting::LogitAdjustment => c.logit_adjustment = v,
                        }
                        c
                    })
                })
                .collect();
        }
        if all.len() > self.budget.candidates {
            let mut rng = SeededRng::new(self.budget.seed ^ 0x4155_544F);
            let mut order: Vec<usize> = (0..all.len()).collect();
            let mut kept = rng.choose(&mut order, self.budget.candidates).to_vec();
            kept.sort_unstable();
            all = kept.into_iter().map(|i| all[i].clone()).collect();
        }
        all
    }

    /// The report's record of a chosen setting: the `auto` settings'
    /// values and the search's cost.
    pub fn record(&self, chosen: &TrainConfig, search: &SearchLog) -> Vec<(String, Value)> {
        let mut params = Vec::new();
        for setting in self.auto.iter().copied().filter(|s| self.applies(*s)) {
            let value = match setting {
                AutoSetting::Epochs => json!(chosen.epochs),
                AutoSetting::LearningRate | AutoSetting::HeadLearningRate => {
                    json!(chosen.learning_rate)
                }
                AutoSetting::WeightDecay => json!(chosen.weight_decay),
                AutoSetting::LogitAdjustment => json!(chosen.logit_adjustment),
            };
            params.push((format!("auto_{setting}"), value));
        }
        params.push(("auto_candidates".into(), json!(search.candidates)));
        params.push(("auto_trainings".into(), json!(search.trainings)));
        params
    }
}

/// What a search did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchLog {
    pub candidates: usize,
    /// Trainings run, at every length.
    pub trainings: usize,
}

/// `config` at `fraction` of its length (at least one epoch), its warmup
/// shortened alike.
fn shortened(config: &TrainConfig, fraction: f64) -> TrainConfig {
    let epochs = ((config.epochs as f64 * fraction).round() as usize).max(1);
    TrainConfig {
        epochs,
        warmup_epochs: config.warmup_epochs * epochs as f64 / config.epochs.max(1) as f64,
        ..config.clone()
    }
}

/// Successive halving over `candidates`: round r trains the survivors at
/// `eta^(r - last)` of their length with `train(config, label)` (which
/// returns the validation top-1), keeps the best `ceil(n / eta)` (the
/// earlier candidate on ties), until one is left. Returns it, to be trained
/// at full length by the caller, and the search's record (whose
/// `trainings` count that last training too). One candidate is returned
/// without training anything.
pub fn successive_halving(
    candidates: &[TrainConfig],
    eta: usize,
    label: &str,
    mut train: impl FnMut(&TrainConfig, &str) -> Result<Option<f64>>,
) -> Result<(TrainConfig, SearchLog)> {
    let eta = eta.max(2);
    let n = candidates.len();
    if n == 0 {
        bail!("{label}: no candidate settings to search");
    }
    // Rounds of shortened trainings until one candidate is left.
    let mut rounds: i32 = 0;
    let mut left = n;
    while left > 1 {
        left = left.div_ceil(eta);
        rounds += 1;
    }
    let mut log = SearchLog {
        candidates: n,
        trainings: 1,
    };
    let mut survivors: Vec<usize> = (0..n).collect();
    for round in 0..rounds {
        let fraction = (eta as f64).powi(round - rounds);
        let mut scored = Vec::with_capacity(survivors.len());
        for &i in &survivors {
            let short = shortened(&candidates[i], fraction);
            let what = format!(
                "{label} [auto round {}/{rounds}, candidate {}/{n}]",
                round + 1,
                i + 1
            );
            let top1 = train(&short, &what)?;
            log.trainings += 1;
            scored.push((i, top1.unwrap_or(f64::NEG_INFINITY)));
        }
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let keep = survivors.len().div_ceil(eta);
        tracing::info!(
            "{label}: auto round {}/{rounds}: {} candidates at {:.0}% of their length, best \
             validation top-1 {:.2}, keeping {keep}",
            round + 1,
            survivors.len(),
            100.0 * fraction,
            scored[0].1
        );
        survivors = scored.into_iter().take(keep).map(|(i, _)| i).collect();
    }
    let chosen = candidates[survivors[0]].clone();
    tracing::info!(
        "{label}: auto settings chosen on validation: {} epochs, learning rate {}, weight decay \
         {}, logit adjustment {} (of {n} candidates)",
        chosen.epochs,
        chosen.learning_rate,
        chosen.weight_decay,
        chosen.logit_adjustment,
    );
    Ok((chosen, log))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space<'a>(auto: &'a BTreeSet<AutoSetting>, budget: &'a AutoTable) -> SearchSpace<'a> {
        SearchSpace {
            base: TrainConfig::default(),
            auto,
            rate: RateKind::Base,
            budget,
            train_images: 1000,
        }
    }

    #[test]
    fn candidates_cross_the_grids_and_a_seeded_draw_keeps_the_budget() {
        let budget = AutoTable::default();
        let auto: BTreeSet<_> = [AutoSetting::Epochs, AutoSetting::LearningRate].into();
        let all = space(&auto, &budget).candidates();
        assert_eq!(all.len(), 9);
        // 1000 images in batches of 256: 4 steps per epoch.
        let epochs: BTreeSet<usize> = all.iter().map(|c| c.epochs).collect();
        assert_eq!(epochs, [75, 250, 750].into());
        let auto: BTreeSet<_> = AutoSetting::ALL.into();
        let drawn = space(&auto, &budget).candidates();
        assert_eq!(drawn.len(), 9);
        assert_eq!(drawn, space(&auto, &budget).candidates(), "seeded");
        let other = AutoTable {
            seed: 1,
            ..AutoTable::default()
        };
        assert_ne!(drawn, space(&auto, &other).candidates());
        // The heads' rate is not the module's.
        let heads = SearchSpace {
            rate: RateKind::Heads,
            ..space(&auto, &budget)
        };
        assert!(heads
            .candidates()
            .iter()
            .all(|c| HEAD_LEARNING_RATES.contains(&c.learning_rate)));
        let none = BTreeSet::new();
        assert!(!space(&none, &budget).searches());
        assert_eq!(space(&none, &budget).candidates().len(), 1);
    }

    #[test]
    fn successive_halving_keeps_the_best_candidate_at_growing_lengths() {
        // The validation score rises with the learning rate and with the
        // length trained; candidate 8 (rate 8) is the best.
        let candidates: Vec<TrainConfig> = (1..=9)
            .map(|r| TrainConfig {
                learning_rate: r as f64,
                epochs: 90,
                ..TrainConfig::default()
            })
            .collect();
        let mut runs = Vec::new();
        let (chosen, log) = successive_halving(&candidates, 3, "test", |c, _| {
            runs.push((c.learning_rate, c.epochs));
            let score = if c.learning_rate == 9.0 {
                0.0
            } else {
                c.learning_rate
            };
            Ok(Some(score + c.epochs as f64 / 1000.0))
        })
        .unwrap();
        assert_eq!((chosen.learning_rate, chosen.epochs), (8.0, 90));
        assert_eq!(
            log.trainings,
            9 + 3 + 1,
            "the caller's full training counts"
        );
        assert_eq!(runs.len(), 12);
        assert!(runs[..9].iter().all(|&(_, e)| e == 10), "{runs:?}");
        assert!(runs[9..].iter().all(|&(_, e)| e == 30), "{runs:?}");
        // One candidate: nothing to search.
        let (_, log) =
            successive_halving(&[TrainConfig::default()], 3, "one", |_, _| unreachable!()).unwrap();
        assert_eq!(log.trainings, 1);
    }
}
