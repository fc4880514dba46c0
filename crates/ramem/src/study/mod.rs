//! `ramem study --config FILE.toml --out DIR`: runs a grid of methods x
//! memories x value kinds x k x seeds on cached embeddings and writes
//! `report.json`, `report.md` and `report.png` (plus line plots for the
//! pollution, size and k axes when they have several points, and
//! `evidence/*.jsonl`: test predictions with their retrieved neighbours and
//! attention weights).

mod config;
mod embeddings;
mod ensemble;
mod memory;
mod methods;
mod splits;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use ramem_data::{parse_dataset_spec, LabelledSet};
use ramem_eval::{Report, Run};

pub use config::StudyConfig;
use embeddings::{Embeddings, Encoders};
use memory::{MemorySources, StudyMemory};
use methods::{Context as MethodContext, MethodResult};

#[derive(Args)]
pub struct StudyArgs {
    /// The study file (TOML; see examples/).
    #[arg(long)]
    pub config: PathBuf,
    /// Output directory for reports, memories and evidence.
    #[arg(long)]
    pub out: PathBuf,
}

/// A data set's images with their cached embeddings.
struct Encoded {
    set: LabelledSet,
    keys: Embeddings,
    text: Option<Embeddings>,
}

fn encode(
    encoders: &mut Encoders,
    what: &str,
    mut set: LabelledSet,
    text: bool,
) -> Result<Encoded> {
    let mut keys = encoders.images(what, &set.examples)?;
    let dropped = embeddings::drop_missing(&mut set.examples, &mut keys);
    if dropped > 0 {
        tracing::warn!("{what}: {dropped} images could not be decoded and are left out");
    }
    if set.examples.is_empty() {
        bail!("{what}: no image could be embedded");
    }
    let text = if text {
        Some(encoders.captions(what, &set.examples)?)
    } else {
        None
    };
    Ok(Encoded { set, keys, text })
}

pub fn run(args: &StudyArgs) -> Result<()> {
    let started = Instant::now();
    let config = StudyConfig::read(&args.config)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
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
    let needs_text = config
        .values
        .iter()
        .any(|v| v.kinds().contains(&ramem_store::memory::ValueKind::Text));
    if needs_text && data.train.examples.iter().all(|e| e.caption.is_none()) {
        bail!(
            "{}: values {:?} need captions, but the data set {} has none",
            args.config.display(),
            config.values.iter().map(|v| v.name()).collect::<Vec<_>>(),
            config.dataset
        );
    }
    let mut encoders = Encoders::new(
        &config.encoder,
        &config.text_encoder,
        config.cache_dir.as_deref(),
    )?;
    let dataset_slug = config.name.clone();
    let train = encode(
        &mut encoders,
        &format!("{dataset_slug}-train"),
        data.train,
        needs_text,
    )?;
    let test = encode(
        &mut encoders,
        &format!("{dataset_slug}-test"),
        data.test,
        false,
    )?;
    let irrelevant = match &config.memory.irrelevant {
        Some(spec) if config.memory.pollution.iter().any(|&p| p > 0.0) => {
            let set = parse_dataset_spec(spec)?.load()?;
            let mut all = set.train;
            all.examples.extend(set.test.examples);
            Some(encode(&mut encoders, "irrelevant", all, needs_text)?)
        }
        _ => None,
    };
    tracing::info!(
        "embeddings ready after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The memories.
    let train_ids: Vec<String> = train.set.examples.iter().map(|e| e.id.clone()).collect();
    let train_captions: Vec<Option<String>> = train
        .set
        .examples
        .iter()
        .map(|e| e.caption.clone())
        .collect();
    let (irr_ids, irr_captions): (Vec<String>, Vec<Option<String>>) = irrelevant
        .as_ref()
        .map(|irr| {
            irr.set
                .examples
                .iter()
                .map(|e| (format!("irrelevant:{}", e.id), e.caption.clone()))
                .unzip()
        })
        .unwrap_or_default();
    let memories: Vec<StudyMemory> = match config.memory_dir() {
        Some(dir) => vec![memory::open_existing(
            &dir,
            &config.encoder,
            train.keys.dim,
            train.keys.rows(),
        )?],
        None => {
            let sources = MemorySources {
                encoder: &config.encoder,
                text_encoder: &config.text_encoder,
                train_keys: &train.keys,
                train_text: train.text.as_ref(),
                train_ids: &train_ids,
                train_captions: &train_captions,
                irrelevant_keys: irrelevant.as_ref().map(|i| &i.keys),
                irrelevant_text: irrelevant.as_ref().and_then(|i| i.text.as_ref()),
                irrelevant_ids: &irr_ids,
                irrelevant_captions: &irr_captions,
            };
            let variants = memory::variants(
                &config.memory.sizes,
                &config.memory.pollution,
                config.memory.pollution_mode,
                train.keys.rows(),
                irrelevant.as_ref().map(|i| i.keys.rows()).unwrap_or(0),
            );
            let dir = memory::memories_dir(&args.out);
            variants
                .iter()
                .map(|v| memory::build(&dir, v, &sources))
                .collect::<Result<_>>()?
        }
    };
    for m in &memories {
        tracing::info!("memory {}: {} entries", m.variant.name, m.memory.count());
    }

    let mut report = Report::new(config.name.clone())
        .with_dataset("spec", config.dataset.clone())
        .with_dataset("classes", classes)
        .with_dataset("train_split", train.set.len())
        .with_dataset("test", test.set.len())
        .with_dataset("encoder", config.encoder.clone());
    let test_labels = test.set.labels();
    let train_labels_all = train.set.labels();
    let ctx = MethodContext {
        config: &config,
        classes,
        class_names: &class_names,
        train: &train.keys,
        test: &test.keys,
        test_labels: &test_labels,
        test_ids: test.set.examples.iter().map(|e| e.id.clone()).collect(),
        out: args.out.clone(),
    };
    let test_neighbours = methods::TestNeighbourCache::default();
    for seeds in config.seeds.chunks(config.parallel_seeds) {
        let splits = seeds
            .iter()
            .map(|&seed| {
                let split = splits::split_for_seed(&config, &train_labels_all, classes, seed)?;
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
        let outcomes: Vec<Result<Vec<MethodResult>>> = std::thread::scope(|scope| {
            let running: Vec<_> = splits
                .iter()
                .map(|(seed, split)| {
                    let (ctx, memories, cache) = (&ctx, &memories, &test_neighbours);
                    scope.spawn(move || methods::run_seed(ctx, split, *seed, memories, cache))
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
        for ((seed, _), results) in splits.iter().zip(outcomes) {
            for r in results? {
                let mut run = Run::new(r.method.clone(), r.variant.clone(), *seed, r.metrics)
                    .with_times(r.train_seconds, Some(r.eval_seconds));
                for (k, v) in r.params {
                    run = run.with_param(k, v);
                }
                report.add_run(run);
            }
        }
        // Write after every group of seeds: a long study shows results as it goes.
        report.update_summary();
        report.write(&args.out)?;
    }
    methods::write_axis_plots(&report, &args.out)?;
    let files = report.write(&args.out)?;
    println!("{}", report.to_markdown());
    tracing::info!(
        "study {} done in {:.1} s: {}",
        config.name,
        started.elapsed().as_secs_f64(),
        files.json.display()
    );
    Ok(())
}
