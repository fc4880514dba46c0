//! Every method of the study for one seed, on the same frozen embeddings
//! and splits, one module per family: [`probe`] (the linear probe, also
//! Tip-Adapter's base classifier), [`knn`] (the kNN vote), [`tip`]
//! (Tip-Adapter and Tip-Adapter-F) and [`retrieving`] (uniform averaging
//! and the memory attention module, over each memory, value kind and k).
//! Each family returns an [`Outcome`] per run, and [`Seed::record`] scores
//! any of them the same way into a report run.

mod knn;
mod probe;
mod retrieving;
mod tip;

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, Result};
use candle_nn::VarMap;
use ramem_eval::Run;
use ramem_model::train::TrainProgress;
use ramem_model::{
    predict, train, Classifier, NeighbourBank, Prediction, SampleSet, TrainConfig, TrainData,
};
use ramem_store::npy::Matrix;
use serde_json::Value;

use crate::auto::{successive_halving, Candidate};
use crate::config::{Method, StudyConfig};
use crate::ensemble::{ensemble, ensemble_param, Trained};
use crate::evidence::EvidenceSet;
use crate::memories::StudyMemory;
use crate::scoring::{Scored, Scoring};
use crate::splits::SeedSplit;

pub(crate) use retrieving::{
    retrieval_model, seed_labels, seed_neighbours, with_bank, TestNeighbourCache,
};

/// What stays the same across seeds.
pub(crate) struct StudyContext<'a> {
    pub config: &'a StudyConfig,
    pub classes: usize,
    pub class_names: &'a [String],
    /// Raw embeddings of the whole training split.
    pub train: &'a Matrix<f32>,
    pub test: &'a Matrix<f32>,
    pub test_labels: &'a [usize],
    pub test_ids: Vec<String>,
    pub out: PathBuf,
}

/// One seed's sample sets, shared by its methods.
pub(crate) struct Seed<'a> {
    pub study: &'a StudyContext<'a>,
    pub seed: u64,
    pub split: &'a SeedSplit,
    pub train: SampleSet,
    pub val: SampleSet,
    pub test: SampleSet,
    /// Training images per class in this seed's training subset.
    pub counts: Vec<usize>,
}

/// Report parameters of a run, by name.
type Params = Vec<(String, Value)>;

/// One method run's predictions and what its report run records.
pub(crate) struct Outcome {
    pub method: Method,
    /// `-` for methods without a retrieval grid.
    pub variant: String,
    pub test: Prediction,
    pub val: Prediction,
    /// The settings it was trained or chosen with.
    pub params: Vec<(String, Value)>,
    pub train_seconds: Option<f64>,
    pub eval_seconds: f64,
}

fn samples(what: &str, emb: &Matrix<f32>, labels: Vec<usize>) -> Result<SampleSet> {
    Ok(SampleSet::new(
        what,
        emb.data.clone(),
        emb.cols,
        labels,
        Vec::new(),
        0,
    )?)
}

impl<'a> Seed<'a> {
    pub(crate) fn new(
        study: &'a StudyContext<'a>,
        split: &'a SeedSplit,
        seed: u64,
    ) -> Result<Seed<'a>> {
        let train = samples(
            "training set",
            &study.train.select(&split.train),
            split.train_labels.clone(),
        )?;
        let val = samples(
            "validation set",
            &study.train.select(&split.val),
            split.val_labels.clone(),
        )?;
        let test = samples("test set", study.test, study.test_labels.to_vec())?;
        let counts = train.class_counts(study.classes);
        Ok(Seed {
            study,
            seed,
            split,
            train,
            val,
            test,
            counts,
        })
    }

    fn config(&self) -> &StudyConfig {
        self.study.config
    }

    /// The training and validation sets without neighbours.
    fn plain_data(&self) -> TrainData<'_> {
        TrainData {
            train: &self.train,
            val: Some(&self.val),
            bank: None,
            classes: self.study.classes,
        }
    }

    fn scoring(&self) -> Scoring<'_> {
        Scoring {
            classes: self.study.classes,
            test_labels: self.study.test_labels,
            val_labels: &self.val.labels,
            train_counts: &self.counts,
            posthoc_adjustment: self.config().posthoc_adjustment,
        }
    }

    /// Trains a method with its `[train]` settings through `train(settings,
    /// label)`, which trains one model: an ensemble of them where `[train]
    /// ensemble` asks for one (each member's settings with its own seed;
    /// `val_set` as [`ensemble`] takes it), once, or, where some of the
    /// settings the method reads are `auto`, through the search that
    /// chooses them on validation ([`crate::auto`]). Returns the result (its
    /// training time the whole search's), the settings it trained with, and
    /// the report parameters of those chosen.
    fn train_searched(
        &self,
        method: Method,
        label: &str,
        val_set: (usize, &[usize]),
        mut train: impl FnMut(&Candidate, &str) -> Result<Trained>,
    ) -> Result<(Trained, Candidate, Params)> {
        let config = self.config();
        let members = config.train.ensemble;
        let mut train = |c: &Candidate, label: &str| {
            ensemble(
                members,
                c.train.seed,
                label,
                val_set,
                |member_seed, label| train(&c.with_seed(member_seed), label),
            )
        };
        let space = config.search_space(method, self.seed, self.train.len());
        if !space.searches() {
            let given = space.given();
            return Ok((train(&given, label)?, given, Vec::new()));
        }
        let started = Instant::now();
        let (chosen, log) =
            successive_halving(&space.candidates(), config.auto.eta, label, |c, label| {
                Ok(train(c, label)?.val_top1)
            })?;
        let mut trained = train(&chosen, label)?;
        trained.train_seconds = started.elapsed().as_secs_f64();
        let params = space.record(&chosen, &log);
        Ok((trained, chosen, params))
    }

    fn evidence(&self) -> EvidenceSet<'_> {
        EvidenceSet {
            count: self.config().evidence,
            test_ids: &self.study.test_ids,
            class_names: self.study.class_names,
            out: &self.study.out,
        }
    }

    /// Scores `outcome` (the post-hoc adjustment chosen on validation, then
    /// the test metrics) into its report run; also returns the test
    /// log-probabilities as scored.
    fn record(&self, outcome: Outcome) -> Result<(Run, Vec<f32>)> {
        let Scored {
            metrics,
            selection,
            log_probs,
        } = self
            .scoring()
            .score(outcome.method.name(), &outcome.test, &outcome.val)?;
        let mut run = Run::new(outcome.method.name(), outcome.variant, self.seed, metrics)
            .with_times(outcome.train_seconds, Some(outcome.eval_seconds));
        let ensemble = outcome
            .method
            .trained()
            .then(|| ensemble_param(self.config().train.ensemble))
            .flatten();
        for (name, value) in outcome.params.into_iter().chain(selection).chain(ensemble) {
            run = run.with_param(name, value);
        }
        Ok((run, log_probs))
    }
}

/// Trains `model` (its variables `vars`) with a progress bar labelled
/// `label`; returns the seconds it took and the best validation top-1.
fn train_model(
    model: &dyn Classifier,
    vars: &VarMap,
    data: &TrainData,
    config: &TrainConfig,
    label: &str,
) -> Result<(f64, Option<f64>)> {
    let started = Instant::now();
    let steps = data.train.len().div_ceil(config.batch_size) * config.epochs;
    let bar = ramem_progress::bar(steps as u64, "steps");
    bar.set_message(label.to_string());
    let report = train(
        model,
        vars,
        data,
        config,
        &ramem_model::default_device(),
        &mut |p: TrainProgress| {
            bar.set_position(p.step as u64);
            ControlFlow::Continue(())
        },
    )
    .with_context(|| format!("training {label}"))?;
    bar.finish();
    tracing::debug!(
        "{label}: best epoch {:?} (val top-1 {:?})",
        report.best_epoch,
        report.best_val_top1
    );
    Ok((started.elapsed().as_secs_f64(), report.best_val_top1))
}

/// Trains `model` (see [`train_model`]) and predicts the sets it is scored
/// on: `test` first (its time is the run's evaluation time), then `others`,
/// all with the neighbours of `bank` where the model reads them.
#[allow(clippy::too_many_arguments)] // one training run's inputs
fn fit(
    model: &dyn Classifier,
    vars: &VarMap,
    data: &TrainData,
    config: &TrainConfig,
    label: &str,
    bank: Option<&NeighbourBank>,
    test: &SampleSet,
    others: &[&SampleSet],
) -> Result<Trained> {
    let (train_seconds, val_top1) = train_model(model, vars, data, config, label)?;
    let device = ramem_model::default_device();
    let started = Instant::now();
    let mut predictions = vec![predict(model, test, bank, &device, PREDICT_BATCH)?];
    let eval_seconds = started.elapsed().as_secs_f64();
    for set in others {
        predictions.push(predict(model, set, bank, &device, PREDICT_BATCH)?);
    }
    Ok(Trained {
        predictions,
        val_top1,
        train_seconds,
        eval_seconds,
    })
}

/// Samples per prediction batch.
const PREDICT_BATCH: usize = 1024;

/// Every method of the study for one seed, as report runs.
pub(crate) fn run_seed(
    study: &StudyContext,
    split: &SeedSplit,
    seed: u64,
    memories: &[StudyMemory],
    test_cache: &TestNeighbourCache,
) -> Result<Vec<Run>> {
    let seed = Seed::new(study, split, seed)?;
    let config = study.config;
    let mut runs = Vec::new();
    // The linear probe: a method of its own and Tip-Adapter's base classifier.
    let needs_probe = [Method::LinearProbe, Method::TipAdapter, Method::TipAdapterF]
        .iter()
        .any(|&m| config.runs(m));
    let probe = match needs_probe {
        true => Some(probe::train_probe(&seed)?),
        false => None,
    };
    if let Some(probe) = &probe {
        if config.runs(Method::LinearProbe) {
            runs.push(seed.record(probe.outcome())?.0);
        }
    }
    if config.runs(Method::KnnVote) {
        runs.push(seed.record(knn::knn_vote(&seed)?)?.0);
    }
    if let Some(probe) = &probe {
        for outcome in tip::tip_adapters(&seed, probe)? {
            runs.push(seed.record(outcome)?.0);
        }
    }
    runs.extend(retrieving::retrieval_methods(&seed, memories, test_cache)?);
    Ok(runs)
}
