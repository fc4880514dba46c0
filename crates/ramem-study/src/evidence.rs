//! `OUT/evidence/RUN.jsonl`: the first test predictions of an attention run
//! with the retrieved neighbours they weighed (memory id, source, caption,
//! similarity, attention weight and, for a module that votes, the share of
//! the probabilities its label got through the vote), one JSON object per
//! line.

use std::path::Path;

use anyhow::{Context, Result};
use ramem_index::Neighbours;
use ramem_model::{NeighbourBank, Prediction, SampleSet};
use ramem_store::memory::MemoryView;
use serde_json::json;

use crate::scoring::probability;

/// What an evidence file names beside the predictions.
pub(crate) struct EvidenceSet<'a> {
    /// Test images to write.
    pub count: usize,
    pub test_ids: &'a [String],
    pub class_names: &'a [String],
    /// The study's output directory.
    pub out: &'a Path,
}

/// Writes `OUT/evidence/NAME.jsonl` for the first test predictions; `pred`
/// as scored (after the post-hoc adjustment), so that each line's
/// prediction is the one the report counts; `vote_shares` each
/// neighbour's share through the module's vote (`test.len() x test.k`).
/// Predictions without attention weights write nothing.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_evidence(
    set: &EvidenceSet,
    memory: &dyn MemoryView,
    bank: &NeighbourBank,
    test: &SampleSet,
    found: &Neighbours,
    pred: &Prediction,
    vote_shares: Option<&[f32]>,
    name: &str,
) -> Result<()> {
    let Some(attention) = &pred.attention else {
        return Ok(());
    };
    let items = pred.attention_items;
    let offset = items.saturating_sub(test.k); // 1 when the query is attended too
    let predicted = pred.argmax();
    let mut lines = String::new();
    for i in 0..set.count.min(test.len()) {
        let mut neighbours = Vec::new();
        for j in 0..test.k {
            let row = test.neighbours[i * test.k + j];
            if row < 0 {
                continue;
            }
            let memory_id = bank.memory_ids[row as usize];
            let meta = memory.metadata(memory_id)?;
            neighbours.push(json!({
                "memory_id": memory_id,
                "source": meta.source,
                "caption": meta.caption,
                "similarity": found.scores[i * found.k + j],
                "attention": attention[i * items + offset + j],
                "vote": vote_shares.map(|v| v[i * test.k + j]),
            }));
        }
        let p = predicted[i];
        lines.push_str(&serde_json::to_string(&json!({
            "test_id": set.test_ids[i],
            "label": set.class_names[test.labels[i]],
            "predicted": set.class_names[p],
            "probability": probability(&pred.log_probs[i * pred.classes..][..pred.classes], p),
            "query_attention": (offset == 1).then(|| attention[i * items]),
            "neighbours": neighbours,
        }))?);
        lines.push('\n');
    }
    let dir = set.out.join("evidence");
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
