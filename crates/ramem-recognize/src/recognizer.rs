//! A bundle put to work: its model over a memory, predicting classes for
//! query embeddings with the evidence behind each decision.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::Device;
use ramem_index::{open_retriever, Engine, Neighbours, Retriever, SearchParams};
use ramem_model::posthoc::adjust;
use ramem_model::{build_bank, predict, Classifier, Prediction, SampleSet};
use ramem_store::memory::Memory;

use crate::bundle::ModelBundle;

/// Samples per prediction batch.
const PREDICT_BATCH: usize = 1024;

/// A model bundle with the memory it retrieves from.
pub struct Recognizer {
    pub bundle: ModelBundle,
    model: Box<dyn Classifier>,
    memory: Option<Arc<Memory>>,
    retriever: Option<Box<dyn Retriever>>,
    /// The beam of an approximate engine.
    ef: Option<usize>,
    device: Device,
}

/// What a batch of queries was given.
#[derive(Debug, Clone)]
pub struct Decisions {
    /// Log-probabilities as the model scores them (after the post-hoc
    /// adjustment), `queries x classes`, with the attention weights.
    pub prediction: Prediction,
    /// Each query's retrieved entries (memory ids, similarities), for a
    /// model that retrieves.
    pub neighbours: Option<Neighbours>,
}

impl Recognizer {
    /// Opens the bundle at `dir` with `memory` (default: the memory it was
    /// trained against), searched with `engine`. Returns a warning too when
    /// the memory changed since training.
    pub fn open(
        dir: &Path,
        memory: Option<&Path>,
        engine: Engine,
        ef: Option<usize>,
    ) -> Result<(Recognizer, Option<String>)> {
        let bundle = ModelBundle::open(dir)?;
        let device = Device::Cpu;
        let model = bundle.model(&device)?;
        let mut warning = None;
        let (memory, retriever) = if bundle.meta.model.retrieves() {
            let path = match (memory, &bundle.meta.memory) {
                (Some(path), _) => path.to_path_buf(),
                (None, Some(record)) => record.path.clone(),
                (None, None) => anyhow::bail!(
                    "the model {} retrieves, and records no memory: name one",
                    dir.display()
                ),
            };
            let memory = Arc::new(
                Memory::open(&path)
                    .with_context(|| format!("the memory of the model {}", dir.display()))?,
            );
            warning = bundle.check_memory(&memory)?;
            let retriever = open_retriever(memory.clone(), engine)?;
            (Some(memory), Some(retriever))
        } else {
            (None, None)
        };
        Ok((
            Recognizer {
                bundle,
                model,
                memory,
                retriever,
                ef,
                device,
            },
            warning,
        ))
    }

    /// The memory the model retrieves from, if it retrieves.
    pub fn memory(&self) -> Option<&Memory> {
        self.memory.as_deref()
    }

    /// Class probabilities for `queries` (raw image embeddings of the
    /// bundle's encoder, row-major, `dim` wide), with their neighbours.
    pub fn predict_embeddings(&self, queries: &[f32], dim: usize) -> Result<Decisions> {
        let meta = &self.bundle.meta;
        let n = queries.len().checked_div(dim).unwrap_or(0);
        let mut set = SampleSet::new("queries", queries.to_vec(), dim, vec![0; n], Vec::new(), 0)?;
        let (bank, neighbours) = match (&self.memory, &self.retriever) {
            (Some(memory), Some(retriever)) => {
                let mut params = SearchParams::new(meta.k);
                params.ef = self.ef;
                let found = retriever.search(&set.queries, dim, &params)?;
                let mut rows = found.ids.clone();
                let bank = build_bank(memory, &mut [&mut rows], meta.values, None)?;
                set = SampleSet {
                    neighbours: rows,
                    k: meta.k,
                    ..set
                };
                (Some(bank), Some(found))
            }
            _ => (None, None),
        };
        let mut prediction = predict(
            self.model.as_ref(),
            &set,
            bank.as_ref(),
            &self.device,
            PREDICT_BATCH,
        )?;
        prediction.log_probs = adjust(
            &prediction.log_probs,
            prediction.classes,
            &meta.class_counts,
            meta.posthoc_tau,
        );
        Ok(Decisions {
            prediction,
            neighbours,
        })
    }
}
