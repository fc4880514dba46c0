//! `auto` settings: where a study file (or `ramem train`'s options) says
//! `auto` for a setting of the `[train]` or `[mam]` table, each trained
//! method chooses it on the validation split by successive halving.
//!
//! The search draws up to `[auto] candidates` settings (seeded) from the
//! grids below, trains every candidate at a fraction of its length, keeps
//! the best `1/eta` by validation top-1, trains those longer, and so on
//! until one candidate is left, which then trains at its full length: that
//! run is the method's result. Every method that trains (linear probe,
//! uniform averaging, Tip-Adapter-F, the attention module) searches the
//! same way over the same grids, so the baselines get the same care as the
//! module; the module also searches its own `[mam]` settings. With `eta` 3
//! the search costs about three full trainings of the average candidate.

use std::collections::BTreeSet;
use std::fmt;

use anyhow::{bail, Result};
use ramem_data::SeededRng;
use ramem_model::{MamConfig, ModelSpec, TrainConfig};
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
pub const LENGTHS_IN_STEPS: [usize; 3] = [300, 600, 1200];
/// The floor of an `auto` training length: a small data set of a few
/// batches per epoch still gets this many optimiser steps.
pub const MIN_STEPS: usize = 300;
/// Hidden sizes tried for the attention module.
pub const HIDDEN_SIZES: [usize; 2] = [256, 512];
/// The module without and with its query-only fusion branch.
pub const FUSION: [bool; 2] = [false, true];
/// Neighbours per query tried where `k = "auto"` (the retrieving methods:
/// uniform averaging and the attention module).
pub const NEIGHBOURS: [usize; 4] = [8, 16, 32, 64];

/// A `[train]` or `[mam]` setting that may be `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AutoSetting {
    Epochs,
    LearningRate,
    HeadLearningRate,
    WeightDecay,
    LogitAdjustment,
    /// `[mam] hidden`.
    Hidden,
    /// `[mam] fusion`.
    Fusion,
}

impl AutoSetting {
    /// The `[train]` settings that may be `auto`.
    pub const ALL: [AutoSetting; 5] = [
        AutoSetting::Epochs,
        AutoSetting::LearningRate,
        AutoSetting::HeadLearningRate,
        AutoSetting::WeightDecay,
        AutoSetting::LogitAdjustment,
    ];
    /// The `[mam]` settings that may be `auto`.
    pub const MODULE: [AutoSetting; 2] = [AutoSetting::Hidden, AutoSetting::Fusion];

    /// Its field name in `[train]` or `[mam]`.
    pub fn field(self) -> &'static str {
        match self {
            AutoSetting::Epochs => "epochs",
            AutoSetting::LearningRate => "learning_rate",
            AutoSetting::HeadLearningRate => "head_learning_rate",
            AutoSetting::WeightDecay => "weight_decay",
            AutoSetting::LogitAdjustment => "logit_adjustment",
            AutoSetting::Hidden => "hidden",
            AutoSetting::Fusion => "fusion",
        }
    }

    /// Its grid, as numbers (fusion: 0 or 1); lengths in epochs for a data
    /// set of `steps_per_epoch` batches.
    fn grid(self, steps_per_epoch: usize) -> Vec<f64> {
        match self {
            AutoSetting::Epochs => LENGTHS_IN_STEPS
                .iter()
                .map(|&s| s.max(MIN_STEPS).div_ceil(steps_per_epoch.max(1)) as f64)
                .collect(),
            AutoSetting::LearningRate => LEARNING_RATES.to_vec(),
            AutoSetting::HeadLearningRate => HEAD_LEARNING_RATES.to_vec(),
            AutoSetting::WeightDecay => WEIGHT_DECAYS.to_vec(),
            AutoSetting::LogitAdjustment => LOGIT_ADJUSTMENTS.to_vec(),
            AutoSetting::Hidden => HIDDEN_SIZES.iter().map(|&h| h as f64).collect(),
            AutoSetting::Fusion => FUSION.iter().map(|&f| f64::from(u8::from(f))).collect(),
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

/// What a method trains, as far as its settings go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateKind {
    /// At `learning_rate`: Tip-Adapter-F.
    Base,
    /// At `learning_rate`, with the `[mam]` options: the attention module.
    Module,
    /// At `head_learning_rate`: linear probe, uniform mean.
    Heads,
}

/// One candidate of a search: the training settings and, for the attention
/// module, its size and fusion, and for a retrieving method its k (`None`:
/// as configured).
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub train: TrainConfig,
    pub hidden: Option<usize>,
    pub fusion: Option<bool>,
    pub k: Option<usize>,
}

impl Candidate {
    /// The module's options with this candidate's size and fusion.
    pub fn module(&self, base: &MamConfig) -> MamConfig {
        let mut config = base.clone();
        if let Some(hidden) = self.hidden {
            config.hidden = hidden;
        }
        if let Some(fusion) = self.fusion {
            config.fusion = fusion;
        }
        config
    }

    /// The same settings with the training seed `seed`.
    pub fn with_seed(&self, seed: u64) -> Candidate {
        Candidate {
            train: TrainConfig {
                seed,
                ..self.train.clone()
            },
            ..self.clone()
        }
    }

    /// `spec` with this candidate's module options, where it is the module.
    pub fn apply_to(&self, spec: &ModelSpec) -> ModelSpec {
        match spec {
            ModelSpec::Mam(config) => ModelSpec::Mam(self.module(config)),
            other => other.clone(),
        }
    }

    /// This candidate with `value` for `setting`.
    fn with(mut self, setting: AutoSetting, value: f64) -> Candidate {
        let t = &mut self.train;
        match setting {
            AutoSetting::Epochs => t.epochs = value as usize,
            AutoSetting::LearningRate | AutoSetting::HeadLearningRate => t.learning_rate = value,
            AutoSetting::WeightDecay => t.weight_decay = value,
            AutoSetting::LogitAdjustment => t.logit_adjustment = value,
            AutoSetting::Hidden => self.hidden = Some(value as usize),
            AutoSetting::Fusion => self.fusion = Some(value > 0.5),
        }
        self
    }

    /// Its value of `setting`, for reports.
    fn value(&self, setting: AutoSetting) -> Value {
        let t = &self.train;
        match setting {
            AutoSetting::Epochs => json!(t.epochs),
            AutoSetting::LearningRate | AutoSetting::HeadLearningRate => json!(t.learning_rate),
            AutoSetting::WeightDecay => json!(t.weight_decay),
            AutoSetting::LogitAdjustment => json!(t.logit_adjustment),
            AutoSetting::Hidden => json!(self.hidden),
            AutoSetting::Fusion => json!(self.fusion),
        }
    }

    /// `self` at `fraction` of its length (at least one epoch), its warmup
    /// shortened alike.
    fn shortened(&self, fraction: f64) -> Candidate {
        let t = &self.train;
        let epochs = ((t.epochs as f64 * fraction).round() as usize).max(1);
        Candidate {
            train: TrainConfig {
                epochs,
                warmup_epochs: t.warmup_epochs * epochs as f64 / t.epochs.max(1) as f64,
                ..t.clone()
            },
            ..self.clone()
        }
    }
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.train;
        write!(
            f,
            "{} epochs, learning rate {}, weight decay {}, logit adjustment {}",
            t.epochs, t.learning_rate, t.weight_decay, t.logit_adjustment
        )?;
        if let Some(hidden) = self.hidden {
            write!(f, ", hidden {hidden}")?;
        }
        if let Some(fusion) = self.fusion {
            write!(f, ", fusion {fusion}")?;
        }
        if let Some(k) = self.k {
            write!(f, ", k {k}")?;
        }
        Ok(())
    }
}

/// What a method searches over: its fixed settings and the `auto` ones.
#[derive(Debug, Clone)]
pub struct SearchSpace<'a> {
    /// The settings as given (an `auto` setting's value here is unused).
    pub base: TrainConfig,
    /// The `auto` settings of `[train]` and `[mam]` together.
    pub auto: BTreeSet<AutoSetting>,
    pub rate: RateKind,
    pub budget: &'a AutoTable,
    /// Training images: an `auto` length is counted in optimiser steps.
    pub train_images: usize,
    /// The k values to choose from (`k = "auto"`, for a method that
    /// retrieves); `None`: k is not searched.
    pub k: Option<&'a [usize]>,
}

impl SearchSpace<'_> {
    /// Whether any setting this method trains with is `auto`.
    pub fn searches(&self) -> bool {
        self.k.is_some() || self.auto.iter().any(|s| self.applies(*s))
    }

    /// Whether `setting` is one this method's training reads.
    fn applies(&self, setting: AutoSetting) -> bool {
        match setting {
            AutoSetting::LearningRate => self.rate != RateKind::Heads,
            AutoSetting::HeadLearningRate => self.rate == RateKind::Heads,
            AutoSetting::Hidden | AutoSetting::Fusion => self.rate == RateKind::Module,
            _ => true,
        }
    }

    /// The settings as given, as a candidate.
    pub fn given(&self) -> Candidate {
        Candidate {
            train: self.base.clone(),
            hidden: None,
            fusion: None,
            k: None,
        }
    }

    /// The candidate settings: the grids of the `auto` settings crossed,
    /// then a seeded draw of `budget.candidates` of them.
    pub fn candidates(&self) -> Vec<Candidate> {
        let steps_per_epoch = self.train_images.div_ceil(self.base.batch_size.max(1));
        let mut all = vec![self.given()];
        for setting in self.auto.iter().copied().filter(|s| self.applies(*s)) {
            let grid = setting.grid(steps_per_epoch);
            all = all
                .iter()
                .flat_map(|c| grid.iter().map(move |&v| c.clone().with(setting, v)))
                .collect();
        }
        if let Some(ks) = self.k {
            all = all
                .iter()
                .flat_map(|c| {
                    ks.iter().map(move |&k| Candidate {
                        k: Some(k),
                        ..c.clone()
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

    /// The report's record of a chosen candidate: the `auto` settings'
    /// values (`auto_learning_rate`, ...) and the search's cost.
    pub fn record(&self, chosen: &Candidate, search: &SearchLog) -> Vec<(String, Value)> {
        let mut params: Vec<(String, Value)> = self
            .auto
            .iter()
            .copied()
            .filter(|s| self.applies(*s))
            .map(|s| (format!("auto_{s}"), chosen.value(s)))
            .collect();
        if self.k.is_some() {
            params.push(("auto_k".into(), json!(chosen.k)));
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
    /// Trainings run, at every length, the final one included.
    pub trainings: usize,
}

/// Successive halving over `candidates`: round r trains the survivors at
/// `eta^(r - rounds)` of their length with `train(candidate, label)` (which
/// returns the validation top-1), keeps the best `ceil(n / eta)` (the
/// earlier candidate on ties), until one is left. Returns it, to be
/// trained at full length by the caller, and the search's record (whose
/// `trainings` count that last training too). One candidate is returned
/// without training anything.
pub fn successive_halving(
    candidates: &[Candidate],
    eta: usize,
    label: &str,
    mut train: impl FnMut(&Candidate, &str) -> Result<Option<f64>>,
) -> Result<(Candidate, SearchLog)> {
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
            let what = format!(
                "{label} [auto round {}/{rounds}, candidate {}/{n}]",
                round + 1,
                i + 1
            );
            let top1 = train(&candidates[i].shortened(fraction), &what)?;
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
    tracing::info!("{label}: auto settings chosen on validation: {chosen} (of {n} candidates)");
    Ok((chosen, log))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space<'a>(auto: &BTreeSet<AutoSetting>, budget: &'a AutoTable) -> SearchSpace<'a> {
        SearchSpace {
            base: TrainConfig::default(),
            auto: auto.clone(),
            rate: RateKind::Base,
            budget,
            train_images: 1000,
            k: None,
        }
    }

    #[test]
    fn candidates_cross_the_grids_and_a_seeded_draw_keeps_the_budget() {
        let budget = AutoTable::default();
        let auto: BTreeSet<_> = [AutoSetting::Epochs, AutoSetting::LearningRate].into();
        let all = space(&auto, &budget).candidates();
        assert_eq!(all.len(), 9);
        // 1000 images in batches of 256: 4 steps per epoch.
        let epochs: BTreeSet<usize> = all.iter().map(|c| c.train.epochs).collect();
        assert_eq!(epochs, [75, 150, 300].into());
        let every: BTreeSet<_> = AutoSetting::ALL
            .into_iter()
            .chain(AutoSetting::MODULE)
            .collect();
        let drawn = space(&every, &budget).candidates();
        assert_eq!(drawn.len(), 9);
        assert_eq!(drawn, space(&every, &budget).candidates(), "seeded");
        let other = AutoTable {
            seed: 1,
            ..AutoTable::default()
        };
        assert_ne!(drawn, space(&every, &other).candidates());
        // Tip-Adapter-F has no module settings; the heads have their own rate.
        assert!(drawn
            .iter()
            .all(|c| c.hidden.is_none() && c.fusion.is_none()));
        let heads = SearchSpace {
            rate: RateKind::Heads,
            ..space(&every, &budget)
        };
        assert!(heads
            .candidates()
            .iter()
            .all(|c| HEAD_LEARNING_RATES.contains(&c.train.learning_rate)));
        let module = SearchSpace {
            rate: RateKind::Module,
            ..space(&every, &budget)
        };
        for c in module.candidates() {
            assert!(HIDDEN_SIZES.contains(&c.hidden.unwrap()), "{c}");
            let config = c.module(&MamConfig::default());
            assert_eq!(Some(config.fusion), c.fusion);
        }
        // k = "auto" crosses the other grids with the k values.
        let ks = SearchSpace {
            k: Some(&NEIGHBOURS),
            ..space(&auto, &budget)
        };
        assert!(ks.searches());
        let every_k: BTreeSet<usize> = ks.candidates().iter().map(|c| c.k.unwrap()).collect();
        assert!(every_k.len() > 1 && every_k.iter().all(|k| NEIGHBOURS.contains(k)));
        let none = BTreeSet::new();
        let only_k = SearchSpace {
            k: Some(&NEIGHBOURS),
            ..space(&none, &budget)
        };
        assert_eq!(only_k.candidates().len(), NEIGHBOURS.len());
        assert!(!space(&none, &budget).searches());
        assert_eq!(space(&none, &budget).candidates().len(), 1);
    }

    #[test]
    fn successive_halving_keeps_the_best_candidate_at_growing_lengths() {
        // The validation score rises with the learning rate and with the
        // length trained; the candidate of rate 8 is the best.
        let candidates: Vec<Candidate> = (1..=9)
            .map(|r| Candidate {
                train: TrainConfig {
                    learning_rate: r as f64,
                    epochs: 90,
                    ..TrainConfig::default()
                },
                hidden: None,
                fusion: None,
                k: None,
            })
            .collect();
        let mut runs = Vec::new();
        let (chosen, log) = successive_halving(&candidates, 3, "test", |c, _| {
            let t = &c.train;
            runs.push((t.learning_rate, t.epochs));
            let score = match t.learning_rate {
                9.0 => 0.0,
                rate => rate,
            };
            Ok(Some(score + t.epochs as f64 / 1000.0))
        })
        .unwrap();
        assert_eq!((chosen.train.learning_rate, chosen.train.epochs), (8.0, 90));
        assert_eq!(
            log.trainings,
            9 + 3 + 1,
            "the caller's full training counts"
        );
        assert_eq!(runs.len(), 12);
        assert!(runs[..9].iter().all(|&(_, e)| e == 10), "{runs:?}");
        assert!(runs[9..].iter().all(|&(_, e)| e == 30), "{runs:?}");
        // One candidate: nothing to search.
        let none = BTreeSet::new();
        let budget = AutoTable::default();
        let one = space(&none, &budget).given();
        let (_, log) = successive_halving(&[one], 3, "one", |_, _| unreachable!()).unwrap();
        assert_eq!(log.trainings, 1);
    }
}
