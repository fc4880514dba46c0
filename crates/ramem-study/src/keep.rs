//! `ramem train`: one method trained for one seed exactly as a study trains
//! it (the same splits, neighbours, model, schedule and selection), and
//! kept as a model bundle instead of thrown away.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ramem_data::parse_dataset_spec;
use ramem_index::Engine;
use ramem_ingest::EmbeddingCache;
use ramem_model::heads::HeadConfig;
use ramem_model::posthoc::{adjust, choose_tau};
use ramem_model::train::TrainProgress;
use ramem_model::{
    knn, new_vars, predict, train, vote, KnnVoteConfig, LabelSpace, ModelSpec, NeighbourBank,
    SampleSet, TrainConfig, TrainData, ValueChoice, VoteFusion, VoteSetting,
};
use ramem_recognize::bundle::{CHECKPOINT_DIR, MODEL_FILE};
use ramem_recognize::{
    save_bundle, BundleMeta, MemoryRecord, ModelBundle, TrainingRecord, ValueEncoders,
    WeightsRecord,
};
use ramem_store::npy::Matrix;

use crate::auto::{successive_halving, Candidate};
use crate::config::{KChoice, Method, StudyConfig};
use crate::methods::{
    retrieval_model, seed_labels, seed_neighbours, with_bank, Seed, StudyContext,
};
use crate::{encode, splits};

/// What to train and keep.
#[derive(Debug, Clone)]
pub struct TrainRequest {
    /// A data set spec: its training split is trained on (and split into
    /// training and validation images as the study's protocol says).
    pub data: String,
    /// The memory to retrieve from (a memory directory).
    pub memory: Option<PathBuf>,
    /// The bundle directory.
    pub out: PathBuf,
    pub method: Method,
    pub values: ValueChoice,
    /// Neighbours per query (`None`: the study file's `k`, whose default is
    /// `auto`).
    pub k: Option<KChoice>,
    pub seed: u64,
    /// The options: a study file's `[train]`, `[mam]`, `[long_tail]`,
    /// `[noise]` and `[validation]` tables (its other fields are not used),
    /// with `encoder`, `text_encoder` and `cache_dir`.
    pub config: StudyConfig,
    pub engine: Engine,
    pub ef: Option<usize>,
    /// Train on these classes only (by name; empty: every class).
    pub only_classes: Vec<String>,
    /// Leave these classes out of training (a class the model never sees
    /// can still be recognised by a vote over a memory that labels it).
    pub skip_classes: Vec<String>,
}

/// The options of a study file at `path`, or the defaults without one.
pub fn train_options(path: Option<&Path>) -> Result<StudyConfig> {
    match path {
        Some(path) => StudyConfig::read(path),
        None => StudyConfig::parse("name = \"train\"\ndataset = \"-\"\n"),
    }
}

/// Trains `request.method` and writes the bundle to `request.out`. A rerun
/// after an interruption resumes from the last finished epoch (the
/// bundle's `checkpoint/`); a finished bundle is refused as an output.
pub fn train_bundle(request: &TrainRequest) -> Result<ModelBundle> {
    let started = Instant::now();
    let method = request.method;
    if matches!(method, Method::TipAdapter | Method::TipAdapterF) {
        bail!("--method {method}: bundles of the Tip-Adapter baselines are not written yet; use mam, uniform_mean, knn_vote or linear_probe");
    }
    if request.out.join(MODEL_FILE).exists() {
        bail!(
            "{}: already holds a trained model ({MODEL_FILE}); give a new directory",
            request.out.display()
        );
    }
    // The kNN vote of a bundle votes over the memory's labels.
    let uses_memory = method.retrieves() || method == Method::KnnVote;
    let mut config = request.config.clone();
    if let Some(k) = &request.k {
        config.k = k.clone();
    }
    if !config.k.is_auto() && config.k.values().len() > 1 {
        bail!(
            "k lists several values ({:?}) and `ramem train` keeps one model: give --k N, or \
             --k auto to choose on validation",
            config.k.values()
        );
    }
    config.dataset = request.data.clone();
    config.seeds = vec![request.seed];
    config.methods = vec![method];
    config.values = vec![request.values];
    config.retrieval.engine = request.engine;
    config.retrieval.ef = request.ef;
    config.train.ensemble = 1;
    config.memory.source = match &request.memory {
        Some(path) => format!("dir:{}", path.display()),
        None if uses_memory => bail!("--method {method} retrieves: give --memory"),
        None => "train".into(),
    };
    config.memory.sizes.clear();
    config.memory.pollution = vec![0.0];
    config.check().context("the training options")?;

    let data = parse_dataset_spec(&config.dataset)?.load()?;
    let mut cache = EmbeddingCache::new(
        &config.encoder,
        &config.text_encoder,
        config.cache_dir.as_deref(),
    )?;
    let mut train_set = encode(
        &mut cache,
        &format!("{}-train", config.dataset),
        data.train,
        false,
    )?;
    if !(request.only_classes.is_empty() && request.skip_classes.is_empty()) {
        let (set, rows) = train_set
            .set
            .select_classes(&request.only_classes, &request.skip_classes)
            .with_context(|| format!("choosing the classes of {}", config.dataset))?;
        tracing::info!(
            "training on {} of the {} classes ({} images)",
            set.num_classes(),
            train_set.set.num_classes(),
            set.len()
        );
        train_set.keys = train_set.keys.select(&rows);
        train_set.text = train_set.text.map(|t| t.select(&rows));
        train_set.set = set;
    }
    let classes = train_set.set.class_names.clone();
    let labels = train_set.set.labels();
    let split = splits::split_for_seed(&config, &labels, classes.len(), request.seed)?;
    tracing::info!(
        "training {method} on {} images ({} labels flipped), validating on {}",
        split.train.len(),
        split.flipped,
        split.val.len()
    );
    let no_test = Matrix {
        rows: 0,
        cols: train_set.keys.cols,
        data: Vec::new(),
    };
    let study = StudyContext {
        config: &config,
        classes: classes.len(),
        class_names: &classes,
        train: &train_set.keys,
        test: &no_test,
        test_labels: &[],
        test_ids: Vec::new(),
        out: request.out.clone(),
    };
    let seed = Seed::new(&study, &split, request.seed)?;
    // The linear probe reads no neighbours: a memory given to it is not used.
    let memories = match &request.memory {
        Some(_) if uses_memory => {
            crate::open_memories(&config, &request.out, &train_set, None, None)?
        }
        Some(path) => {
            tracing::info!(
                "--method {method} retrieves nothing: the memory {} is not used",
                path.display()
            );
            Vec::new()
        }
        None => Vec::new(),
    };

    if method == Method::KnnVote {
        let mem = memories
            .first()
            .context("--method knn_vote votes over a memory: give --memory")?;
        return keep_vote(request, &config, &seed, mem, &classes, started);
    }

    // The sets, the bank of their neighbours and the model, as the study has them.
    let device = ramem_model::default_device();
    let (spec, train_full, val_full, bank, memory, val_neighbours) = match memories.first() {
        Some(mem) => {
            let found = seed_neighbours(&seed, mem, config.max_k())?;
            let labels = seed_labels(&seed, mem, request.values.uses_labels())?;
            let (train, val, _, bank) =
                with_bank(&seed, mem, &found, None, request.values, labels.as_ref())?;
            let spec = retrieval_model(&config, method, train.dim, bank.value_dim, classes.len());
            (spec, train, val, Some(bank), Some(mem), Some(found.val))
        }
        None => (
            ModelSpec::LinearProbe(HeadConfig {
                input_dim: seed.train.dim,
                value_dim: 0,
                classes: classes.len(),
            }),
            seed.train.clone(),
            seed.val.clone(),
            None,
            None,
            None,
        ),
    };
    // The sets at a candidate's k (`auto`) or the one given.
    let k_of = |c: &Candidate| c.k.unwrap_or(config.max_k());
    let at_k = |k: usize| (train_full.with_k(k), val_full.with_k(k));
    // `auto` settings: chosen on validation as the study chooses them.
    let space = config.search_space(method, request.seed, train_full.len());
    let chosen = match space.searches() {
        false => space.given(),
        true => {
            let label = method.to_string();
            let candidates = space.candidates();
            successive_halving(&candidates, config.auto.eta, &label, |c, label| {
                let (vars, vb) = new_vars(&device);
                let model = c.apply_to(&spec).build(vb)?;
                let (train, val) = at_k(k_of(c));
                let data = train_data(&train, &val, bank.as_ref(), classes.len());
                let report = train_with_progress(model.as_ref(), &vars, &data, &c.train, label)?;
                Ok(report.best_val_top1)
            })?
            .0
        }
    };
    let k = k_of(&chosen);
    let (train, val) = at_k(k);
    let data = train_data(&train, &val, bank.as_ref(), classes.len());
    let val_neighbours = val_neighbours.map(|found| found.truncated(k));
    let mut spec = chosen.apply_to(&spec);
    let mut options = chosen.train;
    let (vars, vb) = new_vars(&device);
    let model = spec.build(vb)?;
    options.checkpoint_dir = Some(request.out.join(CHECKPOINT_DIR));
    options.resume = true;
    let report = train_with_progress(model.as_ref(), &vars, &data, &options, &method.to_string())?;

    // The post-hoc adjustment, chosen on validation as the study does.
    let mut val_pred = predict(model.as_ref(), &val, bank.as_ref(), &device, 1024)?;
    if let (ModelSpec::Mam(mam), Some(mem), Some(found)) = (&mut spec, memory, &val_neighbours) {
        let vote = resolve_vote(mam.vote, mem, &classes, found, &val_pred, &val.labels)?;
        if let Some((fusion, labels)) = vote {
            let label_of = |id: i64| labels.label_of(id);
            val_pred = vote::fuse(&val_pred, found, &label_of, fusion);
            mam.vote = VoteSetting::Fixed(fusion);
        } else {
            mam.vote = VoteSetting::Off;
        }
    }
    let counts = seed.counts.clone();
    let tau = match config.posthoc_adjustment {
        true => choose_tau(&val_pred, &val.labels, &counts),
        false => 0.0,
    };
    let validation = validation_figures(&val_pred, &val, &counts, tau, report.best_val_top1)?;
    let meta = BundleMeta {
        format: String::new(),
        version: 0,
        model: spec,
        classes,
        class_counts: counts,
        image_encoder: config.encoder.clone(),
        values: request.values,
        value_encoders: memory
            .map(|m| ValueEncoders::of(m.memory.as_ref()))
            .unwrap_or_default(),
        k: if memory.is_some() { k } else { 0 },
        memory: memory
            .map(|m| MemoryRecord::of(m.memory.as_ref()))
            .transpose()?,
        posthoc_tau: tau,
        validation,
        training: TrainingRecord {
            data: config.dataset.clone(),
            seed: request.seed,
            options: TrainConfig {
                checkpoint_dir: None,
                resume: false,
                ..options
            },
            train_images: train.len(),
            val_images: val.len(),
            best_epoch: report.best_epoch,
            seconds: started.elapsed().as_secs_f64(),
        },
        weights: WeightsRecord {
            bytes: 0,
            checksum: String::new(),
        },
        created_by: format!("ramem {}", env!("CARGO_PKG_VERSION")),
    };
    let bundle = save_bundle(&request.out, meta, &vars, &report.history)?;
    // The checkpoint's work is in the bundle now.
    let checkpoint = request.out.join(CHECKPOINT_DIR);
    if checkpoint.is_dir() {
        std::fs::remove_dir_all(&checkpoint)
            .with_context(|| format!("removing {}", checkpoint.display()))?;
    }
    Ok(bundle)
}

/// What a model trains on: `train`, validated on `val`.
fn train_data<'a>(
    train: &'a SampleSet,
    val: &'a SampleSet,
    bank: Option<&'a NeighbourBank>,
    classes: usize,
) -> TrainData<'a> {
    TrainData {
        train,
        val: Some(val),
        bank,
        classes,
    }
}

/// The vote fusion a kept module predicts with: `setting` as it is, or
/// chosen on the validation predictions `val_pred` (the neighbours `found`)
/// for `auto`, with the memory's labels it counts; `None` where it is
/// off, or `auto` over a memory without labels.
fn resolve_vote(
    setting: VoteSetting,
    mem: &crate::memories::StudyMemory,
    classes: &[String],
    found: &ramem_index::Neighbours,
    val_pred: &ramem_model::Prediction,
    val_labels: &[usize],
) -> Result<Option<(VoteFusion, LabelSpace)>> {
    if setting.is_off() {
        return Ok(None);
    }
    // A kept model votes with the memory's own labels, as it will when it
    // predicts.
    let Some(labels) = LabelSpace::of_memory(mem.memory.as_ref(), classes)? else {
        if setting == VoteSetting::Auto {
            tracing::info!(
                "[mam] vote = \"auto\": {} labels none of its entries, so the module does not vote",
                mem.memory.location()
            );
            return Ok(None);
        }
        bail!(
            "[mam] vote counts the memory's labels, and {} labels none of its entries",
            mem.memory.location()
        );
    };
    let label_of = |id: i64| labels.label_of(id);
    Ok(setting
        .resolve(val_pred, found, &label_of, val_labels)
        .map(|fusion| (fusion, labels)))
}

/// The kNN vote over `mem`'s labels, its k and temperature chosen on the
/// validation images (whose own entries never vote for them), kept as a
/// bundle without weights.
fn keep_vote(
    request: &TrainRequest,
    config: &StudyConfig,
    seed: &Seed,
    mem: &crate::memories::StudyMemory,
    classes: &[String],
    started: Instant,
) -> Result<ModelBundle> {
    let labels = LabelSpace::of_memory(mem.memory.as_ref(), classes)?.with_context(|| {
        format!(
            "--method knn_vote votes with the memory's labels, and {} labels none of its entries",
            mem.memory.location()
        )
    })?;
    let k_max = knn::K_GRID
        .iter()
        .copied()
        .max()
        .unwrap_or(1)
        .min(mem.memory.count().max(1) as usize);
    let found = seed_neighbours(seed, mem, k_max)?;
    let label_of = |id: i64| labels.label_of(id);
    let val = &seed.val;
    let (vote, val_top1) = knn::select_vote(&found.val, &label_of, &val.labels, labels.names.len());
    let val_pred = knn::vote_with_labels(&found.val, &label_of, labels.names.len(), vote);
    let counts = seed.counts.clone();
    let adjust_counts = ramem_recognize::class_counts_over(&counts, labels.names.len());
    let tau = match config.posthoc_adjustment {
        true => choose_tau(&val_pred, &val.labels, &adjust_counts),
        false => 0.0,
    };
    let validation = validation_figures(&val_pred, val, &adjust_counts, tau, Some(val_top1))?;
    tracing::info!(
        "kNN vote over {} labelled entries: k {}, temperature {} (validation top-1 {val_top1:.2})",
        labels.of_row.iter().filter(|l| l.is_some()).count(),
        vote.k,
        vote.temperature
    );
    let meta = BundleMeta {
        format: String::new(),
        version: 0,
        model: ModelSpec::KnnVote(KnnVoteConfig {
            input_dim: seed.train.dim,
            classes: classes.len(),
            vote,
        }),
        classes: classes.to_vec(),
        class_counts: counts,
        image_encoder: config.encoder.clone(),
        values: ValueChoice::Label,
        value_encoders: ValueEncoders::of(mem.memory.as_ref()),
        k: vote.k,
        memory: Some(MemoryRecord::of(mem.memory.as_ref())?),
        posthoc_tau: tau,
        validation,
        training: TrainingRecord {
            data: config.dataset.clone(),
            seed: request.seed,
            options: config.train.config(request.seed, 0.0),
            train_images: seed.train.len(),
            val_images: val.len(),
            best_epoch: None,
            seconds: started.elapsed().as_secs_f64(),
        },
        weights: WeightsRecord {
            bytes: 0,
            checksum: String::new(),
        },
        created_by: format!("ramem {}", env!("CARGO_PKG_VERSION")),
    };
    save_bundle(&request.out, meta, &candle_nn::VarMap::new(), &[])
}

/// Validation top-1 (the kept epoch's) and, under the chosen tau, overall
/// and per shot group.
fn validation_figures(
    val_pred: &ramem_model::Prediction,
    val: &SampleSet,
    counts: &[usize],
    tau: f64,
    best: Option<f64>,
) -> Result<std::collections::BTreeMap<String, f64>> {
    let mut figures = std::collections::BTreeMap::new();
    if let Some(best) = best {
        figures.insert("top1".into(), best);
    }
    if val.is_empty() {
        return Ok(figures);
    }
    let adjusted = adjust(&val_pred.log_probs, val_pred.classes, counts, tau);
    let metrics = ramem_eval::evaluate_method(
        "validation",
        &adjusted,
        val_pred.classes,
        &val.labels,
        counts,
    )?;
    figures.insert("top1_posthoc".into(), metrics.top1);
    for (name, value) in [
        ("many", metrics.many),
        ("medium", metrics.medium),
        ("few", metrics.few),
    ] {
        if let Some(value) = value {
            figures.insert(name.into(), value);
        }
    }
    Ok(figures)
}

/// Trains with a bar of steps whose message is the last finished epoch's
/// loss and validation top-1 (a log line per epoch without a terminal).
fn train_with_progress(
    model: &dyn ramem_model::Classifier,
    vars: &candle_nn::VarMap,
    data: &TrainData,
    options: &TrainConfig,
    label: &str,
) -> Result<ramem_model::TrainReport> {
    let steps = data.train.len().div_ceil(options.batch_size) * options.epochs;
    let bar = ramem_progress::bar(steps as u64, "steps");
    bar.set_message(format!("training {label}"));
    let report = train(
        model,
        vars,
        data,
        options,
        &ramem_model::default_device(),
        &mut |p: TrainProgress| {
            bar.set_position(p.step as u64);
            if let Some(epoch) = p.epoch_done {
                let val = epoch
                    .val_top1
                    .map(|v| format!(", val top-1 {v:.2}"))
                    .unwrap_or_default();
                bar.set_message(format!(
                    "training {label}: epoch {}/{} loss {:.4}{val}",
                    epoch.epoch + 1,
                    options.epochs,
                    epoch.loss
                ));
                tracing::debug!("epoch {} loss {:.4}{val}", epoch.epoch + 1, epoch.loss);
            }
            ControlFlow::Continue(())
        },
    )
    .with_context(|| format!("training {label}"))?;
    bar.finish();
    if report.resumed_epochs > 0 {
        tracing::info!(
            "resumed after epoch {} from {}",
            report.resumed_epochs,
            options
                .checkpoint_dir
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
    }
    Ok(report)
}
