//! The linear probe: a linear classifier on the query embedding, no
//! retrieval. Its predictions on every split are also the base classifier
//! Tip-Adapter and Tip-Adapter-F build on.

use anyhow::Result;
use ramem_model::heads::LinearProbe;
use ramem_model::{new_vars, Prediction};
use serde_json::{json, Value};

use super::{fit, Outcome, Seed};
use crate::config::Method;
use crate::ensemble::Trained;

/// The trained probe's predictions on each split.
pub(super) struct ProbeLogits {
    pub train: Prediction,
    pub val: Prediction,
    pub test: Prediction,
    /// The best validation top-1 seen in training (or the ensemble's).
    pub val_top1: Option<f64>,
    pub learning_rate: f64,
    /// The settings chosen on validation, where some were `auto`.
    pub auto: Vec<(String, Value)>,
    pub train_seconds: f64,
    pub eval_seconds: f64,
}

impl ProbeLogits {
    /// The probe as a method of its own.
    pub fn outcome(&self) -> Outcome {
        Outcome {
            method: Method::LinearProbe,
            variant: "-".into(),
            test: self.test.clone(),
            val: self.val.clone(),
            params: [
                ("learning_rate".into(), json!(self.learning_rate)),
                ("val_top1".into(), json!(self.val_top1)),
            ]
            .into_iter()
            .chain(self.auto.iter().cloned())
            .collect(),
            train_seconds: Some(self.train_seconds),
            eval_seconds: self.eval_seconds,
        }
    }
}

/// Trains the probe (an ensemble where `[train] ensemble` asks for one) at
/// the linear heads' rate.
pub(super) fn train_probe(seed: &Seed) -> Result<ProbeLogits> {
    let device = ramem_model::default_device();
    let data = seed.plain_data();
    let (
        Trained {
            predictions,
            val_top1,
            train_seconds,
            eval_seconds,
        },
        chosen,
        auto,
    ) = seed.train_searched(
        Method::LinearProbe,
        "linear probe",
        (2, &seed.val.labels),
        |settings, label| {
            let (vars, vb) = new_vars(&device);
            let probe = LinearProbe::new(seed.train.dim, seed.study.classes, vb)?;
            let others = [&seed.train, &seed.val];
            let test = &seed.test;
            fit(
                &probe,
                &vars,
                &data,
                &settings.train,
                label,
                None,
                test,
                &others,
            )
        },
    )?;
    let [test, train, val]: [Prediction; 3] = predictions
        .try_into()
        .map_err(|_| anyhow::anyhow!("linear probe: expected three predictions"))?;
    Ok(ProbeLogits {
        train,
        val,
        test,
        val_top1,
        learning_rate: chosen.train.learning_rate,
        auto,
        train_seconds,
        eval_seconds,
    })
}
