//! ramem's study runner: a grid of methods x memories x value kinds x k x
//! seeds on one data set's frozen embeddings, scored the same way for every
//! method, written as `report.json`, `report.md` and `report.png` (plus line
//! plots for the pollution, size and k axes when they have several points,
//! and `evidence/*.jsonl`: test predictions with their retrieved neighbours
//! and attention weights).
//!
//! - [`config`]: the study file ([`StudyConfig`], [`Method`]); its `[train]`
//!   and `[mam]` tables are the model crate's option structs.
//! - [`run_study`]: reads the data set, encodes it once through the
//!   embedding cache (`ramem-ingest`), builds or opens the memories
//!   ([`memories`]), splits each seed's training data ([`splits`]), runs every
//!   method for each seed (`methods`, one module per method family), scores
//!   them alike (`scoring`: the post-hoc adjustment chosen on validation, the
//!   test metrics) and writes the report after every group of seeds.
//!
//! Neighbours come through the retrieval interface of `ramem-index` (exact
//! search, or each memory's HNSW index with `[retrieval] engine = "hnsw"`,
//! whose runs then record the recall@k of their test neighbour lists against
//! exact search), cached in each memory's `neighbours/`.
//!
//! ```no_run
//! let config = ramem_study::StudyConfig::read("examples/fashion-mnist-lt.toml".as_ref())?;
//! let study = ramem_study::run_study(&config, "runs/fashion-mnist-lt".as_ref())?;
//! println!("{}", study.report.to_markdown());
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod auto;
pub mod config;
mod ensemble;
mod evidence;
pub mod fixtures;
pub mod keep;
mod memories;
mod methods;
mod retrieval;
mod scoring;
mod splits;

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ramem_data::{parse_dataset_spec, LabelledSet};
use ramem_eval::{Report, ReportFiles};
use ramem_ingest::{drop_missing, EmbeddingCache};
use ramem_model::ValueChoice;
use ramem_store::memory::ValueKind;
use ramem_store::npy::Matrix;

pub use config::{KChoice, Method, StudyConfig};
pub use keep::{train_bundle, train_options, TrainRequest};
use memories::{MemorySources, StudyMemory};
use methods::{StudyContext, TestNeighbourCache};

/// A finished study: its report and the files it was written to.
pub struct StudyOutcome {
    pub report: Report,
    pub files: ReportFiles,
}

/// A data set's images with their cached embeddings.
pub(crate) struct Encoded {
    set: LabelledSet,
    keys: Matrix<f32>,
    text: Option<Matrix<f32>>,
}

pub(crate) fn encode(
    cache: &mut EmbeddingCache,
    what: &str,
    mut set: LabelledSet,
    text: bool,
) -> Result<Encoded> {
    let mut keys = cache.images(what, &set.examples)?;
    let dropped = drop_missing(&mut set.examples, &mut keys);
    if dropped > 0 {
        tracing::warn!("{what}: {dropped} images could not be decoded and are left out");
    }
    if set.examples.is_empty() {
        bail!("{what}: no image could be embedded");
    }
    let text = if text {
        Some(cache.captions(what, &set.examples)?)
    } else {
        None
    };
    Ok(Encoded { set, keys, text })
}

/// Runs the study `config` into the directory `out` (created if missing):
/// reports, the memories it builds, evidence. The report is rewritten after
/// every group of seeds, so a long study shows results as it goes.
pub fn run_study(config: &StudyConfig, out: &Path) -> Result<StudyOutcome> {
    let started = Instant::now();
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let spec = parse_dataset_spec(&config.dataset)?;
    let data = spec.load()?;
    let classes = data.class_names().len();
    tracing::info!(
        "{}: {} classes, {} training and {} test images",
        config.dataset,
        classes,
        data.train.len(),
        data.test.len()
    );
    let class_names = data.class_names().to_vec();
    // Text values come from the memory. The data set's captions are needed
    // only where the study builds the memory from the data set; an existing
    // memory brings its own text values.
    let needs_text = config.memory_dir().is_none()
        && config
            .values
            .iter()
            .any(|v: &ValueChoice| v.kinds().contains(&ValueKind::Text));
    if needs_text && data.train.examples.iter().all(|e| e.caption.is_none()) {
        bail!(
            "values {:?} need text values, and the memory is built from the data set {}, which \
             has no captions: use a memory that holds text values \
             ([memory] source = \"dir:PATH\" or \"milvus://HOST:PORT/COLLECTION\")",
            config.values.iter().map(|v| v.name()).collect::<Vec<_>>(),
            config.dataset
        );
    }
    let mut cache = EmbeddingCache::new(
        &config.encoder,
        &config.text_encoder,
        config.cache_dir.as_deref(),
    )?;
    let slug = config.name.clone();
    let train = encode(&mut cache, &format!("{slug}-train"), data.train, needs_text)?;
    let test = encode(&mut cache, &format!("{slug}-test"), data.test, false)?;
    // Entries from another data set: irrelevant ones (pollution) or an
    // external memory beside the training images (`extra`).
    let polluted = config.memory.pollution.iter().any(|&p| p > 0.0);
    let other = match (&config.memory.irrelevant, &config.memory.extra) {
        (Some(spec), _) if polluted => Some(("irrelevant", spec)),
        (_, Some(spec)) => Some(("extra", spec)),
        _ => None,
    };
    let irrelevant = match other {
        Some((what, spec)) => {
            let set = parse_dataset_spec(spec)
                .and_then(|s| s.load())
                .with_context(|| format!("[memory] {what} = {spec:?}"))?;
            let mut all = set.train;
            all.examples.extend(set.test.examples);
            Some(encode(&mut cache, what, all, needs_text)?)
        }
        None => None,
    };
    tracing::info!(
        "embeddings ready after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Memories shared by every seed, or (growing from each seed's
    // training images) built per seed below.
    let grow = config.memory.grow_from_training;
    let shared = match grow {
        true => Vec::new(),
        false => open_memories(config, out, &train, irrelevant.as_ref(), None)?,
    };
    log_memories(&shared);

    let mut report = Report::new(config.name.clone())
        .with_dataset("spec", config.dataset.clone())
        .with_dataset("classes", classes)
        .with_dataset("train_split", train.set.len())
        .with_dataset("test", test.set.len())
        .with_dataset("encoder", config.encoder.clone());
    let test_labels = test.set.labels();
    let train_labels = train.set.labels();
    let study = StudyContext {
        config,
        classes,
        class_names: &class_names,
        train: &train.keys,
        test: &test.keys,
        test_labels: &test_labels,
        test_ids: test.set.examples.iter().map(|e| e.id.clone()).collect(),
        out: out.to_path_buf(),
    };
    let test_neighbours = TestNeighbourCache::default();
    for seeds in config.seeds.chunks(config.parallel_seeds) {
        let splits = seeds
            .iter()
            .map(|&seed| {
                let split = splits::split_for_seed(config, &train_labels, classes, seed)?;
                tracing::info!(
                    seed,
                    "training on {} images ({} labels flipped), validating on {}",
                    split.train.len(),
                    split.flipped,
                    split.val.len()
                );
                Ok((seed, split))
            })
            .collect::<Result<Vec<_>>>()?;
        let per_seed = match grow {
            true => splits
                .iter()
                .map(|(seed, split)| {
                    let from = memories::GrowFrom {
                        seed: *seed,
                        rows: &split.train,
                    };
                    let built = open_memories(config, out, &train, None, Some(&from))?;
                    log_memories(&built);
                    Ok(built)
                })
                .collect::<Result<Vec<_>>>()?,
            false => Vec::new(),
        };
        let outcomes: Vec<Result<Vec<ramem_eval::Run>>> = std::thread::scope(|scope| {
            let running: Vec<_> = splits
                .iter()
                .enumerate()
                .map(|(i, (seed, split))| {
                    let memories = per_seed.get(i).unwrap_or(&shared);
                    let (study, cache) = (&study, &test_neighbours);
                    scope.spawn(move || methods::run_seed(study, split, *seed, memories, cache))
                })
                .collect();
            running
                .into_iter()
                .map(|handle| {
                    handle
                        .join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a seed's worker panicked")))
                })
                .collect()
        });
        for runs in outcomes {
            for run in runs? {
                report.add_run(run);
            }
        }
        // Write after every group of seeds: a long study shows results as it goes.
        report.update_summary();
        report.write(out)?;
    }
    ramem_eval::write_axis_plots(&report, out)?;
    let files = report.write(out)?;
    tracing::info!(
        "study {} done in {:.1} s: {}",
        config.name,
        started.elapsed().as_secs_f64(),
        files.json.display()
    );
    Ok(StudyOutcome { report, files })
}

fn log_memories(memories: &[StudyMemory]) {
    for m in memories {
        tracing::info!(
            "memory {}: {} entries ({})",
            m.variant.name,
            m.memory.count(),
            m.memory.location()
        );
    }
}

/// The study's memories: an existing directory, or the grid's variants
/// built from the training split (and the irrelevant set), holding `grow`'s
/// rows first where given.
pub(crate) fn open_memories(
    config: &StudyConfig,
    out: &Path,
    train: &Encoded,
    irrelevant: Option<&Encoded>,
    grow: Option<&memories::GrowFrom>,
) -> Result<Vec<StudyMemory>> {
    if let Some(dir) = config.memory_dir() {
        return Ok(vec![memories::open_existing(
            &dir,
            &config.encoder,
            train.keys.cols,
            &train.set.examples,
            &config.retrieval,
            out,
        )?]);
    }
    let ids_and_captions =
        |set: &LabelledSet, prefix: &str| -> (Vec<String>, Vec<Option<String>>) {
            set.examples
                .iter()
                .map(|e| (format!("{prefix}{}", e.id), e.caption.clone()))
                .unzip()
        };
    let (train_ids, train_captions) = ids_and_captions(&train.set, "");
    let (irrelevant_ids, irrelevant_captions) = irrelevant
        .map(|irr| match config.memory.extra.is_some() {
            true => ids_and_captions(&irr.set, "extra:"),
            false => ids_and_captions(&irr.set, "irrelevant:"),
        })
        .unwrap_or_default();
    let sources = MemorySources {
        encoder: &config.encoder,
        text_encoder: &config.text_encoder,
        train_keys: &train.keys,
        train_text: train.text.as_ref(),
        train_ids: &train_ids,
        train_captions: &train_captions,
        irrelevant_keys: irrelevant.map(|i| &i.keys),
        irrelevant_text: irrelevant.and_then(|i| i.text.as_ref()),
        irrelevant_ids: &irrelevant_ids,
        irrelevant_captions: &irrelevant_captions,
    };
    let variants = match config.memory.extra.is_some() {
        true => vec![memories::MemoryVariant::with_extra()],
        false => memories::variants(
            &config.memory.sizes,
            &config.memory.pollution,
            config.memory.pollution_mode,
            train.keys.rows,
            irrelevant.map(|i| i.keys.rows).unwrap_or(0),
        ),
    };
    let dir = memories::memories_dir(out);
    variants
        .iter()
        .map(|v| memories::build(&dir, v, &sources, &config.retrieval, grow))
        .collect()
}
