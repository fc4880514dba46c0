//! The linear heads' training step: a linear classifier on the query (the
//! linear probe) or on the query and its neighbours' mean value (the
//! uniform mean), its cross-entropy and both gradients.

use super::{
    column_sums, cross_entropy_backward, matmul, threads, NativeStep, NeighbourRows, Objective,
    Reader, StepGradients, View,
};
use crate::heads::{LinearProbe, UniformMean};
use crate::samples::Batch;

/// The step of `logits = features w^T + b` for `features` `(B, in)`.
fn linear_head_step(
    linear: &candle_nn::Linear,
    features: &[f32],
    in_dim: usize,
    labels: &[u32],
    objective: &Objective,
) -> candle_core::Result<StepGradients> {
    let bias = linear
        .bias()
        .ok_or_else(|| candle_core::Error::Msg("native step: a head without bias".into()))?;
    let params = [linear.weight(), bias];
    let weights = Reader::new(&params)?;
    let (w, b) = (weights.get(0), weights.get(1));
    let classes = b.len();
    let rows = labels.len();
    if features.len() != rows * in_dim || w.len() != classes * in_dim {
        candle_core::bail!("native step: the head and the batch disagree in shape");
    }
    if objective
        .logit_bias
        .is_some_and(|bias| bias.len() != classes)
    {
        candle_core::bail!("native step: the logit bias has the wrong length");
    }
    let par = threads();
    let mut logits = vec![0.0f32; rows * classes];
    for row in logits.chunks_exact_mut(classes) {
        row.copy_from_slice(b);
    }
    matmul(
        rows,
        classes,
        in_dim,
        &mut logits,
        0,
        classes,
        true,
        View::rows(features, in_dim),
        View::rows(w, in_dim).t(),
        par,
    );
    let loss = cross_entropy_backward(&mut logits, classes, labels, objective)
        .iter()
        .sum::<f64>() as f32;
    let mut dw = vec![0.0f32; classes * in_dim];
    matmul(
        classes,
        in_dim,
        rows,
        &mut dw,
        0,
        in_dim,
        false,
        View::rows(&logits, classes).t(),
        View::rows(features, in_dim),
        par,
    );
    let db = column_sums(&logits, classes);
    Ok(StepGradients {
        loss,
        gradients: vec![(linear.weight().clone(), dw), (bias.clone(), db)],
    })
}

impl NativeStep for LinearProbe {
    fn loss_and_gradients(
        &self,
        batch: &Batch,
        _rows: NeighbourRows,
        objective: &Objective,
    ) -> candle_core::Result<StepGradients> {
        let queries = batch.queries.contiguous()?;
        let data = Reader::new(&[&queries])?;
        let labels: Vec<u32> = batch.labels.to_vec1()?;
        linear_head_step(
            self.linear(),
            data.get(0),
            queries.dim(1)?,
            &labels,
            objective,
        )
    }
}

impl NativeStep for UniformMean {
    fn loss_and_gradients(
        &self,
        batch: &Batch,
        _rows: NeighbourRows,
        objective: &Objective,
    ) -> candle_core::Result<StepGradients> {
        let n = batch
            .neighbours
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("uniform mean needs neighbours".into()))?;
        let (queries, means) = (batch.queries.contiguous()?, n.mean_values.contiguous()?);
        let data = Reader::new(&[&queries, &means])?;
        let (d, dv) = (queries.dim(1)?, means.dim(1)?);
        // [q ; mean value], as the autograd path concatenates them.
        let features: Vec<f32> = data
            .get(0)
            .chunks_exact(d)
            .zip(data.get(1).chunks_exact(dv.max(1)))
            .flat_map(|(q, m)| q.iter().chain(&m[..dv]).copied())
            .collect();
        let labels: Vec<u32> = batch.labels.to_vec1()?;
        linear_head_step(self.linear(), &features, d + dv, &labels, objective)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bank::NeighbourBank;
    use crate::classifier::Classifier;
    use crate::samples::{NeighbourUse, SampleSet};
    use candle_core::{Device, Tensor};

    /// Both heads' native losses and gradients equal autograd's, with and
    /// without label smoothing and logit adjustment.
    #[test]
    fn the_heads_native_steps_equal_autograd() {
        let (d, dv, k, n, classes) = (6, 5, 3, 7, 4);
        let wave = |len: usize, salt: f32| -> Vec<f32> {
            (0..len).map(|i| ((i as f32 + salt) * 0.7).sin()).collect()
        };
        let bank =
            NeighbourBank::from_matrices(wave(5 * d, 1.0), d, wave(5 * dv, 2.0), dv).unwrap();
        let neighbours = (0..n * k)
            .map(|i| if i % 4 == 3 { -1 } else { (i % 5) as i64 })
            .collect();
        let labels = (0..n).map(|i| i % classes).collect();
        let samples = SampleSet::new("test", wave(n * d, 3.0), d, labels, neighbours, k).unwrap();
        let all: Vec<usize> = (0..n).collect();
        let bias: Vec<f32> = (0..classes).map(|c| -0.4 * c as f32).collect();
        for objective in [
            Objective::default(),
            Objective {
                logit_bias: Some(&bias),
                label_smoothing: 0.2,
            },
        ] {
            for uniform in [false, true] {
                let (vars, vb) = crate::vars::new_vars(&Device::Cpu);
                let model: Box<dyn Classifier> = if uniform {
                    Box::new(UniformMean::new(d, dv, classes, vb).unwrap())
                } else {
                    Box::new(LinearProbe::new(d, classes, vb).unwrap())
                };
                model.initialise(&vars, 3).unwrap();
                let batch = samples
                    .batch(&all, Some(&bank), NeighbourUse::MeanValue, &Device::Cpu)
                    .unwrap();
                let step = model
                    .native_step()
                    .expect("the linear heads have a native step")
                    .loss_and_gradients(&batch, NeighbourRows::Gathered, &objective)
                    .unwrap();
                let logit_bias = objective
                    .logit_bias
                    .map(|b| Tensor::from_slice(b, b.len(), &Device::Cpu).unwrap());
                let loss = crate::train::autograd_loss(
                    model.as_ref(),
                    &batch,
                    logit_bias.as_ref(),
                    objective.label_smoothing as f64,
                )
                .unwrap();
                let grads = loss.backward().unwrap();
                let loss: f32 = loss.to_scalar().unwrap();
                assert!(
                    (step.loss - loss).abs() < 1e-5,
                    "{uniform}: {} vs {loss}",
                    step.loss
                );
                for (param, got) in &step.gradients {
                    let want: Vec<f32> = grads
                        .get(param)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap();
                    for (a, b) in got.iter().zip(&want) {
                        assert!((a - b).abs() < 1e-5, "{uniform}: {a} vs {b}");
                    }
                }
            }
        }
    }
}
