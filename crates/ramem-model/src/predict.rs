//! Batched prediction over a whole set.

use candle_core::{DType, Device, D};

use crate::bank::NeighbourBank;
use crate::classifier::{Classifier, Prediction};
use crate::error::Result;
use crate::samples::{Batch, SampleSet};

/// Runs `model` over `set` in batches (evaluation mode: no dropout, no bias).
pub fn predict(
    model: &dyn Classifier,
    set: &SampleSet,
    bank: Option<&NeighbourBank>,
    device: &Device,
    batch_size: usize,
) -> Result<Prediction> {
    predict_batches(model, batches(model, set, bank, device, batch_size))
}

/// `set` in order, as the batches `model` reads, gathered as they are asked for.
pub(crate) fn batches<'a>(
    model: &dyn Classifier,
    set: &'a SampleSet,
    bank: Option<&'a NeighbourBank>,
    device: &'a Device,
    batch_size: usize,
) -> impl Iterator<Item = Result<Batch>> + 'a {
    let need = model.neighbour_use();
    let size = batch_size.max(1);
    (0..set.len()).step_by(size).map(move |start| {
        let indices: Vec<usize> = (start..(start + size).min(set.len())).collect();
        set.batch(&indices, bank, need, device)
    })
}

/// Predictions over batches already gathered (or gathered as they come).
pub(crate) fn predict_batches<B: std::borrow::Borrow<Batch>>(
    model: &dyn Classifier,
    batches: impl IntoIterator<Item = Result<B>>,
) -> Result<Prediction> {
    let mut log_probs = Vec::new();
    let mut attention: Option<Vec<f32>> = None;
    let mut attention_items = 0;
    let mut classes = 0;
    for batch in batches {
        let out = model.forward(batch?.borrow(), false, None)?;
        classes = out.log_probs.dim(D::Minus1)?;
        log_probs.extend(
            out.log_probs
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        );
        if let Some(a) = out.attention {
            attention_items = a.dim(D::Minus1)?;
            attention
                .get_or_insert_with(Vec::new)
                .extend(a.flatten_all()?.to_vec1::<f32>()?);
        }
    }
    Ok(Prediction {
        log_probs,
        classes,
        attention,
        attention_items,
    })
}
