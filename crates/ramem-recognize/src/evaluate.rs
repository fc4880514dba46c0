//! `ramem evaluate`: a bundle's metrics on a data set's test split, the
//! same metrics a study reports.

use std::path::Path;

use anyhow::{bail, Result};
use ramem_data::parse_dataset_spec;
use ramem_eval::{Report, ReportFiles, Run};
use ramem_index::Engine;
use ramem_ingest::{drop_missing, EmbeddingCache};
use serde_json::json;

use crate::bundle::ModelBundle;
use crate::open::exact_by_default;
use crate::recognizer::{widen_classes, Recognizer};

/// What to evaluate a bundle on.
#[derive(Debug, Clone)]
pub struct Evaluation<'a> {
    pub model: &'a Path,
    /// A data set spec; its test split is scored.
    pub data: &'a str,
    /// The memory to retrieve from (default: the bundle's).
    pub memory: Option<&'a Path>,
    /// How neighbours are found (default: exact search of a memory
    /// directory, a collection's own index).
    pub engine: Option<Engine>,
    pub ef: Option<usize>,
    /// Where embeddings are cached (default: `$RAMEM_HOME/embeddings`).
    pub cache_dir: Option<&'a Path>,
}

/// Scores the bundle on the test split of `data` and writes
/// `out/report.json`, `.md` and `.png`.
pub fn evaluate(evaluation: &Evaluation, out: &Path) -> Result<(Report, ReportFiles)> {
    let bundle = ModelBundle::open(evaluation.model)?;
    let memory = match evaluation.memory {
        Some(path) => Some(path.to_path_buf()),
        None => bundle
            .meta
            .memory
            .as_ref()
            .map(|record| record.path.clone()),
    };
    let engine = match &memory {
        Some(location) => exact_by_default(location, evaluation.engine),
        None => evaluation.engine.or(Some(Engine::Exact)),
    };
    let (recognizer, warning) =
        Recognizer::of_bundle(bundle, evaluation.memory, engine, evaluation.ef)?;
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }
    let meta = &recognizer.bundle.meta;
    let data = parse_dataset_spec(evaluation.data)?.load()?;
    // Test labels in the recognizer's class space, by name; a class of the
    // data set that neither the model nor the memory's labels know is
    // scored as one the recognizer can never name.
    let mut classes = recognizer.classes().to_vec();
    let mut unknown = Vec::new();
    let class_of: Vec<usize> = data
        .class_names()
        .iter()
        .map(|name| match classes.iter().position(|c| c == name) {
            Some(c) => c,
            None => {
                unknown.push(name.clone());
                classes.push(name.clone());
                classes.len() - 1
            }
        })
        .collect();
    if classes.len() == unknown.len() {
        bail!(
            "{}: none of its classes is one the model {} was trained on or its memory labels \
             ({} ...)",
            evaluation.data,
            evaluation.model.display(),
            meta.classes
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !unknown.is_empty() {
        tracing::warn!(
            "{}: the model {} cannot name {} of its classes (neither trained on nor labelled in \
             the memory): {}",
            evaluation.data,
            evaluation.model.display(),
            unknown.len(),
            unknown.join(", ")
        );
    }
    let mut test = data.test;
    let mut cache = EmbeddingCache::new(&meta.image_encoder, "minilm-l6", evaluation.cache_dir)?;
    let mut queries = cache.images(&format!("{}-test", meta.training.data), &test.examples)?;
    let dropped = drop_missing(&mut test.examples, &mut queries);
    if dropped > 0 {
        tracing::warn!("{dropped} test images could not be decoded and are left out");
    }
    if test.examples.is_empty() {
        bail!("{}: no test image could be embedded", evaluation.data);
    }
    let decisions = recognizer.predict_embeddings(&queries.data, queries.cols)?;
    let prediction = widen_classes(decisions.prediction, classes.len());
    let labels: Vec<usize> = test.labels().iter().map(|&l| class_of[l]).collect();
    // Shot groups by training images: none for a class added after training.
    let mut counts = meta.class_counts.clone();
    counts.resize(classes.len(), 0);
    let method = meta.model.method();
    let metrics = ramem_eval::evaluate_method(
        method,
        &prediction.log_probs,
        classes.len(),
        &labels,
        &counts,
    )?;
    let variant = match meta.model.retrieves() {
        true => format!("values={},k={}", meta.values.name(), meta.k),
        false => "-".into(),
    };
    let mut run = Run::new(method, variant, meta.training.seed, metrics)
        .with_param("model", evaluation.model.display().to_string())
        .with_param("posthoc_tau", meta.posthoc_tau)
        .with_param("engine", recognizer.engine().map_or("-", Engine::name));
    if let Some(memory) = recognizer.memory() {
        run = run
            .with_param("memory", memory.location())
            .with_param("memory_size", memory.count());
    }
    let mut report = Report::new(format!("evaluate {}", evaluation.model.display()))
        .with_dataset("spec", evaluation.data)
        .with_dataset("classes", classes.len())
        .with_dataset("class_names", json!(classes))
        .with_dataset("test", test.len())
        .with_dataset("encoder", meta.image_encoder.clone())
        .with_dataset("validation", json!(meta.validation));
    report.add_run(run);
    report.update_summary();
    let files = report.write(out)?;
    Ok((report, files))
}
