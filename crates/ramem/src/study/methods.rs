//! Runs every method of the study for one seed on the same frozen
//! embeddings and splits, and scores it on the test split.

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use candle_core::Device;
use ramem_eval::{Metrics, Report};
use ramem_index::{ExactSearch, NeighbourCache, Neighbours, Retriever, SearchParams};
use ramem_model::heads::{LinearProbe, UniformMean};
use ramem_model::tip_adapter::{self, TipAdapterF};
use ramem_model::train::TrainProgress;
use ramem_model::{
    build_bank, knn, new_vars, predict, train, Classifier, MemoryAttention, MemoryLabels,
    NeighbourBank, Prediction, SampleSet, TrainData,
};
use serde_json::{json, Value};

use super::config::StudyConfig;
use super::embeddings::Embeddings;
use super::ensemble::{ensemble, ensemble_param, Trained};
use super::memory::{pollute_retrieved, DrawStreams, StudyMemory};
use super::splits::SeedSplit;
use crate::progress;

/// What stays the same across seeds.
pub struct Context<'a> {
    pub config: &'a StudyConfig,
    pub classes: usize,
    pub class_names: &'a [String],
    /// Raw embeddings of the whole training split.
    pub train: &'a Embeddings,
    pub test: &'a Embeddings,
    pub test_labels: &'a [usize],
    pub test_ids: Vec<String>,
    pub out: PathBuf,
}

/// One scored run.
pub struct MethodResult {
    pub method: String,
    pub variant: String,
    pub params: Vec<(String, Value)>,
    pub metrics: Metrics,
    pub train_seconds: Option<f64>,
    pub eval_seconds: f64,
}

/// Test-set neighbours per memory: the same for every seed, searched once.
#[derive(Default)]
pub struct TestNeighbourCache {
    /// Seeds run side by side share it: the first to need a memory's test
    /// neighbours computes them while the others wait.
    by_memory: std::sync::Mutex<HashMap<String, std::sync::Arc<Neighbours>>>,
}

fn samples(what: &str, emb: &Embeddings, labels: Vec<usize>) -> Result<SampleSet> {
    Ok(SampleSet::new(
        what,
        emb.data.clone(),
        emb.dim,
        labels,
        Vec::new(),
        0,
    )?)
}

fn with_neighbours(base: &SampleSet, neighbours: Vec<i64>, k: usize) -> SampleSet {
    SampleSet {
        neighbours,
        k,
        ..base.clone()
    }
}

fn train_model(
    model: &dyn Classifier,
    vars: &candle_nn::VarMap,
    data: &TrainData,
    cfg: &ramem_model::TrainConfig,
    label: &str,
) -> Result<(f64, Option<f64>)> {
    let started = Instant::now();
    let steps = data.train.len().div_ceil(cfg.batch_size) * cfg.epochs;
    let bar = progress::bar(steps as u64, "steps");
    bar.set_message(label.to_string());
    let report = train(
        model,
        vars,
        data,
        cfg,
        &Device::Cpu,
        &mut |p: TrainProgress| {
            bar.set_position(p.step as u64);
            ControlFlow::Continue(())
        },
    )
    .with_context(|| format!("training {label}"))?;
    bar.finish_and_clear();
    tracing::debug!(
        "{label}: best epoch {:?} (val top-1 {:?})",
        report.best_epoch,
        report.best_val_top1
    );
    Ok((started.elapsed().as_secs_f64(), report.best_val_top1))
}

impl Context<'_> {
    /// Test metrics of a method. With `posthoc_adjustment`, the test
    /// log-probabilities first get `-tau * ln(prior)` with tau chosen on the
    /// validation split (Menon et al.'s post-hoc logit adjustment; every
    /// method alike). Also returns the selection record for the report: the
    /// chosen `posthoc_tau`, the validation top-1 under it
    /// (`val_top1_posthoc`) and per shot group (`val_many`, `val_medium`,
    /// `val_few`), so that configurations can be compared on the few-shot
    /// classes without looking at the test split.
    fn score(
        &self,
        method: &str,
        test: &Prediction,
        val: &Prediction,
        val_labels: &[usize],
        train_counts: &[usize],
    ) -> Result<Scored> {
        let tau = if self.config.posthoc_adjustment {
            choose_tau(val, val_labels, train_counts)
        } else {
            0.0
        };
        let adjusted = adjust(&test.log_probs, self.classes, train_counts, tau);
        let metrics = ramem_eval::evaluate_method(
            method,
            &adjusted,
            self.classes,
            self.test_labels,
            train_counts,
        )?;
        let mut selection = vec![("posthoc_tau".to_string(), json!(tau))];
        let val_adjusted = adjust(&val.log_probs, self.classes, train_counts, tau);
        // An empty validation split has no shot groups to record.
        if let Ok(val_metrics) = ramem_eval::evaluate_method(
            method,
            &val_adjusted,
            self.classes,
            val_labels,
            train_counts,
        ) {
            for (name, value) in [
                ("val_top1_posthoc", Some(val_metrics.top1)),
                ("val_many", val_metrics.many),
                ("val_medium", val_metrics.medium),
                ("val_few", val_metrics.few),
            ] {
                if let Some(value) = value {
                    selection.push((name.to_string(), json!(value)));
                }
            }
        }
        Ok(Scored {
            metrics,
            selection,
            log_probs: adjusted,
        })
    }
}

/// A method's test metrics, the settings validation chose for it, and its
/// test log-probabilities as scored (after the post-hoc adjustment).
struct Scored {
    metrics: Metrics,
    selection: Vec<(String, Value)>,
    log_probs: Vec<f32>,
}

/// Candidate post-hoc adjustment strengths, in order of preference on ties.
/// The negative side reaches -1 and beyond so that a model trained with the
/// balancing loss can take it back in full where the validation (and test)
/// split is long-tailed like the training split.
const TAU_GRID: [f64; 13] = [
    0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, -0.25, -0.5, -0.75, -1.0, -1.5, -2.0,
];

fn adjust(log_probs: &[f32], classes: usize, counts: &[usize], tau: f64) -> Vec<f32> {
    if tau == 0.0 {
        return log_probs.to_vec();
    }
    let total: usize = counts.iter().sum();
    let shift: Vec<f32> = counts
        .iter()
        .map(|&c| (tau * (c.max(1) as f64 / total.max(1) as f64).ln()) as f32)
        .collect();
    log_probs
        .chunks_exact(classes)
        .flat_map(|row| row.iter().zip(&shift).map(|(v, s)| v - s))
        .collect()
}

fn choose_tau(val: &Prediction, labels: &[usize], counts: &[usize]) -> f64 {
    let mut best = (0.0, f64::NEG_INFINITY);
    for tau in TAU_GRID {
        let adjusted = Prediction {
            log_probs: adjust(&val.log_probs, val.classes, counts, tau),
            ..val.clone()
        };
        let top1 = adjusted.top1(labels);
        if top1 > best.1 {
            best = (tau, top1);
        }
    }
    best.0
}

/// Every method for one seed.
pub fn run_seed(
    ctx: &Context,
    split: &SeedSplit,
    seed: u64,
    memories: &[StudyMemory],
    test_cache: &TestNeighbourCache,
) -> Result<Vec<MethodResult>> {
    let cfg = ctx.config;
    let device = Device::Cpu;
    let classes = ctx.classes;
    let train_set = samples(
        "training set",
        &ctx.train.select(&split.train),
        split.train_labels.clone(),
    )?;
    let val_set = samples(
        "validation set",
        &ctx.train.select(&split.val),
        split.val_labels.clone(),
    )?;
    let test_set = samples("test set", ctx.test, ctx.test_labels.to_vec())?;
    let counts = train_set.class_counts(classes);
    let head_lr = cfg
        .train
        .head_learning_rate
        .unwrap_or(cfg.train.learning_rate);
    let mut results = Vec::new();
    let basic = TrainData {
        train: &train_set,
        val: Some(&val_set),
        bank: None,
        classes,
    };

    // Linear probe: a method of its own and Tip-Adapter's base classifier.
    let needs_probe = ["linear_probe", "tip_adapter", "tip_adapter_f"]
        .iter()
        .any(|m| cfg.runs_method(m));
    let mut probe_logits = None;
    let members = cfg.train.ensemble;
    if needs_probe {
        let Trained {
            predictions,
            val_top1: probe_val,
            train_seconds,
            eval_seconds,
        } = ensemble(
            members,
            seed,
            "linear probe",
            (2, &val_set.labels),
            |member_seed, label| {
                let (vars, vb) = new_vars(&device);
                let probe = LinearProbe::new(train_set.dim, classes, vb)?;
                let (train_seconds, val_top1) = train_model(
                    &probe,
                    &vars,
                    &basic,
                    &cfg.train.config(member_seed, head_lr),
                    label,
                )?;
                let started = Instant::now();
                let test_pred = predict(&probe, &test_set, None, &device, 1024)?;
                let eval_seconds = started.elapsed().as_secs_f64();
                let train_pred = predict(&probe, &train_set, None, &device, 1024)?;
                let val_pred = predict(&probe, &val_set, None, &device, 1024)?;
                Ok(Trained {
                    predictions: vec![test_pred, train_pred, val_pred],
                    val_top1,
                    train_seconds,
                    eval_seconds,
                })
            },
        )?;
        let [test_pred, train_pred, val_pred]: [Prediction; 3] = predictions
            .try_into()
            .map_err(|_| anyhow::anyhow!("linear probe: expected three predictions"))?;
        if cfg.runs_method("linear_probe") {
            let Scored {
                metrics, selection, ..
            } = ctx.score(
                "linear_probe",
                &test_pred,
                &val_pred,
                &val_set.labels,
                &counts,
            )?;
            results.push(MethodResult {
                method: "linear_probe".into(),
                variant: "-".into(),
                params: vec![
                    ("learning_rate".into(), json!(head_lr)),
                    ("val_top1".into(), json!(probe_val)),
                ]
                .into_iter()
                .chain(selection)
                .chain(ensemble_param(members))
                .collect(),
                metrics,
                train_seconds: Some(train_seconds),
                eval_seconds,
            });
        }
        probe_logits = Some((train_pred, val_pred, test_pred, train_seconds));
    }

    if cfg.runs_method("knn_vote") {
        let started = Instant::now();
        let (vote, val_top1) = knn::select_on_validation(&train_set, &val_set, classes)?;
        let pred = knn::knn_vote(&train_set, &test_set, classes, vote, false)?;
        let val_pred = knn::knn_vote(&train_set, &val_set, classes, vote, false)?;
        let Scored {
            metrics, selection, ..
        } = ctx.score("knn_vote", &pred, &val_pred, &val_set.labels, &counts)?;
        results.push(MethodResult {
            method: "knn_vote".into(),
            variant: "-".into(),
            params: vec![
                ("k".into(), json!(vote.k)),
                ("temperature".into(), json!(vote.temperature)),
                ("val_top1".into(), json!(val_top1)),
            ]
            .into_iter()
            .chain(selection)
            .collect(),
            metrics,
            train_seconds: None,
            eval_seconds: started.elapsed().as_secs_f64(),
        });
    }

    if let Some((train_pred, val_pred, test_pred, probe_seconds)) = &probe_logits {
        if cfg.runs_method("tip_adapter") || cfg.runs_method("tip_adapter_f") {
            let started = Instant::now();
            let (params, val_top1) = tip_adapter::select_params(
                &train_set,
                &val_set,
                &val_pred.log_probs,
                classes,
                false,
                &device,
            )?;
            let select_seconds = started.elapsed().as_secs_f64();
            if cfg.runs_method("tip_adapter") {
                let started = Instant::now();
                let pred = tip_adapter::tip_adapter(
                    &train_set,
                    &test_set,
                    &test_pred.log_probs,
                    classes,
                    params,
                    &device,
                )?;
                let tip_val = tip_adapter::tip_adapter(
                    &train_set,
                    &val_set,
                    &val_pred.log_probs,
                    classes,
                    params,
                    &device,
                )?;
                let Scored {
                    metrics, selection, ..
                } = ctx.score("tip_adapter", &pred, &tip_val, &val_set.labels, &counts)?;
                results.push(MethodResult {
                    method: "tip_adapter".into(),
                    variant: "-".into(),
                    params: vec![
                        ("alpha".into(), json!(params.alpha)),
                        ("beta".into(), json!(params.beta)),
                        ("val_top1".into(), json!(val_top1)),
                    ]
                    .into_iter()
                    .chain(selection)
                    .chain(ensemble_param(members))
                    .collect(),
                    metrics,
                    train_seconds: Some(probe_seconds + select_seconds),
                    eval_seconds: started.elapsed().as_secs_f64(),
                });
            }
            if cfg.runs_method("tip_adapter_f") {
                // Train the keys with the cache switched on (the best non-zero
                // alpha on validation), then choose alpha and beta again.
                let (train_params, _) = tip_adapter::select_params(
                    &train_set,
                    &val_set,
                    &val_pred.log_probs,
                    classes,
                    true,
                    &device,
                )?;
                // Each member's (alpha, beta), chosen on validation; the
                // report gives the first member's.
                let mut chosen = Vec::new();
                let Trained {
                    predictions,
                    val_top1,
                    train_seconds: seconds,
                    eval_seconds,
                } = ensemble(
                    members,
                    seed,
                    "tip-adapter-f",
                    (1, &val_set.labels),
                    |member_seed, label| {
                        let (vars, vb) = new_vars(&device);
                        let mut model = TipAdapterF::new(
                            &train_set,
                            &train_pred.log_probs,
                            classes,
                            train_params,
                            vb,
                        )?;
                        model.set_eval_base(&val_pred.log_probs, val_set.len(), &device)?;
                        let tip_cfg = cfg.train.config(member_seed, cfg.train.learning_rate);
                        let (seconds, _) = train_model(&model, &vars, &basic, &tip_cfg, label)?;
                        let (params, val_top1) = model.select_params(&val_set, &device)?;
                        model.params = params;
                        chosen.push(params);
                        let tip_f_val = predict(&model, &val_set, None, &device, 1024)?;
                        let started = Instant::now();
                        model.set_eval_base(&test_pred.log_probs, test_set.len(), &device)?;
                        let pred = predict(&model, &test_set, None, &device, 1024)?;
                        Ok(Trained {
                            predictions: vec![pred, tip_f_val],
                            val_top1: Some(val_top1),
                            train_seconds: seconds,
                            eval_seconds: started.elapsed().as_secs_f64(),
                        })
                    },
                )?;
                let [pred, tip_f_val]: [Prediction; 2] = predictions
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("tip-adapter-f: expected two predictions"))?;
                let params = chosen[0];
                let val_top1 = val_top1.unwrap_or_default();
                let Scored {
                    metrics, selection, ..
                } = ctx.score("tip_adapter_f", &pred, &tip_f_val, &val_set.labels, &counts)?;
                results.push(MethodResult {
                    method: "tip_adapter_f".into(),
                    variant: "-".into(),
                    params: vec![
                        ("alpha".into(), json!(params.alpha)),
                        ("beta".into(), json!(params.beta)),
                        ("train_alpha".into(), json!(train_params.alpha)),
                        ("train_beta".into(), json!(train_params.beta)),
                        ("val_top1".into(), json!(val_top1)),
                    ]
                    .into_iter()
                    .chain(selection)
                    .chain(ensemble_param(members))
                    .collect(),
                    metrics,
                    train_seconds: Some(probe_seconds + select_seconds + seconds),
                    eval_seconds,
                });
            }
        }
    }

    let retrieval_methods: Vec<&str> = ["uniform_mean", "mam"]
        .into_iter()
        .filter(|m| cfg.runs_method(m))
        .collect();
    if retrieval_methods.is_empty() {
        return Ok(results);
    }
    let k_max = cfg.max_k();
    for mem in memories {
        // Retrieved pollution draws for each training-split image from a
        // stream of its own, and for the test images from one shared stream.
        let search = |set: &SampleSet, rows: &[usize]| -> Result<Neighbours> {
            let exclude = rows.iter().map(|&i| mem.self_ids[i]).collect();
            let params = SearchParams::new(k_max).excluding(exclude);
            let found = cached_search(mem, &set.queries, set.dim, &params)?;
            pollute_retrieved(
                mem,
                found,
                &set.queries,
                set.dim,
                DrawStreams::PerQuery(rows),
            )
        };
        let train_nb = search(&train_set, &split.train)?;
        let val_nb = search(&val_set, &split.val)?;
        let test_nb = {
            let mut cache = test_cache
                .by_memory
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match cache.get(&mem.variant.name) {
                Some(found) => found.clone(),
                None => {
                    let started = Instant::now();
                    let params = SearchParams::new(k_max);
                    let found = cached_search(mem, &test_set.queries, test_set.dim, &params)?;
                    let found = std::sync::Arc::new(pollute_retrieved(
                        mem,
                        found,
                        &test_set.queries,
                        test_set.dim,
                        DrawStreams::Shared(TEST_STREAM),
                    )?);
                    tracing::info!(
                        "memory {}: test neighbours ready in {:.1} s",
                        mem.variant.name,
                        started.elapsed().as_secs_f64()
                    );
                    cache.insert(mem.variant.name.clone(), found.clone());
                    found
                }
            }
        };
        let test_nb = test_nb.as_ref();
        for &values in &cfg.values {
            let mut lists = [
                train_nb.ids.clone(),
                val_nb.ids.clone(),
                test_nb.ids.clone(),
            ];
            let [a, b, c] = &mut lists;
            let labels = values
                .uses_labels()
                .then(|| visible_labels(mem, split, classes))
                .transpose()?;
            let bank = build_bank(&mem.memory, &mut [a, b, c], values, labels.as_ref())?;
            let [train_rows, val_rows, test_rows] = lists;
            let train_full = with_neighbours(&train_set, train_rows, k_max);
            let val_full = with_neighbours(&val_set, val_rows, k_max);
            let test_full = with_neighbours(&test_set, test_rows, k_max);
            for &k in &cfg.k {
                let (tr, va, te) = (
                    train_full.with_k(k),
                    val_full.with_k(k),
                    test_full.with_k(k),
                );
                let data = TrainData {
                    train: &tr,
                    val: Some(&va),
                    bank: Some(&bank),
                    classes,
                };
                let variant = format!("memory={},values={},k={k}", mem.variant.name, values.name());
                let mut params = vec![
                    ("memory".to_string(), json!(mem.variant.name)),
                    ("memory_size".to_string(), json!(mem.memory.count())),
                    ("pollution".to_string(), json!(mem.variant.pollution)),
                    ("values".to_string(), json!(values.name())),
                    ("k".to_string(), json!(k)),
                ];
                if let Some(first) = mem.irrelevant_from {
                    params.push((
                        "irrelevant_neighbours".to_string(),
                        json!(irrelevant_share(&test_nb.ids, k_max, k, first)),
                    ));
                }
                for &method in &retrieval_methods {
                    let label = format!("{method} {variant} seed {seed}");
                    let Trained {
                        predictions,
                        val_top1,
                        train_seconds,
                        eval_seconds,
                    } = ensemble(
                        members,
                        seed,
                        &label,
                        (1, &va.labels),
                        |member_seed, label| {
                            let (vars, vb) = new_vars(&device);
                            let (model, lr): (Box<dyn Classifier>, f64) = if method == "mam" {
                                let config = cfg.mam.config(tr.dim, bank.value_dim, classes);
                                let model = MemoryAttention::new(config, vb)?;
                                (Box::new(model), cfg.train.learning_rate)
                            } else {
                                let model = UniformMean::new(tr.dim, bank.value_dim, classes, vb)?;
                                (Box::new(model), head_lr)
                            };
                            let train_config = cfg.train.config(member_seed, lr);
                            let (train_seconds, val_top1) =
                                train_model(model.as_ref(), &vars, &data, &train_config, label)?;
                            let started = Instant::now();
                            let pred = predict(model.as_ref(), &te, Some(&bank), &device, 1024)?;
                            let eval_seconds = started.elapsed().as_secs_f64();
                            let val_pred =
                                predict(model.as_ref(), &va, Some(&bank), &device, 1024)?;
                            Ok(Trained {
                                predictions: vec![pred, val_pred],
                                val_top1,
                                train_seconds,
                                eval_seconds,
                            })
                        },
                    )?;
                    let [pred, val_pred]: [Prediction; 2] = predictions
                        .try_into()
                        .map_err(|_| anyhow::anyhow!("{method}: expected two predictions"))?;
                    let Scored {
                        metrics,
                        selection,
                        log_probs,
                    } = ctx.score(method, &pred, &val_pred, &va.labels, &counts)?;
                    let mut params = params.clone();
                    if let (Some(first), Some(attention)) = (mem.irrelevant_from, &pred.attention) {
                        let irrelevant: Vec<bool> =
                            bank.memory_ids.iter().map(|&id| id >= first).collect();
                        params.push((
                            "irrelevant_attention".to_string(),
                            json!(irrelevant_attention(
                                attention,
                                pred.attention_items,
                                &te.neighbours,
                                te.k,
                                &irrelevant
                            )),
                        ));
                    }
                    if method == "mam" && cfg.evidence > 0 {
                        let scored = Prediction { log_probs, ..pred };
                        write_evidence(
                            ctx,
                            mem,
                            &bank,
                            &te,
                            test_nb,
                            &scored,
                            &format!("{method}-{variant}-seed{seed}"),
                        )?;
                    }
                    params.push(("val_top1".to_string(), json!(val_top1)));
                    params.extend(selection);
                    params.extend(ensemble_param(members));
                    results.push(MethodResult {
                        method: method.to_string(),
                        variant: variant.clone(),
                        params,
                        metrics,
                        train_seconds: Some(train_seconds),
                        eval_seconds,
                    });
                }
            }
        }
    }
    Ok(results)
}

/// The draw stream of the test images' retrieved pollution (each
/// training-split image has its own, named by its row).
const TEST_STREAM: u64 = u64::MAX;

/// The share of the first `k` of each `k_max`-long neighbour list that are
/// irrelevant entries (memory rows from `first_irrelevant` on): how much of
/// a polluted memory retrieval actually brings to the model.
fn irrelevant_share(ids: &[i64], k_max: usize, k: usize, first_irrelevant: i64) -> f64 {
    let (mut found, mut irrelevant) = (0usize, 0usize);
    for list in ids.chunks_exact(k_max) {
        for &id in list.iter().take(k).filter(|&&id| id >= 0) {
            found += 1;
            irrelevant += usize::from(id >= first_irrelevant);
        }
    }
    if found == 0 {
        0.0
    } else {
        irrelevant as f64 / found as f64
    }
}

/// The mean, over queries, of the share of the attention on the retrieved
/// neighbours that goes to irrelevant ones: `attention` (n x items, the
/// neighbours last), `neighbours` (n x k bank rows, -1 for an empty slot),
/// `irrelevant` per bank row.
fn irrelevant_attention(
    attention: &[f32],
    items: usize,
    neighbours: &[i64],
    k: usize,
    irrelevant: &[bool],
) -> f64 {
    if items < k || k == 0 {
        return 0.0;
    }
    let mut total = 0.0;
    let mut queries = 0usize;
    for (weights, ids) in attention
        .chunks_exact(items)
        .zip(neighbours.chunks_exact(k))
    {
        let weights = &weights[items - k..];
        let (mut on_all, mut on_irrelevant) = (0.0f64, 0.0f64);
        for (&w, &id) in weights.iter().zip(ids) {
            let Some(&is_irrelevant) = usize::try_from(id).ok().and_then(|i| irrelevant.get(i))
            else {
                continue;
            };
            on_all += w as f64;
            if is_irrelevant {
                on_irrelevant += w as f64;
            }
        }
        if on_all > 0.0 {
            total += on_irrelevant / on_all;
            queries += 1;
        }
    }
    if queries == 0 {
        0.0
    } else {
        total / queries as f64
    }
}

/// The labels a label-valued bank may show for `mem`'s rows in this seed:
/// those of the seed's training images, with the labels the methods train
/// on (noisy where the study adds noise). Validation images, entries from
/// outside the training split and every other row stay unlabelled, so no
/// method sees a label that the baselines do not.
fn visible_labels(mem: &StudyMemory, split: &SeedSplit, classes: usize) -> Result<MemoryLabels> {
    if mem.self_ids.iter().all(|&id| id < 0) {
        bail!(
            "memory {} ({}): label values need to know which training image each entry is; \
             only memories the study builds from its training split carry labels",
            mem.variant.name,
            mem.memory.dir().display()
        );
    }
    Ok(MemoryLabels {
        classes,
        of_row: labels_of_memory_rows(&mem.self_ids, mem.memory.count() as usize, split),
    })
}

/// Per memory row, the training label of the training image it holds
/// (`self_ids`: the memory row of each training-split image, or -1), or
/// `None` where the row is not one of `split`'s training images.
fn labels_of_memory_rows(
    self_ids: &[i64],
    memory_rows: usize,
    split: &SeedSplit,
) -> Vec<Option<usize>> {
    let mut of_row = vec![None; memory_rows];
    for (&row, &label) in split.train.iter().zip(&split.train_labels) {
        if let Some(slot) = usize::try_from(self_ids[row])
            .ok()
            .and_then(|id| of_row.get_mut(id))
        {
            *slot = Some(label);
        }
    }
    of_row
}

/// Exact search of `queries` in the memory, read from the memory's
/// neighbour cache (`neighbours/`) when the same search ran before:
/// neighbour lists are computed once.
fn cached_search(
    mem: &StudyMemory,
    queries: &[f32],
    dim: usize,
    params: &SearchParams,
) -> Result<Neighbours> {
    let cache = NeighbourCache::new(
        ExactSearch::new(mem.memory.clone()),
        mem.memory.dir().join(ramem_index::NEIGHBOURS_DIR),
    );
    Ok(cache.search(queries, dim, params)?)
}

/// The first test predictions with their neighbours and attention weights;
/// `pred` as scored (after the post-hoc adjustment), so that each line's
/// prediction is the one the report counts.
fn write_evidence(
    ctx: &Context,
    mem: &StudyMemory,
    bank: &NeighbourBank,
    test: &SampleSet,
    found: &Neighbours,
    pred: &Prediction,
    name: &str,
) -> Result<()> {
    let Some(attention) = &pred.attention else {
        return Ok(());
    };
    let items = pred.attention_items;
    let offset = items.saturating_sub(test.k); // 1 when the query is attended too
    let predicted = pred.argmax();
    let mut lines = String::new();
    for i in 0..ctx.config.evidence.min(test.len()) {
        let mut neighbours = Vec::new();
        for j in 0..test.k {
            let row = test.neighbours[i * test.k + j];
            if row < 0 {
                continue;
            }
            let memory_id = bank.memory_ids[row as usize];
            let meta = mem.memory.metadata(memory_id)?;
            neighbours.push(json!({
                "memory_id": memory_id,
                "source": meta.source,
                "caption": meta.caption,
                "similarity": found.scores[i * found.k + j],
                "attention": attention[i * items + offset + j],
            }));
        }
        let p = predicted[i];
        lines.push_str(&serde_json::to_string(&json!({
            "test_id": ctx.test_ids[i],
            "label": ctx.class_names[test.labels[i]],
            "predicted": ctx.class_names[p],
            "probability": probability(&pred.log_probs[i * pred.classes..][..pred.classes], p),
            "query_attention": (offset == 1).then(|| attention[i * items]),
            "neighbours": neighbours,
        }))?);
        lines.push('\n');
    }
    let dir = ctx.out.join("evidence");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    ramem_store::atomic::write_atomic(dir.join(format!("{safe}.jsonl")), lines.as_bytes())?;
    Ok(())
}

/// The softmax probability of class `c` under (possibly post-hoc
/// adjusted, hence unnormalised) log-probabilities `row`.
fn probability(row: &[f32], c: usize) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
    (row[c] - max).exp() / sum
}

/// Line plots of mean top-1 against each study axis with several points
/// (`pollution.png`, `memory_size.png`, `k.png`).
pub fn write_axis_plots(report: &Report, out: &std::path::Path) -> Result<()> {
    for axis in ["pollution", "memory_size", "k"] {
        // series (method + the other axes) -> axis value -> top-1 per seed
        let mut series: BTreeMap<String, BTreeMap<String, (f64, Vec<f64>)>> = BTreeMap::new();
        for run in &report.runs {
            let Some(x) = run.params.get(axis).and_then(|v| v.as_f64()) else {
                continue;
            };
            let others: Vec<String> = ["values", "k", "memory_size"]
                .iter()
                .filter(|a| **a != axis && !(axis == "pollution" && **a == "memory_size"))
                .filter_map(|a| {
                    run.params
                        .get(*a)
                        .map(|v| format!("{a}={}", v.to_string().trim_matches('"')))
                })
                .collect();
            let name = format!("{} {}", run.method, others.join(","));
            series
                .entry(name)
                .or_default()
                .entry(format!("{x:020.6}"))
                .or_insert_with(|| (x, Vec::new()))
                .1
                .push(run.metrics.top1);
        }
        let lines: Vec<(String, Vec<(f64, f64)>)> = series
            .into_iter()
            .map(|(name, points)| {
                let pts = points
                    .into_values()
                    .map(|(x, ys)| (x, ys.iter().sum::<f64>() / ys.len() as f64))
                    .collect::<Vec<_>>();
                (name, pts)
            })
            .filter(|(_, pts)| pts.len() >= 2)
            .collect();
        if !lines.is_empty() {
            let path = out.join(format!("{axis}.png"));
            ramem_eval::plot_lines(
                &path,
                &format!("{}: top-1 vs {axis}", report.benchmark),
                axis,
                "top-1 (%)",
                &lines,
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posthoc_adjustment_moves_mass_to_rare_classes() {
        // Class 0 has 90 training images, class 1 has 10: tau = 1 subtracts ln(0.9) and ln(0.1).
        let adjusted = adjust(&[-0.5, -0.9], 2, &[90, 10], 1.0);
        assert!((adjusted[0] - (-0.5 - 0.9f32.ln())).abs() < 1e-6);
        assert!((adjusted[1] - (-0.9 - 0.1f32.ln())).abs() < 1e-6);
        assert_eq!(adjust(&[-0.5, -0.9], 2, &[90, 10], 0.0), vec![-0.5, -0.9]);
    }

    #[test]
    fn tau_is_chosen_on_validation_and_prefers_zero_on_ties() {
        // Both validation images belong to the rare class 1 but lean to class 0:
        // only an adjustment gets them right.
        let val = Prediction::without_attention(vec![-0.6, -0.8, -0.6, -0.8], 2);
        let tau = choose_tau(&val, &[1, 1], &[90, 10]);
        assert!(tau > 0.0, "{tau}");
        // Already right without adjustment: tau stays 0.
        let val = Prediction::without_attention(vec![-0.1, -3.0, -3.0, -0.1], 2);
        assert_eq!(choose_tau(&val, &[0, 1], &[90, 10]), 0.0);
    }

    #[test]
    fn tau_can_take_a_balancing_loss_back_in_full() {
        // A long-tailed validation split: the frequent class 0's image leans
        // to class 1 by 1.9 nats, which only tau <= -0.87 undoes
        // (ln 0.9 - ln 0.1 = 2.2 nats per unit of tau); the class-1 image
        // leads by 2.95 nats, which tau <= -1.35 would overturn.
        let val = Prediction::without_attention(vec![-2.0, -0.1, -3.0, -0.05], 2);
        assert_eq!(choose_tau(&val, &[0, 1], &[90, 10]), -1.0);
    }

    #[test]
    fn irrelevant_attention_is_the_share_of_the_neighbours_weight() {
        // Two queries, the query item first, k = 2; bank row 1 is irrelevant.
        let attention = [0.5, 0.25, 0.25, 0.2, 0.6, 0.2];
        let neighbours = [0, 1, 1, -1];
        let irrelevant = [false, true];
        let share = irrelevant_attention(&attention, 3, &neighbours, 2, &irrelevant);
        // Query 1: 0.25 of 0.5; query 2: all of its one present neighbour's weight.
        assert!((share - (0.5 + 1.0) / 2.0).abs() < 1e-9, "{share}");
    }

    #[test]
    fn irrelevant_share_counts_the_first_k_present_neighbours() {
        // Two queries, k_max = 3; rows from 10 on are irrelevant; -1 is an empty slot.
        let ids = [10, 2, 11, 3, -1, 12];
        assert_eq!(irrelevant_share(&ids, 3, 3, 10), 3.0 / 5.0);
        assert_eq!(irrelevant_share(&ids, 3, 2, 10), 1.0 / 3.0);
        assert_eq!(irrelevant_share(&[-1, -1], 2, 2, 10), 0.0);
    }

    #[test]
    fn label_values_show_the_seed_training_labels_only() {
        // Training split rows 0..5; memory rows hold rows 4, 0, 2, 1 (row 3 is
        // not in the memory) and two irrelevant entries. Row 1 is this seed's
        // validation image; row 2's training label is a noisy one.
        let self_ids = [1, 3, 2, -1, 0];
        let split = SeedSplit {
            train: vec![0, 2, 3, 4],
            train_labels: vec![7, 5, 6, 8],
            val: vec![1],
            val_labels: vec![9],
            flipped: 1,
        };
        let of_row = labels_of_memory_rows(&self_ids, 6, &split);
        assert_eq!(of_row, vec![Some(8), Some(7), Some(5), None, None, None]);
    }
}
